"""Everything that talks to MLflow: the store, runs, metrics, artifacts, models, the registry.

The default store is the project's mlruns/: a SQLite database plus an artifact
folder, as absolute URIs (MLflow 3.17 refuses the old file store). Runs leave this
module as plain records (see `record`); the sweep's lifecycle is in sweep.py.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import sys
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
from mlflow.data.dataset_source import DatasetSource
from mlflow.data.meta_dataset import MetaDataset
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from fer_exp import provenance
from fer_exp.outbox import RUN, Outbox, answers, read_calls, unpack, write_calls

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)

PARENT_ENV = (
    "FER_EXP_PARENT_RUN_ID"  # set for the jobs of a multirun (inherited by launcher processes; Ray gets it passed)
)
# Run tags: every one fer_exp sets.
TAG_ROLE = "fer_exp.role"  # "sweep" (a multirun's parent) or "job"
TAG_SWEEP = "fer_exp.sweep_id"  # a job's sweep (its parent run id)
TAG_SWEEP_DIR = "fer_exp.sweep_dir"  # the sweep's Hydra output folder
TAG_HASH = "fer_exp.config_hash"  # see config.config_hash
TAG_OVERRIDES = "fer_exp.overrides"  # the command-line overrides, space-separated
TAG_COMMAND = "fer_exp.command"  # the command line that started the run (a sweep's, for its jobs)
TAG_LOCK = "fer_exp.lock"  # the first 16 hex digits of uv.lock's SHA-256 ("none" without one)
TAG_UNTRACKED = "fer_exp.untracked"  # untracked files under fer_exp/, conf/, hydra_plugins/ (in source.patch)
TAG_REPRODUCES = "fer_exp.reproduces"  # on a rerun: the run it reproduces
TAG_REPRODUCED = "fer_exp.reproduced"  # on both runs: identical | within noise | differs
TAG_REPRODUCED_BY = "fer_exp.reproduced_by"  # on the original: the rerun's id
PATCH = "source.patch"  # a run's uncommitted changes, `git apply`-able on its commit
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
TAG_KEPT = "fer_exp.kept_weights"  # which weights the model and its scores are: "best epoch N" or "last epoch N"
TAG_GIT_DIRTY, TAG_HOST, TAG_RAY_NODE = "fer_exp.git_dirty", "fer_exp.host", "fer_exp.ray_node"
TAG_MACHINE = "fer_exp.machine"  # prefix: fer_exp.machine.cpu, .cpu_flags, .cores, .precision (chosen), .onednn
CHAMPION = "champion"  # the registry alias of the best model so far
TrackingError = MlflowException  # what a failed call to the store or server raises (CLIs report it)
LOST = "lost: the job's process ended without ending its run (a killed worker?)"  # fer_exp.error of such a run


def store_uris(directory: str | Path) -> tuple[str, str]:
    """(tracking URI, artifact root URI) for a local store in `directory`."""
    root = Path(directory).expanduser().resolve()
    return f"sqlite:///{root / 'mlflow.db'}", (root / "artifacts").as_uri()


def resolve_uri(uri: str | None, directory: str | Path = "mlruns") -> str:
    """The tracking URI to use: `uri`, else MLFLOW_TRACKING_URI, else the local store in `directory`."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or store_uris(directory)[0]


class AccessError(MlflowException):
    """The tracking server refused fer_exp's credentials (or their absence)."""


USER, PASSWORD = "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"  # MLflow's own variables


def is_server(uri: str | None) -> bool:
    return bool(uri) and uri.startswith(("http://", "https://"))


def check_access(uri: str) -> None:
    """For a tracking server: one read, so that missing or wrong credentials fail now, saying what
    to set, and not after an hour of training. Raises AccessError."""
    if not is_server(uri):
        return
    try:
        MlflowClient(uri).search_experiments(max_results=1)
    except MlflowException as e:
        if e.get_http_status_code() not in (401, 403):
            raise
        user = os.environ.get(USER)
        why = (
            f"it refused user {user!r}: check {PASSWORD}"
            if user and os.environ.get(PASSWORD)
            else f"it needs a user: set {USER} and {PASSWORD}"
        )
        raise AccessError(
            f"the tracking server {uri} requires authentication and {why} (an account its admin created; docs/cluster.md)"
        ) from None


def use_experiment_of(run_id: str) -> None:
    """Make the experiment that holds `run_id` the active one (where new top-level runs go)."""
    mlflow.set_experiment(experiment_id=MlflowClient().get_run(run_id).info.experiment_id)


def connect(uri: str) -> None:
    """Point MLflow at an existing store or server (configure() also selects an experiment)."""
    check_access(uri)
    mlflow.set_tracking_uri(uri)


def configure(uri: str | None, directory: str | Path = "mlruns", experiment: str = "fer_exp") -> str:
    """Point MLflow at the store and select (or create) the experiment; returns its id."""
    artifacts = None
    if not uri:
        Path(directory).mkdir(parents=True, exist_ok=True)
        uri, artifacts = store_uris(directory)
    check_access(uri)
    mlflow.set_tracking_uri(uri)
    exp = mlflow.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else mlflow.create_experiment(experiment, artifact_location=artifacts)
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def provenance_tags() -> tuple[dict[str, str], str, str]:
    """(tags, source.patch text, environment.txt text) that let a run be re-run: commit, dirty flag,
    untracked sources, the lock's hash and the command line (fer_exp.reproduce reads them back)."""
    code = provenance.code_state() or {}
    tags = {TAG_COMMAND: provenance.command_line()[:5000], TAG_LOCK: provenance.lock_hash() or "none"}
    if code:
        tags.update({"mlflow.source.git.commit": code["commit"], TAG_GIT_DIRTY: str(code["dirty"]).lower()})
        if code["untracked"]:
            tags[TAG_UNTRACKED] = " ".join(code["untracked"])[:5000]
    return tags, code.get("patch", ""), provenance.environment_text()


def placement() -> dict[str, str]:
    """Where a job runs: the host, and the node when it is a Ray task (hydra/launcher=ray)."""
    tags = {TAG_HOST: socket.gethostname()}
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        tags[TAG_RAY_NODE] = ray.get_runtime_context().get_node_id()
    return tags


@contextlib.contextmanager
def start_run(
    run_name: str,
    config_hash: str,
    params: dict[str, Any],
    config_yaml: str,
    tags: dict[str, str] | None = None,
    parent: str | None = None,
    spool: tuple[Path, float] | None = None,
) -> Iterator[str]:
    """A run (nested under `parent`, else under the sweep's parent when there is one) with params and tags.

    Ends FINISHED; FAILED with the error as a tag and the traceback as error.txt;
    KILLED on Ctrl-C or SIGTERM (raised as KeyboardInterrupt).
    spool=(folder, minutes), on a tracking server: the run's records wait in folder/<run id> while
    the server does not answer, up to `minutes`, and then stay there for `python -m fer_exp.sync`.
    """
    global _outbox
    parent = parent or os.environ.get(PARENT_ENV)
    known, patch, env = provenance_tags()
    tags = {TAG_ROLE: "job", TAG_HASH: config_hash, **known, **placement(), **(tags or {})}
    if parent:
        tags[TAG_SWEEP] = parent
    experiment = (
        MlflowClient().get_run(parent).info.experiment_id if parent else None
    )  # the parent's, else the active one
    run_id = mlflow.start_run(run_name=run_name, parent_run_id=parent, tags=tags, experiment_id=experiment).info.run_id
    uri = mlflow.get_tracking_uri()
    if spool and is_server(uri):
        record = {"tracking_uri": uri, "run_id": run_id, "run_name": run_name}
        _outbox = Outbox(Path(spool[0]) / run_id, record, _send, lambda: answers(uri), 60 * spool[1])
    status = "FINISHED"
    try:
        # with an outbox, a failed call is retried twice, 1 s apart, and then the outbox takes over
        with _retries(2, 1) if _outbox else contextlib.nullcontext():
            _deliver("log_params", params={k: str(v)[:6000] for k, v in params.items()})
            log_text(config_yaml, "config.yaml")
            log_text(env, "environment.txt")
            if patch:
                log_text(patch, PATCH)
            try:
                yield run_id
            except KeyboardInterrupt:
                set_tags({TAG_STOP: "interrupted"})
                status = "KILLED"
                raise
            except Exception as e:
                set_tags({TAG_ERROR: f"{type(e).__name__}: {e}"[:5000]})
                log_text(traceback.format_exc(), "error.txt")
                status = "FAILED"
                raise
    finally:
        _end_run(status)


# --- tracking outages: a job's records wait in its outbox (outbox.py) while the server is away ---

_outbox: Outbox | None = None  # the active job run's, on a tracking server


@contextlib.contextmanager
def _retries(max_retries: int, backoff_factor: int, override: bool = False) -> Iterator[None]:
    """MLflow's HTTP retries inside the block; values set in the environment win unless `override`.
    (MLflow's defaults, 7 retries with backoff factor 2, block a failing call for ~4 minutes.)"""
    values = {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(max_retries),
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": str(backoff_factor),
    }
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update({k: v for k, v in values.items() if override or saved[k] is None})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def quick_failures() -> Iterator[None]:
    """A command's first calls to the store: an unreachable server fails in seconds, not after MLflow's ~4 minutes of retries."""
    with _retries(2, 1):
        yield


def describe_error(e: MlflowException, uri: str) -> str:
    """One line for a failed call: what was missing or unreachable, and what to do."""
    if e.error_code == "RESOURCE_DOES_NOT_EXIST":
        return f"not found in {uri}: {e.message}"
    if is_server(uri) and not answers(uri):
        return f"the tracking server {uri} cannot be reached: start it (make server), or point MLFLOW_TRACKING_URI at one that runs"
    return e.message


def _deliver(call: str, /, **kwargs) -> None:
    """Send a call on the active run now, or through the job's outbox when there is one."""
    if _outbox is None:
        _send(call, kwargs)
    else:
        _outbox.deliver(call, **kwargs)


def _send(call: str, kwargs: dict) -> None:
    _SENDERS[call](**kwargs)


def _end_run(status: str) -> None:
    """End the active run; with an outbox, first send what waits in it (waiting for the server up to
    its limit). If it stays away, the end goes to the spool too and a message names the folder."""
    global _outbox
    box, _outbox = _outbox, None
    if box is None or box.close():
        mlflow.end_run(status)
        return
    box.deliver("end_run", status=status)
    with _retries(0, 0, override=True), contextlib.suppress(Exception):
        mlflow.end_run(status)  # clears the active run (then fails to reach the server)
    log.error(
        "the tracking server stayed away for %g min: run %s %s is kept in %s, its model and checkpoint included. Once the "
        "server answers, upload it with: python -m fer_exp.sync spool=%s",
        box.limit_s / 60,
        box.run["run_id"],
        status,
        box.folder,
        box.folder.parent,
    )


def set_tags(tags: dict[str, str]) -> None:
    _deliver("set_tags", tags=tags)


def record(run, history_metric: str | None = None) -> dict:
    """A run as a plain dict: run_id, name, status, params, metrics, tags, start and end (ms, end None
    while running) and, with `history_metric`, that metric's values per epoch (`history`)."""
    history = []
    if history_metric:
        history = [
            m.value
            for m in sorted(MlflowClient().get_metric_history(run.info.run_id, history_metric), key=lambda m: m.step)
        ]
    return {
        "run_id": run.info.run_id,
        "experiment_id": run.info.experiment_id,
        "name": run.info.run_name or "",
        "status": run.info.status,
        "params": dict(run.data.params),
        "metrics": dict(run.data.metrics),
        "tags": dict(run.data.tags),
        "start": run.info.start_time,
        "end": run.info.end_time,
        "history": history,
    }


def get_record(run_id: str, history_metric: str | None = None) -> dict:
    return record(MlflowClient().get_run(run_id), history_metric)


def resolve_run(ref: str) -> str:
    """The run id that `ref` names: a run id, runs:/<id>[/path] or models:/<name>@<alias> | models:/<name>/<version>."""
    if ref.startswith("runs:/"):
        return ref[len("runs:/") :].strip("/").split("/", 1)[0]
    if ref.startswith("models:/"):
        name_version = ref[len("models:/") :].strip("/")
        client = MlflowClient()
        if "@" in name_version:
            name, alias = name_version.split("@", 1)
            return client.get_model_version_by_alias(name, alias).run_id
        name, _, version = name_version.partition("/")
        return client.get_model_version(name, version).run_id
    return ref


def dataset_digests(run_id: str) -> dict[str, str]:
    """{dataset name (e.g. fer2013-train): digest} of the data a run recorded as its inputs."""
    run = MlflowClient().get_run(run_id)
    return {d.dataset.name: d.dataset.digest for d in (run.inputs.dataset_inputs if run.inputs else [])}


def histories(run_id: str, keys: list[str]) -> dict[str, list[float]]:
    """{metric: its values in step order} for each of `keys` the run logged."""
    client = MlflowClient()
    return {k: [m.value for m in sorted(client.get_metric_history(run_id, k), key=lambda m: m.step)] for k in keys}


def job_records(experiment_id: str) -> list[dict]:
    """Every FINISHED job run of an experiment, as records."""
    runs = MlflowClient().search_runs(
        [experiment_id], f"tags.`{TAG_ROLE}` = 'job' and attributes.status = 'FINISHED'", max_results=5000
    )
    return [record(r) for r in runs]


def artifact_text(run_id: str, path: str) -> str | None:
    """A text artifact of a run, None when the run has none at `path`."""
    folder, _, name = path.rpartition("/")
    if not any(a.path == path for a in MlflowClient().list_artifacts(run_id, folder or None)):
        return None
    return load_text(run_id, path)


def create_run(experiment_id: str, name: str, tags: dict[str, str]) -> str:
    """A new run, left RUNNING for a job to continue (through MLflow's MLFLOW_RUN_ID); returns its id."""
    return MlflowClient().create_run(experiment_id, run_name=name, tags=tags).info.run_id


def experiment_name(experiment_id: str) -> str:
    return MlflowClient().get_experiment(experiment_id).name


def find_previous(experiment_id: str, config_hash: str) -> tuple[dict | None, dict | None]:
    """(the newest FINISHED job run of this config, the newest KILLED or lost one with a checkpoint), as records or None."""
    runs = MlflowClient().search_runs(
        [experiment_id],
        f"tags.`{TAG_HASH}` = '{config_hash}' and tags.`{TAG_ROLE}` = 'job'",
        order_by=["attributes.start_time DESC"],
    )
    finished = next((record(r) for r in runs if r.info.status == "FINISHED"), None)
    # FAILED runs start over: their failure (a NaN, a bad value) would likely repeat; not so a lost one (a dead worker).
    stopped = [r for r in runs if r.info.status == "KILLED" or r.data.tags.get(TAG_ERROR) == LOST]
    interrupted = next((record(r) for r in stopped if r.data.tags.get(TAG_CHECKPOINT)), None)
    return finished, interrupted


def load_text(run_id: str, path: str) -> str:
    """A text artifact of a run (e.g. its config.yaml)."""
    return mlflow.artifacts.load_text(f"runs:/{run_id}/{path}")


def download_artifacts(run_id: str, path: str, dst: Path) -> Path | None:
    """The run's artifact folder `path`, downloaded into `dst`; None when the run has none."""
    if not MlflowClient().list_artifacts(run_id, path):
        return None
    return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=str(dst)))


def note_reused(run_id: str) -> None:
    """Tell the sweep's parent that a job reused the FINISHED run `run_id` (resume=true)."""
    if parent := os.environ.get(PARENT_ENV):
        MlflowClient().set_tag(parent, f"{TAG_REUSED}.{run_id}", "true")


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    # the time they were measured, also when an outage delays them
    _deliver(
        "log_metrics", metrics={k: float(v) for k, v in metrics.items()}, step=step, timestamp=int(time.time() * 1000)
    )


def log_text(text: str, path: str) -> None:
    _deliver("log_text", text=text, artifact_file=path)


def log_dict(data: dict, path: str) -> None:
    _deliver("log_dict", dictionary=data, artifact_file=path)


def log_files(paths: list[str | Path], folder: str | None = None) -> None:
    _deliver("log_files", paths=[Path(p) for p in paths], folder=folder)


def _log_files(paths: list[Path], folder: str | None) -> None:
    for p in paths:
        mlflow.log_artifact(str(p), folder)


def log_dataset(name: str, source: str, digest: str, context: str) -> None:
    """Record a split as an MLflow dataset input, identified by its file-list digest."""
    _deliver("log_dataset", name=name, source=source, digest=digest, context=context)


def _log_dataset(name: str, source: str, digest: str, context: str) -> None:
    dataset = MetaDataset(_Source(source), name=name, digest=digest[:36])
    for attempt in range(3):
        try:
            mlflow.log_input(dataset, context=context)
            return
        except MlflowException as e:
            # Parallel jobs of a sweep (joblib, submitit) may insert the same new data set at the same
            # moment: the store's unique constraint rejects the second; by now it exists, so try again.
            if "unique" not in str(e).lower() or "dataset" not in str(e).lower() or attempt == 2:
                raise
            time.sleep(0.5 + attempt)


def log_keras_model(model: keras.Model, example, metadata: dict | None = None) -> None:
    """The model as an MLflow Keras flavour (loadable with mlflow.pyfunc.load_model), with `metadata`
    (e.g. its class names) in its MLmodel file."""
    _deliver("log_keras_model", model=model, example=example, metadata=metadata)


def _log_keras_model(model: keras.Model, example, metadata: dict | None) -> None:
    import keras
    import numpy as np
    import tensorflow as tf
    from mlflow.models import infer_signature

    # the schema needs the output's shape and type, not its values: no predict call (and no tracing) for it
    signature = infer_signature(example, np.zeros((len(example), *model.output_shape[1:]), np.float32))
    # Explicit requirements: skip MLflow's slow import-capturing inference.
    reqs = [f"tensorflow=={tf.__version__}", f"keras=={keras.__version__}", f"mlflow=={mlflow.__version__}"]
    mlflow.keras.log_model(model, name="model", signature=signature, pip_requirements=reqs, metadata=metadata)


def load_logged_model(uri: str, tracking_uri: str) -> tuple[keras.Model, dict]:
    """(the Keras model, its MLmodel metadata) of an MLflow model URI (runs:/..., models:/...)."""
    connect(tracking_uri)
    metadata = mlflow.models.get_model_info(uri).metadata or {}
    return mlflow.keras.load_model(uri), metadata


# What a job's run records, by name: what the outbox queues and fer_exp.sync replays on the run.
_SENDERS = {
    "log_params": mlflow.log_params,
    "set_tags": mlflow.set_tags,
    "log_metrics": mlflow.log_metrics,
    "log_text": mlflow.log_text,
    "log_dict": mlflow.log_dict,
    "log_files": _log_files,
    "log_dataset": _log_dataset,
    "log_keras_model": _log_keras_model,
    "end_run": mlflow.end_run,
}


def replay(folder: Path) -> dict:
    """Send a spooled run's calls (outbox.py) to the server it was on (or MLFLOW_TRACKING_URI when
    set), on the same run, in order, and remove the folder. Returns the run's record."""
    run = json.loads((folder / RUN).read_text())
    connect(os.environ.get("MLFLOW_TRACKING_URI") or run["tracking_uri"])
    calls, status = read_calls(folder), "FAILED"  # a sync that fails leaves the run FAILED and the rest queued
    mlflow.start_run(run_id=run["run_id"])
    try:
        client = MlflowClient()
        if client.get_run(run["run_id"]).data.tags.get(TAG_ERROR) == LOST:
            client.delete_tag(run["run_id"], TAG_ERROR)  # its sweep ended while it was spooled: it was not lost
        while calls and calls[0][0] != "end_run":
            _send(calls[0][0], unpack(calls[0][1], folder))
            calls.pop(0)
            write_calls(folder, calls)  # a second sync goes on where this one stopped
        # no end: the job died during the outage; KILLED with a checkpoint, resume=true continues it
        status = unpack(calls[0][1], folder)["status"] if calls else "KILLED"
    finally:
        mlflow.end_run(status)
    shutil.rmtree(folder)
    return get_record(run["run_id"])


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


# --- sweeps and the registry (their lifecycle: sweep.py) ------------------------------


def create_sweep_run(experiment_id: str, name: str, tags: dict[str, str]) -> str:
    """A sweep's parent run, left RUNNING, with what a rerun needs (see provenance_tags); returns its id."""
    known, patch, env = provenance_tags()
    client = MlflowClient()
    run_id = client.create_run(experiment_id, run_name=name, tags={TAG_ROLE: "sweep", **known, **tags}).info.run_id
    client.log_text(run_id, env, "environment.txt")
    if patch:
        client.log_text(run_id, patch, PATCH)
    return run_id


def latest_sweep(experiment: str) -> dict | None:
    """The newest sweep's parent run of the experiment, as a record; None without one.
    Raises LookupError when the experiment does not exist."""
    client = MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise LookupError(f"no experiment {experiment!r} in this store")
    runs = client.search_runs(
        [exp.experiment_id], f"tags.`{TAG_ROLE}` = 'sweep'", order_by=["attributes.start_time DESC"], max_results=1
    )
    return record(runs[0]) if runs else None


def sweep_jobs(parent_id: str, history_metric: str | None = None) -> list[dict]:
    """The job runs nested under a sweep's parent run, oldest first, as records."""
    client = MlflowClient()
    runs = client.search_runs(
        [client.get_run(parent_id).info.experiment_id],
        f"tags.mlflow.parentRunId = '{parent_id}'",
        order_by=["attributes.start_time ASC"],
        max_results=10000,
    )
    return [record(r, history_metric) for r in runs]


def end_run(run_id: str, status: str, tags: dict[str, str] | None = None) -> None:
    """End a run that is not the active one (a sweep's parent, a lost job) with `status` and `tags`."""
    client = MlflowClient()
    for k, v in (tags or {}).items():
        client.set_tag(run_id, k, v)
    client.set_terminated(run_id, status)


def tag_run(run_id: str, tags: dict[str, str]) -> None:
    for k, v in tags.items():
        MlflowClient().set_tag(run_id, k, v)


def log_metrics_to(run_id: str, metrics: dict[str, float]) -> None:
    for k, v in metrics.items():
        MlflowClient().log_metric(run_id, k, v)


# The MLflow UI opens a view kept in an experiment tag with this prefix at
# <ui>/#/experiments/<id>/runs?viewStateShareKey=<key> (its "Share" button writes the same tags).
VIEW_TAG = "mlflow.sharedViewState."
UI = "http://127.0.0.1:5000"  # where `make ui` serves


def share_view(run_id: str, state: dict) -> str:
    """Keep a view of the runs table (columns, sort, expanded rows) under the key `run_id`, in the
    run's experiment; returns the UI link that opens it."""
    client = MlflowClient()
    experiment_id = client.get_run(run_id).info.experiment_id
    client.set_experiment_tag(experiment_id, VIEW_TAG + run_id, json.dumps(state))
    return view_link(experiment_id, run_id)


def view_link(experiment_id: str, key: str, ui: str = UI) -> str:
    return f"{ui}/#/experiments/{experiment_id}/runs?viewStateShareKey={key}"


def log_files_to(run_id: str, paths: list[str | Path]) -> None:
    for p in paths:
        MlflowClient().log_artifact(run_id, str(p))


def register_model(run_id: str, name: str) -> str:
    """The registry version of the run's model under `name`, registered now unless it already is."""
    client = MlflowClient()
    found = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    if found:
        return found[0].version
    run = client.get_run(run_id)
    logged = run.outputs.model_outputs if run.outputs else []  # MLflow 3 keeps the model as a logged model of the run
    source = f"models:/{logged[-1].model_id}" if logged else f"runs:/{run_id}/model"
    return mlflow.register_model(source, name).version


def champion(name: str) -> tuple[str, str] | None:
    """(version, run id) that the alias `champion` of registered model `name` points at, or None."""
    with contextlib.suppress(MlflowException):
        version = MlflowClient().get_model_version_by_alias(name, CHAMPION)
        return version.version, version.run_id
    return None


def make_champion(name: str, version: str) -> None:
    MlflowClient().set_registered_model_alias(name, CHAMPION, version)
