"""Everything that talks to MLflow: the store, runs, metrics, artifacts, sweeps.

The default store is the project's mlruns/: a SQLite database plus an artifact
folder, as absolute URIs (MLflow 3.17 refuses the old file store). A multirun
gets one parent run, created before any job starts (which also creates the
schema once, before parallel jobs could race on it); each job is a nested child.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import socket
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Iterator

import keras
import mlflow
from hydra.experimental.callback import Callback
from mlflow.data.dataset_source import DatasetSource
from mlflow.data.meta_dataset import MetaDataset
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

PARENT_ENV = "FER_EXP_PARENT_RUN_ID"  # set for the jobs of a multirun (inherited by launcher processes; Ray gets it passed)
TAG_ROLE, TAG_SWEEP, TAG_HASH = "fer_exp.role", "fer_exp.sweep_id", "fer_exp.config_hash"
TAG_STOP, TAG_REUSED, TAG_BEST = "fer_exp.stop_reason", "fer_exp.reused", "fer_exp.best"
CHAMPION = "champion"  # the registry alias of the best model so far
TAG_SWEEP_DIR = "fer_exp.sweep_dir"  # the sweep's Hydra output folder
LOST = "lost: the job's process ended without ending its run (a killed worker?)"  # fer_exp.error of such a run


def store_uris(directory: str | Path) -> tuple[str, str]:
    """(tracking URI, artifact root URI) for a local store in `directory`."""
    root = Path(directory).expanduser().resolve()
    return f"sqlite:///{root / 'mlflow.db'}", (root / "artifacts").as_uri()


def configure(uri: str | None, directory: str | Path = "mlruns", experiment: str = "fer_exp") -> str:
    """Point MLflow at the store and select (or create) the experiment; returns its id."""
    artifacts = None
    if not uri:
        Path(directory).mkdir(parents=True, exist_ok=True)
        uri, artifacts = store_uris(directory)
    mlflow.set_tracking_uri(uri)
    exp = mlflow.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else mlflow.create_experiment(experiment, artifact_location=artifacts)
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def git_state() -> dict[str, str]:
    """Commit and dirty flag of the working tree, if it is a git checkout."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return {}
    return {"mlflow.source.git.commit": commit, "fer_exp.git_dirty": str(bool(dirty)).lower()}


def placement() -> dict[str, str]:
    """Where a job runs: the host, and the node when it is a Ray task (hydra/launcher=ray)."""
    tags = {"fer_exp.host": socket.gethostname()}
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        tags["fer_exp.ray_node"] = ray.get_runtime_context().get_node_id()
    return tags


@contextlib.contextmanager
def start_run(run_name: str, config_hash: str, params: dict[str, Any], config_yaml: str, tags: dict[str, str] | None = None) -> Iterator[str]:
    """A run (nested under the sweep's parent when there is one) with params and tags.

    Ends FINISHED; FAILED with the error as a tag and the traceback as error.txt;
    KILLED on Ctrl-C or SIGTERM (raised as KeyboardInterrupt).
    """
    parent = os.environ.get(PARENT_ENV)
    tags = {TAG_ROLE: "job", TAG_HASH: config_hash, **git_state(), **placement(), **(tags or {})}
    if parent:
        tags[TAG_SWEEP] = parent
    with mlflow.start_run(run_name=run_name, parent_run_id=parent, tags=tags) as run:
        mlflow.log_params({k: str(v)[:6000] for k, v in params.items()})
        mlflow.log_text(config_yaml, "config.yaml")
        mlflow.log_text(environment(), "environment.txt")
        try:
            yield run.info.run_id
        except KeyboardInterrupt:
            mlflow.set_tag(TAG_STOP, "interrupted")
            mlflow.end_run("KILLED")
            raise
        except Exception as e:
            mlflow.set_tag("fer_exp.error", f"{type(e).__name__}: {e}"[:5000])
            mlflow.log_text(traceback.format_exc(), "error.txt")
            raise


def environment() -> str:
    """Python and package versions, for replaying a run."""
    from importlib.metadata import PackageNotFoundError, version

    lines = [f"python {sys.version.split()[0]}"]
    for pkg in ("tensorflow", "keras", "numpy", "opencv-python-headless", "scikit-learn", "hydra-core", "mlflow"):
        try:
            lines.append(f"{pkg}=={version(pkg)}")
        except PackageNotFoundError:
            pass
    return "\n".join(lines) + "\n"


def set_tags(tags: dict[str, str]) -> None:
    mlflow.set_tags(tags)


def previous_runs(experiment_id: str, config_hash: str) -> list:
    """Job runs of the experiment with this config hash, newest first."""
    return MlflowClient().search_runs(
        [experiment_id], f"tags.`{TAG_HASH}` = '{config_hash}' and tags.`{TAG_ROLE}` = 'job'", order_by=["attributes.start_time DESC"]
    )


def download_checkpoint(run_id: str, dst: Path) -> Path | None:
    """The `checkpoint/` folder an interrupted run left, downloaded into `dst`, or None."""
    if not any(a.path == "checkpoint/state.json" for a in MlflowClient().list_artifacts(run_id, "checkpoint")):
        return None
    return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="checkpoint", dst_path=str(dst)))


def note_reused(run_id: str) -> None:
    """Tell the sweep's parent that a job reused the FINISHED run `run_id` (resume=true)."""
    if parent := os.environ.get(PARENT_ENV):
        MlflowClient().set_tag(parent, f"{TAG_REUSED}.{run_id}", "true")


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)


def log_text(text: str, path: str) -> None:
    mlflow.log_text(text, path)


def log_dict(data: dict, path: str) -> None:
    mlflow.log_dict(data, path)


def log_files(paths: list[str | Path], folder: str | None = None) -> None:
    for p in paths:
        mlflow.log_artifact(str(p), folder)


def log_dataset(name: str, source: str, digest: str, context: str) -> None:
    """Record a split as an MLflow dataset input, identified by its file-list digest."""
    mlflow.log_input(MetaDataset(_Source(source), name=name, digest=digest[:36]), context=context)


def log_keras_model(model: keras.Model, example) -> None:
    """The model as an MLflow Keras flavour (loadable with mlflow.pyfunc.load_model)."""
    import tensorflow as tf
    from mlflow.models import infer_signature

    signature = infer_signature(example, model.predict(example, verbose=0))
    # Explicit requirements: skip MLflow's slow import-capturing inference.
    reqs = [f"tensorflow=={tf.__version__}", f"keras=={keras.__version__}", f"mlflow=={mlflow.__version__}"]
    mlflow.keras.log_model(model, name="model", signature=signature, pip_requirements=reqs)


def load_keras_model(uri: str, tracking_uri: str | None = None, directory: str | Path = "mlruns") -> keras.Model:
    """A Keras model from a file (.h5, .keras) or an MLflow URI (runs:/..., models:/...)."""
    if "://" not in uri and ":/" not in uri:
        if not Path(uri).exists():
            raise FileNotFoundError(f"model file not found: {Path(uri).resolve()} (model=path/to/model.h5 or runs:/RUN_ID/model)")
        return keras.models.load_model(uri, compile=False)
    mlflow.set_tracking_uri(tracking_uri or store_uris(directory)[0])
    return mlflow.keras.load_model(uri)


class EpochLogger(keras.callbacks.Callback):
    """Logs every Keras epoch metric plus the learning rate to the active run."""

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        metrics = {k: float(v) for k, v in (logs or {}).items()}
        metrics["lr"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        mlflow.log_metrics(metrics, step=epoch)


class _Source(DatasetSource):
    """A dataset source that is just a path or name (folders, CSV, synthetic)."""

    def __init__(self, uri: str):
        self.uri = uri

    @staticmethod
    def _get_source_type() -> str:
        return "fer_exp"

    def load(self, **kwargs):
        return self.uri

    @staticmethod
    def _can_resolve(raw_source) -> bool:
        return False

    @classmethod
    def _resolve(cls, raw_source):
        return cls(str(raw_source))

    def to_dict(self) -> dict:
        return {"uri": self.uri}

    @classmethod
    def from_dict(cls, source_dict: dict):
        return cls(source_dict["uri"])


# --- sweeps -------------------------------------------------------------------


def child_runs(parent_id: str) -> list:
    """The job runs nested under a sweep's parent run, oldest first."""
    parent = MlflowClient().get_run(parent_id)
    return MlflowClient().search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'", order_by=["attributes.start_time ASC"], max_results=10000
    )


def register_champion(run, metric: str = "best_val_accuracy") -> str | None:
    """Register the run's model under its data's registry name (param data.register_as, e.g. `fer`).

    The alias `champion` moves to it when it beats the current champion on `metric`.
    Returns what was done, or None when the run's data has no registry name.
    """
    name = run.data.params.get("data.register_as")
    if not name or name == "None":
        return None
    client = MlflowClient()
    found = client.search_model_versions(f"name = '{name}' and run_id = '{run.info.run_id}'")
    logged = run.outputs.model_outputs if run.outputs else []  # MLflow 3 keeps the model as a logged model of the run
    source = f"models:/{logged[-1].model_id}" if logged else f"runs:/{run.info.run_id}/model"
    version = found[0] if found else mlflow.register_model(source, name)
    score, best = run.data.metrics[metric], None
    with contextlib.suppress(MlflowException):
        champion = client.get_model_version_by_alias(name, CHAMPION)
        best = client.get_run(champion.run_id).data.metrics.get(metric)
    if best is not None and score <= best:
        return f"model {name} version {version.version} registered; {name}@{CHAMPION} stays version {champion.version} ({metric} {best:.4f} >= {score:.4f})"
    client.set_registered_model_alias(name, CHAMPION, version.version)
    return f"model {name} version {version.version} is now models:/{name}@{CHAMPION} ({metric} {score:.4f})"


def finish_sweep(status: str | None = None, out_dir: str | Path | None = None, jobs_done: bool = True) -> bool:
    """End the current sweep's parent run, tag its best job, print the summary.

    The best FINISHED job's model is registered (see register_champion) and, with
    out_dir, the comparison plot is written there and logged to the parent run.
    jobs_done: no job can still be running, so a job run left RUNNING was lost (its
    process died, e.g. a killed worker) and is ended FAILED with the reason.
    status None: FINISHED when every job finished, else FAILED. Returns whether all finished.
    """
    parent = os.environ.pop(PARENT_ENV, None)
    if not parent:
        return True
    from fer_exp.compare import job_rows, save, table

    client = MlflowClient()
    runs = child_runs(parent)
    if jobs_done and any(r.info.status == "RUNNING" for r in runs):
        for r in runs:
            if r.info.status == "RUNNING":
                client.set_tag(r.info.run_id, "fer_exp.error", LOST)
                client.set_terminated(r.info.run_id, "FAILED")
        runs = child_runs(parent)
    failed = [r for r in runs if r.info.status != "FINISHED"]
    reused = [k.split(".", 2)[2] for k in client.get_run(parent).data.tags if k.startswith(TAG_REUSED + ".")]
    client.set_tag(parent, TAG_SWEEP, parent)
    lines = [f"\nSweep {parent}: {len(runs)} job(s), {len(failed)} not finished"]
    if reused:
        lines.append(f"{len(reused)} job(s) already FINISHED earlier, reused: {', '.join(reused)}")
    rows = job_rows(client, runs, "best_val_accuracy")  # best first, only the overrides that differ
    if rows:
        lines.append(table(rows, "best_val_accuracy"))
    lines += [f"{r.info.status}: {r.info.run_name}: {r.data.tags.get('fer_exp.error') or r.data.tags.get(TAG_STOP, '')}" for r in failed]
    scored = [r for r in runs + [client.get_run(i) for i in reused] if r.info.status == "FINISHED" and "best_val_accuracy" in r.data.metrics]
    if scored:
        best = max(scored, key=lambda r: r.data.metrics["best_val_accuracy"])
        client.set_tag(best.info.run_id, TAG_BEST, "true")
        client.set_tag(parent, "fer_exp.best_run", best.info.run_id)
        lines.append(f"best: {best.info.run_name} (run {best.info.run_id}), val_accuracy {best.data.metrics['best_val_accuracy']:.4f}")
        try:
            if note := register_champion(best):
                lines.append(note)
        except MlflowException as e:  # e.g. a store without a model registry: the sweep still ends
            log.warning("could not register the best model: %s", e)
    if out_dir and rows:
        try:
            lines.append(f"comparison: {save(client, client.get_run(parent), rows, 'best_val_accuracy', Path(out_dir))}")
        except Exception as e:  # a plot must not fail a finished sweep
            log.warning("could not draw the sweep comparison: %s", e)
    client.set_terminated(parent, status or ("FAILED" if failed else "FINISHED"))
    print("\n".join(lines), flush=True)
    return not failed


def end_abandoned_sweep() -> None:
    """At exit: a sweep still open here was abandoned by an error in the launcher (e.g. a
    Ray worker died); end it FAILED, with its lost jobs, rather than leave it RUNNING."""
    if os.environ.get(PARENT_ENV):
        finish_sweep("FAILED")


class SweepRun(Callback):
    """Hydra callback: one MLflow parent run per multirun, a summary at the end."""

    def on_multirun_start(self, config, **kwargs: Any) -> None:
        t = config.tracking
        exp_id = configure(t.uri, t.dir, t.experiment)
        overrides = list(config.hydra.overrides.task)
        run = MlflowClient().create_run(
            exp_id,
            run_name=f"sweep {time.strftime('%Y-%m-%d %H:%M:%S')}",
            tags={
                TAG_ROLE: "sweep", TAG_SWEEP_DIR: str(config.hydra.sweep.dir), "fer_exp.overrides": " ".join(overrides),
                "fer_exp.command": " ".join(sys.argv), **git_state(),
            },
        )
        os.environ[PARENT_ENV] = run.info.run_id
        atexit.register(end_abandoned_sweep)
        log.info("MLflow sweep parent run %s in %s", run.info.run_id, mlflow.get_tracking_uri())

    def on_multirun_end(self, config, **kwargs: Any) -> None:
        if not finish_sweep(out_dir=config.hydra.sweep.dir):
            sys.exit(1)
