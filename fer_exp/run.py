"""The command line: `python -m fer_exp.run [-m] key=value ...` (a Hydra app)."""

from __future__ import annotations

import logging
import math
import os
import sys
import warnings
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from fer_exp.config import ConfigError, conf_dir, validate
from fer_exp.config import run_name as name_of
from fer_exp.data import REMOTE_ENV, DataError
from fer_exp.training import machine

# conf/hydra/launcher/ray.yaml extends hydra-ray-launcher's schema of the same name on purpose.
warnings.filterwarnings("ignore", message=r"\s*'hydra/launcher/ray' is validated against ConfigStore schema")

log = logging.getLogger("fer_exp")


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="config")
def main(cfg: DictConfig) -> float | None:
    """Train one job; returns the validation accuracy a sweeper optimises (NaN when it failed)."""
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    if not multirun:  # in a sweep, train() checks these, so that the job is recorded FAILED and the others go on
        try:
            validate(cfg)  # before TensorFlow, MLflow or the data load: a typo fails in a second
        except ConfigError as e:
            log.error("%s", e)
            sys.exit(2)
        if problem := preflight(cfg):
            log.error("%s", problem)
            sys.exit(2)
    if hc.runtime.choices.get("augment") == "seed":
        log.warning(
            "augment=seed is now called augment=notebook (the old name read like the top-level seed=); "
            "the old name goes in fer_exp 0.2: use augment=notebook"
        )
    machine.use_onednn(cfg.model.name)  # before TensorFlow loads
    machine.use_threads(cfg.threads)
    from fer_exp.sweeps import lifecycle  # TensorFlow and MLflow load for a job, not for --help
    from fer_exp.tracking import AccessError
    from fer_exp.training.callbacks import install_signal_handlers, raise_if_signalled
    from fer_exp.training.job import train
    from fer_exp.training.teachers import TeacherError

    # Ctrl-C and SIGTERM: the run ends KILLED with its last completed epoch checkpointed.
    install_signal_handlers()
    if os.environ.get(REMOTE_ENV) and os.path.isdir(hc.runtime.cwd):
        os.chdir(
            hc.runtime.cwd
        )  # on a cluster worker: relative paths (data.root, caches) mean what they do on the driver
    overrides = list(hc.overrides.task)
    run_name = name_of(overrides)  # e.g. "model=deep,lr=0.001"
    try:
        raise_if_signalled()  # a signal during the previous job's final logging stops the sweep here
        return train(cfg, run_name=run_name, output_dir=hc.runtime.output_dir, overrides=overrides)["val_accuracy"]
    except KeyboardInterrupt:
        log.error("job %s interrupted; re-run the same command with resume=true to continue", run_name)
        if not os.environ.get(REMOTE_ENV):  # on a cluster worker only this job stops; the driver ends the sweep
            lifecycle.finish_sweep("KILLED", jobs_done=False)  # parallel jobs may still be running
        sys.exit(130)
    except (DataError, AccessError, TeacherError) as e:
        # A user error: the message says what to fix; a traceback would only hide it.
        log.error("job %s: %s", run_name, e)
        if not multirun:
            sys.exit(2)
    except Exception:
        if not multirun:
            raise
        # The run is already marked FAILED; let the other jobs of the sweep go on.
        log.exception("job %s failed", run_name)
    if cfg.fail_fast:
        log.error("fail_fast=true: job %s failed, so the sweep ends here; no further job starts", run_name)
        lifecycle.finish_sweep("FAILED", jobs_done=False)  # parallel jobs may still be running
        sys.exit(1)
    return math.nan


def preflight(cfg: DictConfig) -> str | None:
    """What stops a single job before TensorFlow loads (seconds of imports), or None: its data folder
    or file is missing, its tracking store refuses it, or a teacher is missing, unfinished or names
    other classes. train() checks the same (and the teachers' input size)."""
    import tempfile

    from fer_exp import tracking
    from fer_exp.data import data_digests
    from fer_exp.training import teachers

    config = OmegaConf.to_container(cfg, resolve=True)
    data, store = config["data"], config["tracking"]
    try:
        if data["format"] == "csv" or data.get("root") is not None:  # the default root may fall back to synthetic
            data_digests(data)
        # a server that does not answer is no error for a job without resume=true: it starts on its spool
        online = tracking.configure(store["uri"], store["dir"], store["experiment"], offline=not config["resume"])
        if (refs := teachers.refs_of(config["teacher"])) and online is not None:
            with tempfile.TemporaryDirectory() as tmp:
                teachers.find(refs, data["classes"], Path(tmp))
    except (DataError, tracking.AccessError, teachers.TeacherError) as e:
        return str(e)
    return None


def command() -> None:
    """`python -m fer_exp.run` and `fer-exp run`: the Hydra app, and --version (Hydra's own prints Hydra's)."""
    if "--version" in sys.argv[1:]:
        from fer_exp.cli import fer_exp_version

        print(f"fer_exp {fer_exp_version()} (Hydra {hydra.__version__})")
        return
    main()


if __name__ == "__main__":
    command()
