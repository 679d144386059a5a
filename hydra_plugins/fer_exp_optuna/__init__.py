"""`hparams_search=optuna` (conf/hydra/sweeper/optuna.yaml): an Optuna search as a Hydra sweeper, on
current Optuna, whose trials are pruned inside the jobs (fer_exp.sweeps).

hydra-optuna-sweeper 1.3 pins optuna<3 and never lets a trial reach its job (hydra issue #1954),
so nothing can be pruned there. This sweeper keeps its YAML search space (hydra.sweeper.params:
choice(...), interval(...), tag(log, interval(...)), range(...)), n_trials and n_jobs (a batch for
the launcher), and hands each job its trial (`trial=<id>`) in a study stored beside the MLflow
store, which every job (joblib processes, Ray workers) opens itself. The jobs report every epoch
and tell the study how they ended; this sweeper only asks for trials and launches them.
With resume=true it continues the newest study of the same name: finished and pruned trials count
toward n_trials, and a trial whose job was lost is asked again with the same parameters.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, Transformer
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

log = logging.getLogger(__name__)
DONE = (TrialState.COMPLETE, TrialState.PRUNED)


def distribution(override: Override) -> BaseDistribution | None:
    """The Optuna distribution of a sweep override, or None for a fixed value."""
    if not override.is_sweep_override():
        return None
    value = override.value()
    if override.is_choice_sweep() or (override.is_range_sweep() and value.shuffle):
        return CategoricalDistribution(list(override.sweep_iterator(transformer=Transformer.encode)))
    if override.is_range_sweep():
        if any(isinstance(v, float) for v in (value.start, value.stop, value.step)):
            return FloatDistribution(value.start, value.stop, step=value.step)
        return IntDistribution(int(value.start), int(value.stop) - 1, step=int(value.step))  # range() excludes stop
    log_scale = "log" in value.tags
    if isinstance(value.start, int) and isinstance(value.end, int):
        return IntDistribution(value.start, value.end, log=log_scale)
    return FloatDistribution(float(value.start), float(value.end), log=log_scale)


def search_space(arguments: list[str]) -> tuple[dict[str, BaseDistribution], list[str]]:
    """({key: distribution}, the fixed overrides) of the sweeper's params and then the command line's:
    a later one replaces an earlier one of the same key (`model=shallow` fixes what params search)."""
    space, fixed = {}, {}
    for override in OverridesParser.create().parse_overrides(arguments):
        key, dist = override.get_key_element(), distribution(override)
        space.pop(key, None), fixed.pop(key, None)
        if dist is None:
            fixed[key] = override.input_line
        else:
            space[key] = dist
    return space, list(fixed.values())


def as_override(key: str, value) -> str:
    """key=value, floats to 4 significant digits (readable run names; the job trains with that value)."""
    return f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}"


class OptunaSweeper(Sweeper):
    def __init__(
        self,
        sampler: optuna.samplers.BaseSampler | None,
        direction: str,
        study_name: str,
        n_trials: int,
        n_jobs: int,
        params: DictConfig | None = None,
    ):
        # Hydra has already instantiated `sampler` (its _target_) when it built this sweeper
        self.sampler, self.direction, self.study_name = sampler, direction, study_name
        self.n_trials, self.n_jobs, self.params = n_trials, n_jobs, params or {}

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.job_idx = config, 0
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function
        )

    def open_study(self) -> optuna.Study:
        """A new study `<study_name> <time>`, or with resume=true the newest of that name."""
        from fer_exp.sweeps.study import announce, storage_url

        storage = storage_url(OmegaConf.to_container(self.config.tracking, resolve=True))
        name = f"{self.study_name} {time.strftime('%Y-%m-%d %H:%M:%S')}"
        if self.config.resume:
            earlier = sorted(
                (s for s in optuna.get_all_study_names(storage) if s.startswith(f"{self.study_name} ")), reverse=True
            )
            name = earlier[0] if earlier else name
            if self.sampler is not None:
                self.sampler.reseed_rng()  # the seeded sampler would replay the first search's random draws
        study = optuna.create_study(
            study_name=name, storage=storage, sampler=self.sampler, direction=self.direction, load_if_exists=True
        )
        announce(storage, name)
        lost = [
            t
            for t in study.get_trials(deepcopy=False)
            if t.state in (TrialState.RUNNING, TrialState.FAIL, TrialState.WAITING)
        ]
        for t in lost:  # the jobs of an interrupted search: ask them again (the job itself resumes its run)
            if t.state == TrialState.RUNNING:
                study.tell(t.number, state=TrialState.FAIL)
            study.enqueue_trial(t.params, skip_if_exists=True)
        log.info(
            "Optuna study %r in %s: %d trial(s) done before",
            name,
            storage,
            sum(t.state in DONE for t in study.get_trials(deepcopy=False)),
        )
        return study

    def sweep(self, arguments: list[str]) -> Sequence:
        from fer_exp.sweeps.study import end_lost_trials

        space, fixed = search_space([f"{k}={v}" for k, v in self.params.items()] + list(arguments))
        study = self.open_study()
        returns = []
        while (to_go := self.n_trials - sum(t.state in DONE for t in study.get_trials(deepcopy=False))) > 0:
            trials = [study.ask(space) for _ in range(min(self.n_jobs, to_go))]
            overrides = [
                (*(as_override(k, v) for k, v in t.params.items()), *fixed, f"trial={t._trial_id}") for t in trials
            ]
            returns += self.launcher.launch(overrides, initial_job_idx=self.job_idx)
            self.job_idx += len(trials)
            end_lost_trials(study, [t.number for t in trials])
            if all(study.trials[t.number].state == TrialState.FAIL for t in trials):
                log.error("every trial of the last batch failed; stopping the search (see the sweep summary)")
                break
        done = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
        if done:
            log.info("best trial #%d: %s = %.4f", study.best_trial.number, study.best_trial.params, study.best_value)
        return returns
