"""The store: where runs go (a local SQLite store or a tracking server), access to it, and its UI links.

The default store is the project's mlruns/: a SQLite database plus an artifact folder, as
absolute URIs (MLflow 3.17 refuses the old file store).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from fer_exp.tracking.names import UI, VIEW_TAG
from fer_exp.tracking.outbox import answers

TrackingError = MlflowException  # what a failed call to the store or server raises (CLIs report it)


def store_uris(directory: str | Path) -> tuple[str, str]:
    """(tracking URI, artifact root URI) for a local store in `directory`."""
    root = Path(directory).expanduser().resolve()
    return f"sqlite:///{root / 'mlflow.db'}", (root / "artifacts").as_uri()


def resolve_uri(uri: str | None, directory: str | Path = "mlruns") -> str:
    """The tracking URI to use: `uri`, else MLFLOW_TRACKING_URI, else the local store in `directory`."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or store_uris(directory)[0]


class AccessError(MlflowException):
    """The tracking server cannot be used: it refused fer_exp's credentials (or their absence), or it does not answer."""


class Unreachable(AccessError):
    """The tracking server does not answer at all (an outage, or a wrong address)."""


USER, PASSWORD = "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"  # MLflow's own variables


def missing_store(uri: str) -> str | None:
    """What to do when a local store `uri` names does not exist yet; None when it exists (or is a server)."""
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///") :]).exists():
        return f"no MLflow store at {uri[len('sqlite:///') :]}; run a sweep first or pass tracking.dir="
    return None


def is_server(uri: str | None) -> bool:
    return bool(uri) and uri.startswith(("http://", "https://"))


def check_access(uri: str) -> None:
    """For a tracking server: one read, so that missing or wrong credentials, or a server that does not
    answer, fail now in one line, saying what to do, and not after an hour of training (or MLflow's
    ~4 minutes of retries). Raises AccessError."""
    if not is_server(uri):
        return
    try:
        with retries(2, 1):
            MlflowClient(uri).search_experiments(max_results=1)
    except MlflowException as e:
        if e.get_http_status_code() not in (401, 403):
            if not answers(uri):
                raise Unreachable(
                    f"the tracking server {uri} does not answer: start it (make server), or point tracking.uri "
                    "(or MLFLOW_TRACKING_URI) at one that runs; nothing was trained"
                ) from None
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


@contextlib.contextmanager
def writable() -> Iterator[None]:
    """Around a run's creation: a server that lets this user read but not write (PERMISSION_DENIED)
    raises AccessError saying what to ask for, not MLflow's traceback."""
    try:
        yield
    except MlflowException as e:
        if e.error_code != "PERMISSION_DENIED" and e.get_http_status_code() != 403:
            raise
        raise AccessError(
            f"the tracking server {mlflow.get_tracking_uri()} lets user {os.environ.get(USER)!r} read the experiment "
            "but not write to it: ask its admin for EDIT permission (docs/cluster.md), or log to an experiment of "
            "your own with tracking.experiment=<name>"
        ) from None


def use_experiment_of(run_id: str) -> None:
    """Make the experiment that holds `run_id` the active one (where new top-level runs go)."""
    mlflow.set_experiment(experiment_id=MlflowClient().get_run(run_id).info.experiment_id)


def connect(uri: str) -> None:
    """Point MLflow at an existing store or server (configure() also selects an experiment)."""
    check_access(uri)
    mlflow.set_tracking_uri(uri)


def configure(
    uri: str | None, directory: str | Path = "mlruns", experiment: str = "fer_exp", offline: bool = False
) -> str | None:
    """Point MLflow at the store and select (or create) the experiment; returns its id.
    offline=True: a tracking server that does not answer is not an error; the id is then None (a job
    starts on its spool and its run is created when the server answers: tracking/outage.py)."""
    artifacts = None
    if not uri:
        Path(directory).mkdir(parents=True, exist_ok=True)
        uri, artifacts = store_uris(directory)
    try:
        check_access(uri)
    except Unreachable:
        if not offline:
            raise
        mlflow.set_tracking_uri(uri)
        return None
    mlflow.set_tracking_uri(uri)
    exp = mlflow.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else mlflow.create_experiment(experiment, artifact_location=artifacts)
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


@contextlib.contextmanager
def retries(max_retries: int, backoff_factor: int, override: bool = False) -> Iterator[None]:
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
    with retries(2, 1):
        yield


def describe_error(e: MlflowException, uri: str) -> str:
    """One line for a failed call: what was missing or unreachable, and what to do."""
    if e.error_code == "RESOURCE_DOES_NOT_EXIST":
        return f"not found in {uri}: {e.message}"
    if is_server(uri) and not answers(uri):
        return f"the tracking server {uri} cannot be reached: start it (make server), or point MLFLOW_TRACKING_URI at one that runs"
    return e.message


def share_view(run_id: str, state: dict) -> str:
    """Keep a view of the runs table (columns, sort, expanded rows) under the key `run_id`, in the
    run's experiment; returns the UI link that opens it."""
    client = MlflowClient()
    experiment_id = client.get_run(run_id).info.experiment_id
    client.set_experiment_tag(experiment_id, VIEW_TAG + run_id, json.dumps(state))
    return view_link(experiment_id, run_id)


def view_link(experiment_id: str, key: str, ui: str = UI) -> str:
    return f"{ui}/#/experiments/{experiment_id}/runs?viewStateShareKey={key}"
