"""Reading the store: runs as plain records, their histories, artifacts and inputs, sweeps, models."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow
from mlflow.tracking import MlflowClient

from fer_exp.tracking.names import LOST, TAG_CHECKPOINT, TAG_ERROR, TAG_HASH, TAG_MACHINE, TAG_ROLE
from fer_exp.tracking.store import connect

if TYPE_CHECKING:
    import keras


def record(run, history_metric: str | None = None, client: MlflowClient | None = None) -> dict:
    """A run as a plain dict: run_id, name, status, params, metrics, tags, start and end (ms, end None
    while running), its data set digests and, with `history_metric`, that metric's values per epoch."""
    history = []
    if history_metric:
        steps = (client or MlflowClient()).get_metric_history(run.info.run_id, history_metric)
        history = [m.value for m in sorted(steps, key=lambda m: m.step)]
    return {
        "run_id": run.info.run_id,
        "experiment_id": run.info.experiment_id,
        "name": run.info.run_name or "",
        "status": run.info.status,
        "deleted": run.info.lifecycle_stage == "deleted",
        "params": dict(run.data.params),
        "metrics": dict(run.data.metrics),
        "tags": dict(run.data.tags),
        "start": run.info.start_time,
        "end": run.info.end_time,
        "history": history,
        "datasets": {d.dataset.name: d.dataset.digest for d in (run.inputs.dataset_inputs if run.inputs else [])},
    }


def get_record(run_id: str, history_metric: str | None = None) -> dict:
    return record(MlflowClient().get_run(run_id), history_metric)


def resolve_run(ref: str) -> str:
    """The run id that `ref` names: a run id, runs:/<id>[/path] or models:/<name>@<alias> | models:/<name>/<version>."""
    if ref.startswith("runs:/"):
        return ref[len("runs:/") :].strip("/").split("/", 1)[0]
    if ref.startswith("models:/"):  # MLflow resolves aliases, versions and logged-model ids itself
        from mlflow.models import get_model_info

        return get_model_info(ref).run_id
    return ref


def epoch_seconds(cpu: str, model: str, data_name: str) -> list[tuple[float, dict]]:
    """(seconds per training epoch, params) of the store's FINISHED runs of `model` on data `data_name`
    that ran on `cpu` (tag fer_exp.machine.cpu), newest first, at most 50."""
    client = MlflowClient()
    query = (
        f"attributes.status = 'FINISHED' and tags.`{TAG_MACHINE}.cpu` = '{cpu}' "
        f"and params.`model.name` = '{model}' and params.`data.name` = '{data_name}'"
    )
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, query, order_by=["attributes.start_time DESC"], max_results=50)
    return [
        (r.data.metrics["train_seconds"] / r.data.metrics["epochs_run"], dict(r.data.params))
        for r in runs
        if r.data.metrics.get("epochs_run")
    ]


def experiment_runs(experiment: str) -> list[dict]:
    """Every run of the experiment named `experiment`, oldest first, as records (one query).
    Raises LookupError when there is no such experiment."""
    client = MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = [e.name for e in client.search_experiments()]
        raise LookupError(f"no experiment {experiment!r} in this store (there: {', '.join(names) or 'none'})")
    runs, token = [], None
    while True:
        page = client.search_runs(
            [exp.experiment_id], order_by=["attributes.start_time ASC"], max_results=5000, page_token=token
        )
        runs += page
        token = page.token
        if not token:
            return [record(r) for r in runs]


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


def download_files(run_id: str, names: list[str], dst: Path) -> list[Path] | None:
    """The run's top-level artifact files `names`, downloaded into `dst`; None when one is missing."""
    found = {a.path for a in MlflowClient().list_artifacts(run_id)}
    if not set(names) <= found:
        return None
    bar = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    unset = bar not in os.environ
    os.environ.setdefault(bar, "false")  # not a progress bar per small file (unless the user asks for them)
    try:
        return [
            Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=n, dst_path=str(dst))) for n in names
        ]
    finally:
        if unset:
            os.environ.pop(bar, None)


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
    return [record(r, history_metric, client) for r in runs]


def load_logged_model(uri: str, tracking_uri: str) -> tuple[keras.Model, dict]:
    """(the Keras model, its MLmodel metadata) of an MLflow model URI (runs:/..., models:/...)."""
    connect(tracking_uri)
    metadata = mlflow.models.get_model_info(uri).metadata or {}
    return mlflow.keras.load_model(uri), metadata
