"""Optuna studies for sweeps: one study per search (or per pruned grid sweep) in a database beside the
MLflow store, one trial per job, reported every epoch, pruned by Optuna's own pruners.

The driver's side: the Optuna sweeper in hydra_plugins/fer_exp_optuna, or lifecycle.SweepRun for a grid
sweep with a pruner, opens the study and names it in the environment (STUDY_ENV); each job attaches to it
(trial.trial_for): its own trial in a grid sweep, the trial the sweeper asked for (config key `trial`) in
a search.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path

import optuna

log = logging.getLogger(__name__)
STUDY_ENV = "FER_EXP_STUDY"  # JSON {"storage": URL, "name": study name}, set by the driver of a sweep


def storage_url(tracking: dict) -> str:
    """The study database: tracking.study_storage, else optuna.db beside the local mlflow.db."""
    uri = str(tracking.get("uri") or "")
    if tracking.get("study_storage"):
        return tracking["study_storage"]
    if uri and not uri.startswith("sqlite:///"):
        raise ValueError(
            f"tracking.uri={uri} is a server: pruning and searches need a study database that every job reaches; "
            "set tracking.study_storage=postgresql://USER:PASSWORD@HOST:5432/DB (e.g. the tracking server's PostgreSQL)"
        )
    folder = Path(uri[len("sqlite:///") :]).parent if uri else Path(tracking["dir"]).expanduser().resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'optuna.db'}"


class _AfterFinishedTrials(optuna.pruners.BasePruner):
    """Prune only once `min_trials` trials have finished (Hyperband has no such setting of its own)."""

    def __init__(self, pruner: optuna.pruners.BasePruner, min_trials: int):
        self.pruner, self.min_trials = pruner, min_trials

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        finished = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        return len(finished) >= self.min_trials and self.pruner.prune(study, trial)


def make_pruner(cfg: dict, epochs: int) -> optuna.pruners.BasePruner:
    """none | median | hyperband, each with warmup_epochs and min_trials (finished trials before any pruning)."""
    name = cfg["name"]
    if name == "none":
        return optuna.pruners.NopPruner()
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=cfg["min_trials"], n_warmup_steps=cfg["warmup_epochs"])
    if name == "hyperband":
        hyperband = optuna.pruners.HyperbandPruner(
            min_resource=max(1, cfg["warmup_epochs"]), max_resource=epochs, reduction_factor=cfg["reduction_factor"]
        )
        return _AfterFinishedTrials(hyperband, cfg["min_trials"])
    raise ValueError(f"pruner={name!r} is unknown; choose none, median or hyperband")


def announce(storage: str, name: str) -> None:
    """Name the sweep's study for its jobs (launchers pass the environment on; Ray gets it passed)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # a line per trial otherwise; the sweep prints its summary
    os.environ[STUDY_ENV] = json.dumps({"storage": storage, "name": name})


def announced() -> dict | None:
    return json.loads(os.environ[STUDY_ENV]) if os.environ.get(STUDY_ENV) else None


def open_grid_study(tracking: dict, parent_run_id: str) -> None:
    """A grid sweep with a pruner: its study, created once before any job starts, and announced."""
    storage, name = storage_url(tracking), f"grid {parent_run_id}"
    optuna.create_study(study_name=name, storage=storage, direction="maximize", load_if_exists=True)
    announce(storage, name)


def study_plots(out_dir: Path) -> list[Path]:
    """The announced study's optimisation history, parameter importances and intermediate values per
    trial, as PNGs in out_dir (the ones that can be drawn: importances need searched parameters)."""
    study_ref = announced()
    if study_ref is None:
        return []
    from optuna.visualization import matplotlib as ovm

    from fer_exp import plots

    study = optuna.load_study(study_name=study_ref["name"], storage=study_ref["storage"])
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for name, draw in (
        ("optimization_history", ovm.plot_optimization_history),
        ("param_importances", ovm.plot_param_importances),
        ("intermediate_values", ovm.plot_intermediate_values),
    ):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna's matplotlib plots are "experimental"
                ax = draw(study)
        except (ValueError, RuntimeError) as e:  # e.g. no finished trial, nothing searched
            log.info("study plot %s skipped: %s", name, e)
            continue
        fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
        plots.save(fig, out_dir / f"study_{name}.png")
        files.append(out_dir / f"study_{name}.png")
    return files


def end_lost_trials(study: optuna.Study, numbers: list[int]) -> None:
    """After a batch of jobs: a trial still RUNNING belongs to a job that died before telling; end it FAIL."""
    trials = study.get_trials(deepcopy=False)
    for n in numbers:
        if trials[n].state == optuna.trial.TrialState.RUNNING:
            study.tell(n, state=optuna.trial.TrialState.FAIL)
