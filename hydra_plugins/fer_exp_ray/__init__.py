"""`hydra/launcher=ray` (conf/hydra/launcher/ray.yaml): the jobs of a multirun as tasks
on a Ray cluster, through hydra-ray-launcher (the `cluster` extra), made to outlive a
lost worker.

Differences from hydra-ray-launcher's own launcher:
- a job whose worker or node dies is reported and scored NaN; the other jobs go on
  and the sweep ends normally (its summary marks the lost run FAILED), where the
  original raised at the first lost job and so abandoned the rest;
- the sweep folder is the driver's absolute one, not resolved again on each worker
  (its own clock for `${now:}`, its own working directory);
- jobs get the sweep's parent run, its Optuna study, MLflow's credentials and FER_EXP_REMOTE through Ray's runtime environment:
  fer_exp.run then works in the driver's folder, and fer_exp.data does not fall back
  to the synthetic set when the node lacks the data;
- no object-store size is forced, which Ray refuses when joining a running cluster.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger(__name__)


class FaultTolerantRayLauncher(Launcher):
    def __init__(self, ray: DictConfig) -> None:
        self.ray_cfg = ray
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        import ray

        from fer_exp.data import REMOTE_ENV
        from fer_exp.sweeps.study import STUDY_ENV
        from fer_exp.tracking import PARENT_ENV, PASSWORD, USER
        from hydra_plugins.hydra_ray_launcher._launcher_util import launch_job_on_ray, start_ray

        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(str(self.config.hydra.sweep.dir)).absolute()
        sweep_dir.mkdir(parents=True, exist_ok=True)
        init = OmegaConf.to_container(self.ray_cfg.init, resolve=True)
        env = init.setdefault("runtime_env", {}).setdefault("env_vars", {})
        env[REMOTE_ENV] = "ray"
        # the sweep's parent run, its Optuna study (pruning), the tracking server's credentials
        for name in (PARENT_ENV, STUDY_ENV, USER, PASSWORD):
            if os.environ.get(name):
                env[name] = os.environ[name]
        start_ray(OmegaConf.create(init))
        log.info(
            "Ray: %d job(s) on %s, sweep output %s",
            len(job_overrides),
            ray.get_runtime_context().gcs_address,
            sweep_dir,
        )

        jobs = []
        for idx, overrides in enumerate(job_overrides, initial_job_idx):
            log.info("\t#%d : %s", idx, " ".join(filter_overrides(overrides)))
            cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(cfg):
                cfg.hydra.sweep.dir = str(sweep_dir)
                cfg.hydra.job.id = f"job_id_for_{idx}"
                cfg.hydra.job.num = idx
            ref = launch_job_on_ray(
                self.hydra_context, self.ray_cfg.remote, cfg, self.task_function, Singleton.get_state()
            )
            jobs.append((idx, overrides, cfg, ref))
        return [self._result(ray, *job) for job in jobs]

    @staticmethod
    def _result(ray, idx: int, overrides: Sequence[str], cfg: DictConfig, ref) -> JobReturn:
        """The job's JobReturn; a job lost with its worker counts as a failed job (NaN)."""
        try:
            return ray.get(ref)
        except ray.exceptions.RayError as e:
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            log.error(
                "job #%d (%s) was lost on the Ray cluster: %s: %s", idx, " ".join(overrides), type(e).__name__, reason
            )
            return JobReturn(overrides=list(overrides), cfg=cfg, status=JobStatus.COMPLETED, _return_value=math.nan)
