"""A multirun's lifecycle: one MLflow parent run per sweep, opened before any job starts
(which also creates the store's schema once, before parallel jobs could race on it),
ended with a summary, the best job tagged and registered, and the comparison plot.

Hydra calls SweepRun (conf/config.yaml, hydra.callbacks); the jobs nest under the parent
through the environment variable tracking.PARENT_ENV.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import OmegaConf

from fer_exp import tracking
from fer_exp.sweeps import eta, results, study
from fer_exp.tracking import provenance

log = logging.getLogger(__name__)
METRIC = tracking.METRIC  # what a sweep's jobs are ranked, tagged and registered by


class SweepRun(Callback):
    """Hydra callback: one MLflow parent run per multirun, a summary at the end."""

    def on_multirun_start(self, config, **kwargs: Any) -> None:
        store = config.tracking
        tags = {
            tracking.TAG_SWEEP_DIR: str(config.hydra.sweep.dir),
            tracking.TAG_OVERRIDES: tracking.encode_overrides(config.hydra.overrides.task),
        }
        try:
            experiment_id = tracking.configure(store.uri, store.dir, store.experiment)
            parent = tracking.create_sweep_run(experiment_id, f"sweep {time.strftime('%Y-%m-%d %H:%M:%S')}", tags)
        except tracking.AccessError as e:  # before any job starts
            log.error("%s", e)
            sys.exit(2)
        os.environ[tracking.PARENT_ENV] = parent
        if config.pruner.name != "none" and "fer_exp_optuna" not in str(config.hydra.sweeper.get("_target_")):
            study.open_grid_study(
                OmegaConf.to_container(store, resolve=True), parent
            )  # a search's sweeper opens its own
        atexit.register(end_abandoned_sweep)
        log.info("MLflow sweep parent run %s in %s", parent, tracking.resolve_uri(store.uri, store.dir))
        self.progress = None
        try:
            self.progress = plan(config)
        except Exception as e:  # an estimate must not stop a sweep
            log.warning("no time estimate for this sweep: %s", e)

    def on_job_end(self, config, job_return, **kwargs: Any) -> None:
        # Called in the process that ran the job: the sweep's own with the basic launcher, where jobs run
        # one after the other; a parallel launcher's workers have no progress to report.
        if getattr(self, "progress", None) is not None and "BasicLauncher" in str(
            config.hydra.launcher.get("_target_")
        ):
            log.info("%s", self.progress.job_done())

    def on_multirun_end(self, config, **kwargs: Any) -> None:
        if not finish_sweep(out_dir=config.hydra.sweep.dir):
            sys.exit(1)


def plan(config) -> eta.Progress:
    """The sweep's jobs and their estimated minutes (see eta), announced: "N jobs, about M minutes"."""
    search = "fer_exp_optuna" in str(config.hydra.sweeper.get("_target_"))
    jobs = eta.grid(
        list(config.hydra.overrides.task),
        config.model.name,
        int(config.epochs),
        int(config.hydra.sweeper.n_trials) if search else None,
        eta.speed_params(config),
    )
    minutes, source = eta.estimate(jobs, provenance.cpu_info()[0], config.data.name)
    progress = eta.Progress(minutes)
    log.info("%s", progress.plan(source))
    return progress


def _end_lost_jobs(parent: str, jobs: list[dict]) -> list[dict]:
    """No job can still be running: a job run left RUNNING was lost (its process died, e.g. a
    killed worker); end it FAILED with the reason. Returns the jobs as they now are."""
    lost = [j for j in jobs if j["status"] == "RUNNING"]
    for j in lost:
        tracking.end_run(j["run_id"], "FAILED", {tracking.TAG_ERROR: tracking.LOST})
    return tracking.sweep_jobs(parent, results.PER_EPOCH[METRIC]) if lost else jobs


def _best(parent: str, jobs: list[dict], reused: list[str]) -> list[str]:
    """Tag the best FINISHED job (reused ones count), register it; returns the summary's lines."""
    scored = [
        j
        for j in jobs + [tracking.get_record(i) for i in reused]
        if results.status(j) == "FINISHED" and METRIC in j["metrics"]
    ]
    if not scored:
        return []
    best = results.best_first(scored, METRIC)[0]
    tracking.set_tags({tracking.TAG_BEST: "true"}, run_id=best["run_id"])
    tracking.set_tags({tracking.TAG_BEST_RUN: best["run_id"]}, run_id=parent)
    lines = [f"best: {best['name']} (run {best['run_id']}), val_accuracy {best['metrics'][METRIC]:.4f}"]
    try:
        if note := tracking.register_champion(best):
            lines.append(note)
    except Exception as e:  # e.g. a store without a model registry: the sweep still ends
        log.warning("could not register the best model: %s", e)
    return lines


def _publish(parent: str, jobs: list[dict], rows: list[dict], out_dir: str | Path | None) -> list[str]:
    """The sweep at first sight: the parent row carries its best job's scores; its comparison and MLflow
    UI view (results.publish: the jobs listed best first, with the settings that differ as columns).
    Returns the summary's lines."""
    finished = [r for r in rows if r["status"] == "FINISHED" and r["value"] is not None]
    if finished:
        best = finished[0]
        scores = {METRIC: best["value"], **({"val_accuracy_tta": best["tta"]} if best["tta"] is not None else {})}
        tracking.log_metrics(scores, run_id=parent)
    if not rows:
        return []
    try:
        files, link = results.publish(tracking.get_record(parent), jobs, rows, METRIC, out_dir and Path(out_dir))
    except Exception as e:  # a plot or a view must not fail a finished sweep
        log.warning("could not save the sweep's comparison or its MLflow UI view: %s", e)
        return []
    return [f"MLflow UI (make ui): {link}  (charts: add &compareRunsMode=CHART)"] + (
        [f"comparison: {files[0]}"] if files else []
    )


def _pruning(jobs: list[dict]) -> list[str]:
    """The summary's line on pruned jobs and the epochs they did not train."""
    pruned = [j for j in jobs if results.status(j) == "PRUNED"]
    if not pruned:
        return []
    saved = sum(int(j["params"]["epochs"]) - int(j["metrics"].get("epochs_run", 0)) for j in pruned)
    at = ", ".join(str(int(j["metrics"].get("epochs_run", 0))) for j in pruned)
    return [f"pruned {len(pruned)} of {len(jobs)} job(s), after epoch(s) {at}: {saved} epoch(s) not trained"]


def _study_plots(parent: str, out_dir: Path) -> list[str]:
    """The sweep's Optuna study plots, logged to the parent run (none without a study)."""
    try:
        files = study.study_plots(out_dir)
    except Exception as e:  # a plot must not fail a finished sweep
        log.warning("could not draw the study's plots: %s", e)
        return []
    tracking.log_files(files, run_id=parent)
    return [f"study plots: {', '.join(f.name for f in files)}"] if files else []


def finish_sweep(status: str | None = None, out_dir: str | Path | None = None, jobs_done: bool = True) -> bool:
    """End the current sweep's parent run, tag its best job, print the summary.

    The best FINISHED job's model is registered (see tracking.register_champion) and, with
    out_dir, the comparison plot is written there and logged to the parent run.
    jobs_done: no job can still be running, so one left RUNNING was lost (_end_lost_jobs).
    status None: FINISHED when every job finished, else FAILED. Returns whether all finished.
    """
    parent = os.environ.pop(tracking.PARENT_ENV, None)
    if not parent:
        return True
    jobs = tracking.sweep_jobs(parent, results.PER_EPOCH[METRIC])
    if jobs_done:
        jobs = _end_lost_jobs(parent, jobs)
    failed = [j for j in jobs if j["status"] != "FINISHED"]
    prefix = tracking.TAG_REUSED + "."
    reused = [k[len(prefix) :] for k in tracking.get_record(parent)["tags"] if k.startswith(prefix)]
    lines = [f"\nSweep {parent}: {len(jobs)} job(s), {len(failed)} not finished"]
    if reused:
        lines.append(f"{len(reused)} job(s) already FINISHED earlier, reused: {', '.join(reused)}")
    rows = results.job_rows(jobs, METRIC)  # best first, only the overrides that differ
    if rows:
        lines.append(results.table(rows, METRIC))
    lines += [
        f"{j['status']}: {j['name']}: {j['tags'].get(tracking.TAG_ERROR) or j['tags'].get(tracking.TAG_STOP, '')}"
        for j in failed
    ]
    lines += _pruning(jobs) + _best(parent, jobs, reused) + _publish(parent, jobs, rows, out_dir)
    if out_dir:
        lines += _study_plots(parent, Path(out_dir) / parent)
    os.environ.pop(study.STUDY_ENV, None)
    tracking.end_run(parent, status or ("FAILED" if failed else "FINISHED"))
    print("\n".join(lines), flush=True)
    return not failed


def end_abandoned_sweep() -> None:
    """At exit: a sweep still open here was abandoned by an error in the launcher (e.g. a
    Ray worker died); end it FAILED, with its lost jobs, rather than leave it RUNNING."""
    if os.environ.get(tracking.PARENT_ENV):
        finish_sweep("FAILED")
