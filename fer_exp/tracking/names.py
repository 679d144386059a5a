"""The names fer_exp gives to what it records: run tags, artifacts, environment variables; and the
format of the overrides tag."""

PARENT_ENV = (
    "FER_EXP_PARENT_RUN_ID"  # set for the jobs of a multirun (inherited by launcher processes; Ray gets it passed)
)
# Run tags: every one fer_exp sets.
TAG_ROLE = "fer_exp.role"  # "sweep" (a multirun's parent), "job", "ensemble", "reproduction" or "story"
ROLE_REPRODUCTION = "reproduction"  # a rerun by fer_exp.reproduce (it also has fer_exp.reproduces)
TAG_SWEEP = "fer_exp.sweep_id"  # a job's sweep (its parent run id)
TAG_SWEEP_DIR = "fer_exp.sweep_dir"  # the sweep's Hydra output folder
TAG_HASH = "fer_exp.config_hash"  # see config.config_hash
TAG_OVERRIDES = "fer_exp.overrides"  # the command-line overrides, a JSON list (encode_overrides)
TAG_COMMAND = "fer_exp.command"  # the command line that started the run (a sweep's, for its jobs)
TAG_LOCK = "fer_exp.lock"  # the first 16 hex digits of uv.lock's SHA-256 ("none" without one)
TAG_UNTRACKED = "fer_exp.untracked"  # untracked files under fer_exp/, conf/, hydra_plugins/ (in source.patch)
TAG_REPRODUCES = "fer_exp.reproduces"  # on a rerun: the run it reproduces
TAG_REPRODUCED = "fer_exp.reproduced"  # on both runs: identical | within noise | differs
TAG_REPRODUCED_BY = "fer_exp.reproduced_by"  # on the original: the rerun's id
TAG_STOP = "fer_exp.stop_reason"  # epochs | early_stopping | max_minutes | interrupted
TAG_ERROR = "fer_exp.error"  # why a run FAILED
TAG_CHECKPOINT = "fer_exp.checkpoint_epoch"  # epochs in the run's checkpoint/ folder
TAG_RESUMED_FROM = "fer_exp.resumed_from"  # the interrupted run a job continued
TAG_REUSED = (
    "fer_exp.reused"  # prefix: on a parent, fer_exp.reused.<run id> for each FINISHED run a resumed sweep reused
)
TAG_BEST = "fer_exp.best"  # "true" on a sweep's best job
TAG_BEST_RUN = "fer_exp.best_run"  # on a parent: its best job's run id
TAG_TRIAL = "fer_exp.trial"  # the job's trial number in its sweep's Optuna study
TAG_MEMBERS = "fer_exp.members"  # an ensemble's member run ids, comma-separated
TAG_TEACHERS = "fer_exp.teachers"  # a distilled run's teachers, a JSON list (training/teachers.py, Teacher.lineage)
TAG_DISTILLED_FROM = "fer_exp.distilled_from"  # the same, one line for people: "ensemble of 3 runs (run 1a2b...)"
TAG_KEPT = "fer_exp.kept_weights"  # which weights the model and its scores are: "best epoch N" or "last epoch N"
TAG_GIT_COMMIT = "mlflow.source.git.commit"  # MLflow's own: the commit the code ran at
TAG_MLFLOW_GIT_DIRTY = "mlflow.source.git.dirty"  # MLflow's own: "true" with uncommitted changes (ours too)
TAG_GIT_DIRTY, TAG_HOST, TAG_RAY_NODE = "fer_exp.git_dirty", "fer_exp.host", "fer_exp.ray_node"
TAG_MACHINE = "fer_exp.machine"  # prefix: fer_exp.machine.cpu, .cpu_flags, .cores, .gpu, .precision (chosen), .onednn
METRIC = "best_val_accuracy"  # the score runs are ranked, registered as champion and reproduced by
PATCH = "source.patch"  # a run's uncommitted changes, `git apply`-able on its commit
CHAMPION = "champion"  # the registry alias of the best model so far
LOST = "lost: the job's process ended without ending its run (a killed worker?)"  # fer_exp.error of such a run
# The MLflow UI opens a view kept in an experiment tag with this prefix at
# <ui>/#/experiments/<id>/runs?viewStateShareKey=<key> (its "Share" button writes the same tags).
VIEW_TAG = "mlflow.sharedViewState."
UI = "http://127.0.0.1:5000"  # where `make ui` serves


def encode_overrides(overrides) -> str:
    """The overrides tag: Hydra's list of overrides as JSON, so that a value with a space
    (data.root=/data/my faces) comes back whole."""
    import json

    return json.dumps(list(overrides))


def decode_overrides(tag: str | None) -> list[str]:
    """The overrides a run recorded (runs recorded before the JSON list: space-separated)."""
    import json

    if not tag:
        return []
    return json.loads(tag) if tag.startswith("[") else tag.split()
