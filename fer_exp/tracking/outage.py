"""Tracking outages: while a tracking server is away, a job's records wait in its outbox (outbox.py)
and go, in order, when it answers (a job that begins while it is away starts on the spool, its run
created when the server answers); `replay` sends what a long outage left in a spool folder
(python -m fer_exp.sync). Also the MLflow calls a job's run makes, by name, which the outbox queues.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow
from mlflow.data.meta_dataset import MetaDataset
from mlflow.data.sources import CodeDatasetSource, LocalArtifactDatasetSource
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from fer_exp.tracking.names import LOST, TAG_ERROR
from fer_exp.tracking.outbox import RUN, START, Outbox, answers, read_calls, unpack, write_calls
from fer_exp.tracking.queries import get_record
from fer_exp.tracking.store import connect, retries

if TYPE_CHECKING:
    import keras

log = logging.getLogger("fer_exp.tracking")

_outbox: Outbox | None = None  # the active job run's, on a tracking server


def open_outbox(spool: Path, run: dict, limit_minutes: float) -> None:
    """Give the active run (`run`: tracking_uri, run_id, run_name) an outbox in spool/<run id>."""
    global _outbox
    uri = run["tracking_uri"]
    _outbox = Outbox(Path(spool) / run["run_id"], run, _send, lambda: answers(uri), 60 * limit_minutes)


def start_offline(spool: Path, uri: str, limit_minutes: float, run_name: str, **start) -> str:
    """A run whose server does not answer as it begins: its creation (`start`: experiment, parent_run_id,
    tags) and every record after it wait in spool/<local id>, sent when the server answers. Returns
    that local id, which names the spool folder (the server gives the run its own id)."""
    global _outbox
    local_id = f"offline-{uuid.uuid4().hex[:16]}"
    run = {"tracking_uri": uri, "run_id": local_id, "run_name": run_name, "pending": True}
    _outbox = Outbox(Path(spool) / local_id, run, _send, lambda: answers(uri), 60 * limit_minutes)
    _outbox.start_down(START, run_name=run_name, **start)
    log.warning(
        "the tracking server %s does not answer: job %s starts anyway; its run and records wait in %s and go to the "
        "server when it answers (up to %g min, then python -m fer_exp.sync)",
        uri,
        run_name,
        _outbox.folder,
        limit_minutes,
    )
    return local_id


def has_outbox() -> bool:
    return _outbox is not None


def deliver(call: str, /, **kwargs) -> None:
    """Send a call on the active run now, or through the job's outbox when there is one."""
    if _outbox is None:
        _send(call, kwargs)
    else:
        _outbox.deliver(call, **kwargs)


def _send(call: str, kwargs: dict):
    return _SENDERS[call](**kwargs)


def end_active_run(status: str) -> None:
    """End the active run; with an outbox, first send what waits in it (waiting for the server up to
    its limit). If it stays away, the end goes to the spool too and a message names the folder."""
    global _outbox
    box, _outbox = _outbox, None
    if box is None or box.close():
        mlflow.end_run(status)
        return
    box.deliver("end_run", status=status)
    with retries(0, 0, override=True), contextlib.suppress(Exception):
        mlflow.end_run(status)  # clears the active run (then fails to reach the server)
    log.error(
        "the tracking server stayed away for %g min: run %s %s is kept in %s, its model and checkpoint included. Once the "
        "server answers, upload it with: python -m fer_exp.sync spool=%s",
        box.limit_s / 60,
        box.run["run_name"] if box.run.get("pending") else box.run["run_id"],
        status,
        box.folder,
        box.folder.parent,
    )


def _start_run(run_name: str, experiment: str, parent_run_id: str | None, tags: dict[str, str]) -> str:
    """Create a run that began while the server was away (in its parent's experiment, else in
    `experiment`, made if need be) and make it the active one; returns its id."""
    client = MlflowClient()
    if parent_run_id:
        experiment_id = client.get_run(parent_run_id).info.experiment_id
    else:
        found = client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else client.create_experiment(experiment)
    run = mlflow.start_run(run_name=run_name, parent_run_id=parent_run_id, tags=tags, experiment_id=experiment_id)
    return run.info.run_id


def _log_files(paths: list[Path], folder: str | None) -> None:
    for p in paths:
        mlflow.log_artifact(str(p), folder)


def _log_dataset(name: str, source: str, digest: str, context: str) -> None:
    # MLflow's own sources: a local folder or file, else (the synthetic set) the code that draws it
    where = LocalArtifactDatasetSource(source) if Path(source).is_absolute() else CodeDatasetSource({"data": source})
    dataset = MetaDataset(where, name=name, digest=digest[:36])
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


_SENDERS = {
    START: _start_run,
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
    if run.get("pending"):  # the job began while the server was away: create its run first
        run.update(run_id=_send(START, unpack(calls[0][1], folder)), pending=False)
        (folder / RUN).write_text(json.dumps(run, indent=1))  # before the calls: a second sync must not create it again
    else:
        mlflow.start_run(run_id=run["run_id"])
    try:
        client = MlflowClient()
        if client.get_run(run["run_id"]).data.tags.get(TAG_ERROR) == LOST:
            client.delete_tag(run["run_id"], TAG_ERROR)  # its sweep ended while it was spooled: it was not lost
        while calls and calls[0][0] != "end_run":
            if calls[0][0] != START:  # sent already: the run exists (run.json)
                _send(calls[0][0], unpack(calls[0][1], folder))
            calls.pop(0)
            write_calls(folder, calls)  # a second sync goes on where this one stopped
        # no end: the job died during the outage; KILLED with a checkpoint, resume=true continues it
        status = unpack(calls[0][1], folder)["status"] if calls else "KILLED"
    finally:
        mlflow.end_run(status)
    shutil.rmtree(folder)
    return get_record(run["run_id"])
