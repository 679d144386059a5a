"""A job's side of a sweep's Optuna study: its trial, reported every epoch (ReportToTrial, a Keras
callback: only jobs import this module), stopped after the epoch a pruner rejects, and told how the job ended."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import keras
import optuna

from fer_exp import tracking
from fer_exp.sweeps.study import announced, make_pruner

log = logging.getLogger(__name__)


class ReportToTrial(keras.callbacks.Callback):
    """Report `monitor` to an Optuna trial after every epoch; stop after an epoch the study's pruner rejects."""

    def __init__(self, trial, monitor: str = "val_accuracy"):
        super().__init__()
        self.trial, self.monitor = trial, monitor
        self.pruned_at: int | None = None  # the epoch after which the pruner stopped the job
        self.value: float | None = None  # the job's result, told to the study when it completes

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        if (value := (logs or {}).get(self.monitor)) is None:
            return
        self.trial.report(float(value), step=epoch)
        if self.trial.should_prune():
            self.pruned_at = epoch + 1
            self.model.stop_training = True
            log.info(
                "pruned after epoch %d: %s %.4f is below the study's trials at this epoch",
                epoch + 1,
                self.monitor,
                value,
            )


@contextlib.contextmanager
def trial_for(config: dict) -> Iterator[ReportToTrial | None]:
    """The job's trial in the announced study, as a callback (None without a study or pruner).

    The study learns how the job ended: COMPLETE with the job's `value` (set on the callback by the
    caller), PRUNED, or FAIL when the job raises.
    """
    study_ref = announced()
    if study_ref is None or (config["pruner"]["name"] == "none" and config.get("trial") is None):
        if config["pruner"]["name"] != "none":
            log.warning("pruner=%s works in sweeps (-m); this single run is not pruned", config["pruner"]["name"])
        yield None
        return
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(
        study_name=study_ref["name"],
        storage=study_ref["storage"],
        pruner=make_pruner(config["pruner"], config["epochs"]),
    )
    # a search's trial (public constructor, documented as not for direct use: the trial was asked in the driver), or a grid job's own
    trial = optuna.trial.Trial(study, config["trial"]) if config.get("trial") is not None else study.ask()
    tracking.set_tags({tracking.TAG_TRIAL: f"{trial.number} of study {study.study_name}"})
    callback = ReportToTrial(trial, config["early_stopping"]["monitor"])
    try:
        yield callback
    except BaseException:
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        raise
    if callback.pruned_at:
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    else:
        study.tell(trial, callback.value)


def tell_reused(config: dict, value: float | None) -> None:
    """A search's job that reused a FINISHED run (resume=true) completes its trial with that run's result."""
    if (study_ref := announced()) and config.get("trial") is not None and value is not None:
        study = optuna.load_study(study_name=study_ref["name"], storage=study_ref["storage"])
        study.tell(optuna.trial.Trial(study, config["trial"]), value)
