"""Whole runs as a user starts them: the overhead a sweep adds per job, and the peak memory of a
full-data training run."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, row


def own_store() -> dict[str, str]:
    """This environment without MLFLOW_TRACKING_URI (which mlflow.set_tracking_uri sets, as the
    inference section does): a run started here logs to its own tracking.dir, not the user's store."""
    return {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}


# --- sweep overhead -----------------------------------------------------------


def bench_sweep(results: dict) -> None:
    import mlflow

    from fer_exp import tracking

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        tracking.configure(None, f"{tmp}/mlruns")  # a store is created once; sweeps then log into it
        row(
            results,
            "sweep",
            "creating a new MLflow store (once per store)",
            time.perf_counter() - start,
            "s",
            "not counted below",
        )
        cmd = [
            sys.executable,
            "-m",
            "fer_exp.run",
            "-m",
            "model=shallow",
            "lr=1e-4,1e-3",
            "seed=1,2",
            "data=synthetic",
            "data.train_per_class=10",
            "data.val_per_class=4",
            "epochs=1",
            f"tracking.dir={tmp}/mlruns",
            f"hydra.sweep.dir={tmp}/multirun",
        ]
        began = time.time()
        subprocess.run(cmd, check=True, cwd=ROOT, env=own_store(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        ended = time.time()
        runs = mlflow.search_runs(search_all_experiments=True, order_by=["attributes.start_time ASC"])
    mlflow.set_tracking_uri(None)
    os.environ.pop("MLFLOW_TRACKING_URI", None)  # set by mlflow.set_tracking_uri
    jobs = runs[runs["tags.fer_exp.role"] != "sweep"]
    n, wall = len(jobs), ended - began
    fit = jobs["metrics.train_seconds"].sum()
    in_runs = (jobs["end_time"] - jobs["start_time"]).dt.total_seconds().sum()
    first_job = jobs["start_time"].min().timestamp()
    row(results, "sweep", "jobs", n, "", "model=shallow lr=1e-4,1e-3 seed=1,2, 70 synthetic images, 1 epoch")
    row(results, "sweep", "wall time of the multirun", wall, "s")
    row(results, "sweep", "inside fit, per job", fit / n, "s", "mostly graph tracing at this size")
    row(results, "sweep", "overhead per job: (wall - fit) / jobs", (wall - fit) / n, "s", "target < 5 s")
    row(results, "sweep", "  start: interpreter, imports, parent run", first_job - began, "s", "once per sweep")
    row(
        results,
        "sweep",
        "  in each run, outside fit",
        (in_runs - fit) / n,
        "s",
        "data, model build, evaluation, plots, logging",
    )
    row(
        results,
        "sweep",
        "  between and after jobs, per job",
        (wall - (first_job - began) - in_runs) / n,
        "s",
        "Hydra job set-up, summary",
    )


# --- memory -------------------------------------------------------------------


def peak_rss_gib(pid: int | str = "self") -> float:
    """VmHWM: the process's peak resident memory since its exec (ru_maxrss would include the
    memory of the parent it was forked from)."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) / 2**20


def bench_memory(results: dict, root: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable,
            "-m",
            "fer_exp.run",
            "model=shallow",
            "epochs=1",
            f"data.root={root.resolve()}",
            f"tracking.dir={tmp}/mlruns",
            f"hydra.run.dir={tmp}/run",
        ]
        start, peak = time.perf_counter(), 0.0
        proc = subprocess.Popen(cmd, cwd=ROOT, env=own_store(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while proc.poll() is None:
            with contextlib.suppress(OSError, StopIteration):  # the process may end between poll and read
                peak = max(peak, peak_rss_gib(proc.pid))
            time.sleep(0.2)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}")
    row(
        results,
        "memory",
        "peak RSS, `model=shallow epochs=1` full data",
        peak,
        "GiB",
        f"target < 3 GiB; {time.perf_counter() - start:.0f} s",
    )
    row(results, "memory", "peak RSS of this benchmark process", peak_rss_gib(), "GiB", "data + every model above")
