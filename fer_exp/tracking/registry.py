"""The model registry: a job's model registered under its data's name, and the alias `champion`."""

from __future__ import annotations

import contextlib

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from fer_exp.tracking.names import CHAMPION, METRIC
from fer_exp.tracking.queries import get_record


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


def register_champion(job: dict, metric: str = METRIC) -> str | None:
    """Register a job's model (a run record) under its data's registry name (param data.register_as, e.g. `fer`).

    The alias `champion` moves to it when it beats the current champion on `metric`.
    Returns what was done, or None when the run's data has no registry name.
    """
    name = job["params"].get("data.register_as")
    if not name or name == "None":
        return None
    version = register_model(job["run_id"], name)
    score, current = job["metrics"][metric], champion(name)
    if current:
        best = get_record(current[1])["metrics"].get(metric)
        if best is not None and score <= best:
            return (
                f"model {name} version {version} registered; {name}@{CHAMPION} stays version {current[0]} "
                f"({metric} {best:.4f} >= {score:.4f})"
            )
    make_champion(name, version)
    return f"model {name} version {version} is now models:/{name}@{CHAMPION} ({metric} {score:.4f})"
