"""Writing runs: a job's run from start to end (through its outbox on a tracking server), what it
logs, and writes to other runs by id (a sweep's parent, a rerun)."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
from mlflow.tracking import MlflowClient

from fer_exp.tracking import outage, provenance
from fer_exp.tracking.names import (
    PARENT_ENV,
    PATCH,
    TAG_COMMAND,
    TAG_ERROR,
    TAG_GIT_COMMIT,
    TAG_GIT_DIRTY,
    TAG_HASH,
    TAG_HOST,
    TAG_LOCK,
    TAG_MLFLOW_GIT_DIRTY,
    TAG_RAY_NODE,
    TAG_REUSED,
    TAG_ROLE,
    TAG_STOP,
    TAG_SWEEP,
    TAG_UNTRACKED,
)
from fer_exp.tracking.outbox import answers
from fer_exp.tracking.store import is_server, retries, writable

if TYPE_CHECKING:
    import keras


def provenance_tags() -> tuple[dict[str, str], str, str]:
    """(tags, source.patch text, environment.txt text) that let a run be re-run: commit, dirty flag,
    untracked sources, the lock's hash and the command line (fer_exp.reproduce reads them back)."""
    code = provenance.code_state() or {}
    tags = {TAG_COMMAND: provenance.command_line()[:5000], TAG_LOCK: provenance.lock_hash() or "none"}
    if code:
        dirty = str(code["dirty"]).lower()
        tags.update({TAG_GIT_COMMIT: code["commit"], TAG_MLFLOW_GIT_DIRTY: dirty, TAG_GIT_DIRTY: dirty})
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
    experiment: str | None = None,
) -> Iterator[str]:
    """A run (nested under `parent`, else under the sweep's parent when there is one) with params and tags.

    Ends FINISHED; FAILED with the error as a tag and the traceback as error.txt;
    KILLED on Ctrl-C or SIGTERM (raised as KeyboardInterrupt).
    spool=(folder, minutes), on a tracking server: the run's records wait in folder/<run id> while
    the server does not answer, up to `minutes`, and then stay there for `python -m fer_exp.sync`.
    A server away as the run begins: the run itself is created (in `experiment`, by name, unless it has
    a parent) when the server answers; the id yielded is then the spool folder's name.
    """
    parent = parent or os.environ.get(PARENT_ENV)
    known, patch, env = provenance_tags()
    tags = {TAG_ROLE: "job", TAG_HASH: config_hash, **known, **placement(), **(tags or {})}
    if parent:
        tags[TAG_SWEEP] = parent
    run_id = begin(run_name, tags, parent, spool, experiment)
    status = "FINISHED"
    try:
        # with an outbox, a failed call is retried twice, 1 s apart, and then the outbox takes over
        with retries(2, 1) if outage.has_outbox() else contextlib.nullcontext():
            outage.deliver("log_params", params={k: str(v)[:6000] for k, v in params.items()})
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
        outage.end_active_run(status)


def begin(
    run_name: str, tags: dict[str, str], parent: str | None, spool: tuple[Path, float] | None, experiment: str | None
) -> str:
    """start_run's run, active, and its id: on a tracking server with a spool, its outbox opened, or, with
    the server away, the run started on the spool (created on the server when it answers)."""
    uri = mlflow.get_tracking_uri()
    if spool and is_server(uri) and not answers(uri):  # away before the run began: it starts on the spool
        return outage.start_offline(spool[0], uri, spool[1], run_name, experiment=experiment, parent_run_id=parent,
                                    tags=tags)  # fmt: skip
    with writable():
        # log_system_metrics: MLflow samples CPU, memory, disk and network (GPUs with nvidia-ml-py) as
        # system/*; its start and stop lines at INFO would repeat in every job's output
        logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
        run_id = mlflow.start_run(
            run_name=run_name,
            parent_run_id=parent,
            tags=tags,
            # the parent's experiment, else the active one
            experiment_id=MlflowClient().get_run(parent).info.experiment_id if parent else None,
            log_system_metrics=True,
        ).info.run_id
    if spool and is_server(uri):
        outage.open_outbox(spool[0], {"tracking_uri": uri, "run_id": run_id, "run_name": run_name}, spool[1])
    return run_id


def create_run(experiment_id: str, name: str, tags: dict[str, str]) -> str:
    """A new run, left RUNNING for a job to continue (through MLflow's MLFLOW_RUN_ID); returns its id."""
    return MlflowClient().create_run(experiment_id, run_name=name, tags=tags).info.run_id


def create_sweep_run(experiment_id: str, name: str, tags: dict[str, str]) -> str:
    """A sweep's parent run, left RUNNING, with what a rerun needs (see provenance_tags); returns its id."""
    known, patch, env = provenance_tags()
    client = MlflowClient()
    with writable():
        run_id = client.create_run(experiment_id, run_name=name, tags={TAG_ROLE: "sweep", **known, **tags}).info.run_id
    client.set_tag(
        run_id, TAG_SWEEP, run_id
    )  # the sweep's own runs, parent included, share the tag: its UI view's filter
    client.log_text(run_id, env, "environment.txt")
    if patch:
        client.log_text(run_id, patch, PATCH)
    return run_id


def end_run(run_id: str, status: str, tags: dict[str, str] | None = None) -> None:
    """End a run that is not the active one (a sweep's parent, a lost job) with `status` and `tags`."""
    client = MlflowClient()
    for k, v in (tags or {}).items():
        client.set_tag(run_id, k, v)
    client.set_terminated(run_id, status)


def note_reused(run_id: str) -> None:
    """Tell the sweep's parent that a job reused the FINISHED run `run_id` (resume=true)."""
    if parent := os.environ.get(PARENT_ENV):
        MlflowClient().set_tag(parent, f"{TAG_REUSED}.{run_id}", "true")


# Each write goes to the active job run (through its outbox, when it has one) or, with run_id, to that run.


def set_tags(tags: dict[str, str], run_id: str | None = None) -> None:
    if run_id is None:
        outage.deliver("set_tags", tags=tags)
        return
    client = MlflowClient()
    for k, v in tags.items():
        client.set_tag(run_id, k, v)


def log_metrics(metrics: dict[str, float], step: int | None = None, run_id: str | None = None) -> None:
    metrics = {k: float(v) for k, v in metrics.items()}
    if run_id is None:  # stamped now: the time they were measured, also when an outage delays them
        outage.deliver("log_metrics", metrics=metrics, step=step, timestamp=int(time.time() * 1000))
        return
    client = MlflowClient()
    for k, v in metrics.items():
        client.log_metric(run_id, k, v, step=step or 0)


def log_text(text: str, path: str) -> None:
    outage.deliver("log_text", text=text, artifact_file=path)


def log_dict(data: dict, path: str) -> None:
    outage.deliver("log_dict", dictionary=data, artifact_file=path)


def log_files(paths: list[str | Path], folder: str | None = None, run_id: str | None = None) -> None:
    if run_id is None:
        outage.deliver("log_files", paths=[Path(p) for p in paths], folder=folder)
        return
    client = MlflowClient()
    for p in paths:
        client.log_artifact(run_id, str(p), folder)


def log_dataset(name: str, source: str, digest: str, context: str) -> None:
    """Record a split as an MLflow dataset input, identified by its file-list digest."""
    outage.deliver("log_dataset", name=name, source=source, digest=digest, context=context)


def log_keras_model(model: keras.Model, example, metadata: dict | None = None) -> None:
    """The model as an MLflow Keras flavour (loadable with mlflow.pyfunc.load_model), with `metadata`
    (e.g. its class names) in its MLmodel file."""
    outage.deliver("log_keras_model", model=model, example=example, metadata=metadata)


def log_story(experiment: str, role: str, files: list[Path]) -> str:
    """Log `files` to the experiment's run tagged fer_exp.role=<role>, created the first time; returns its id."""
    client = MlflowClient()
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    found = client.search_runs([experiment_id], f"tags.`{TAG_ROLE}` = '{role}'", max_results=1)
    run_id = (
        found[0].info.run_id
        if found
        else client.create_run(experiment_id, run_name=role, tags={TAG_ROLE: role}).info.run_id
    )
    for f in files:
        client.log_artifact(run_id, str(f))
    if not found:
        client.set_terminated(run_id, "FINISHED")
    return run_id
