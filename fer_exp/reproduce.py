"""Re-run a recorded run and say whether it reproduced.

    python -m fer_exp.reproduce RUN [checkout=true] [force=true] [jobs=all|best] [tolerance=POINTS]
                                    [tracking.dir=mlruns | tracking.uri=http://...]

(The flags --checkout, --force, --jobs, --tolerance, --tracking-dir and --tracking-uri work too.)

RUN is a run id, runs:/<id>/... or models:/<name>@<alias>; a sweep's parent run reproduces its
jobs. Before any training it prints, one line each, what differs between the run and now (code,
config, data, teachers, environment, machine, seed) and refuses other data (exit 2) unless --force,
and a distilled run whose teacher is gone or changed (exit 2). The job
is trained again with the run's logged config (with --checkout: by the run's own code, in a
temporary git worktree at its commit with its patch applied) into a new run tagged
fer_exp.reproduces=<id>. The verdict, printed and tagged on both runs as fer_exp.reproduced:
identical (every metric equal, epoch by epoch), within noise (the final metric within the
tolerance) or differs (the first epoch and metric that diverge). Exit 0, 0 and 1 respectively.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from fer_exp import cli, differences, tracking
from fer_exp.data import DataError
from fer_exp.tracking import provenance
from fer_exp.training import machine, teachers

log = logging.getLogger("fer_exp.reproduce")
METRIC = tracking.METRIC  # what "within noise" is judged on
IDENTICAL, WITHIN_NOISE, DIFFERS = "identical", "within noise", "differs"
# Starts fer_exp.run from a worktree's code: its folder goes first on sys.path (before the current
# directory and the installed package), while the current directory, and with it relative data
# paths, stays the user's.
BOOT = "import runpy, sys; sys.path.insert(0, sys.argv.pop(1)); runpy.run_module('fer_exp.run', run_name='__main__', alter_sys=True)"


class Refusal(Exception):
    """A reason not to re-run; the message says what to do."""


@dataclass
class Job:
    """A recorded job run and what its rerun needs."""

    record: dict
    config: dict  # the run's logged config (resolved)
    overrides: list[str]  # its command-line overrides, minus where results go
    digests: dict[str, str]  # {dataset name: digest} the run recorded
    lines: list[tuple[str, str]] = field(default_factory=list)  # (aspect, "same: ..." or "differs: ...")
    worktree: Path | None = None

    @property
    def run_id(self) -> str:
        return self.record["run_id"]


# --- planning: everything checked before any training ------------------------


def job_overrides(tag: str | None) -> list[str]:
    """The run's overrides minus where results go and resume (the rerun must train, not reuse)."""
    keep = [
        o
        for o in tracking.decode_overrides(tag)
        if o.split("=", 1)[0].lstrip("+~").split(".", 1)[0] not in ("tracking", "resume")
    ]
    return [o for o in keep if not o.startswith("hydra.")]


def require_finished(record: dict) -> None:
    if record["status"] != "FINISHED":
        raise Refusal(
            f"run {record['run_id']} ({record['name']}) is {record['status']}, not FINISHED: "
            "only a finished run has a result to reproduce"
        )


def load_job(record: dict) -> Job:
    require_finished(record)
    text = tracking.artifact_text(record["run_id"], "config.yaml")
    if text is None:
        raise Refusal(f"run {record['run_id']} has no config.yaml artifact: it was not recorded by fer_exp.run")
    overrides = job_overrides(record["tags"].get(tracking.TAG_OVERRIDES))
    return Job(record, OmegaConf.to_container(OmegaConf.create(text)), overrides, record["datasets"])


def make_worktree(job: Job, patch: str | None, stack: contextlib.ExitStack) -> Path:
    """The run's own code in a temporary git worktree (removed when `stack` closes)."""
    commit = job.record["tags"].get(tracking.TAG_GIT_COMMIT)
    if not commit:
        raise Refusal(f"run {job.run_id} recorded no git commit: its code cannot be checked out")
    if job.record["tags"].get(tracking.TAG_GIT_DIRTY) == "true" and patch is None:
        raise Refusal(
            f"run {job.run_id} ran on uncommitted changes that were not recorded (it predates source.patch): "
            "its code cannot be restored"
        )
    try:
        return stack.enter_context(provenance.checkout(commit, patch))
    except provenance.CheckoutError as e:
        raise Refusal(f"run {job.run_id}: {e}") from None


def plan(job: Job, args, stack: contextlib.ExitStack) -> None:
    """Fill job.lines (what differs); raise Refusal when the rerun would not be a reproduction."""
    patch = tracking.artifact_text(job.run_id, tracking.PATCH)
    if args.checkout:
        job.worktree = make_worktree(job, patch, stack)
    today = None if args.checkout else differences.today_config(job.overrides)
    tags = job.record["tags"]
    job.lines = [
        ("code", differences.code_line(tags, provenance.code_state(), patch, args.checkout)),
        ("config", differences.config_line(job.config, today, args.checkout)),
        ("data", differences.data_line(job.config, job.digests, args.force)),
        (
            "teacher",
            differences.teacher_line(job.config, tags, Path(stack.enter_context(tempfile.TemporaryDirectory()))),
        ),
        ("environment", differences.environment_line(tracking.artifact_text(job.run_id, "environment.txt"))),
        ("machine", differences.machine_line(tags, job.config.get("precision", "float32"))),
        ("seed", differences.seed_line(job.config)),
    ]
    job.lines = [(aspect, line) for aspect, line in job.lines if line is not None]
    if today is not None:  # keys added to conf/ since the run take today's defaults; the run's values win
        job.config = OmegaConf.to_container(OmegaConf.merge(today, job.config))


# --- the rerun -----------------------------------------------------------------


def rerun(job: Job, uri: str, experiment: str) -> tuple[str, bool]:
    """Train the job again into a new run tagged fer_exp.reproduces; returns (its id, whether it finished)."""
    tags = {tracking.TAG_REPRODUCES: job.run_id}
    new_id = tracking.create_run(job.record["experiment_id"], job.record["name"], tags)
    env = {"MLFLOW_RUN_ID": new_id, **machine.onednn_env(job.record["tags"].get(f"{tracking.TAG_MACHINE}.onednn"))}
    out = Path("outputs") / "reproduce" / new_id
    if job.worktree:
        where = [f"tracking.uri='{uri}'", f"tracking.experiment={experiment}", "resume=false", f"hydra.run.dir={out}"]
        command = [sys.executable, "-c", BOOT, str(job.worktree), *job.overrides, *where]
        ok = subprocess.run(command, env={**os.environ, **env}).returncode == 0
    else:
        os.environ.update(env)  # before TensorFlow loads (oneDNN); MLflow's start_run continues MLFLOW_RUN_ID
        from fer_exp.training.job import train

        cfg = OmegaConf.create(job.config)
        cfg.tracking.uri, cfg.tracking.experiment, cfg.resume = uri, experiment, False
        try:
            train(cfg, run_name=job.record["name"], output_dir=out, overrides=job.overrides)
            ok = True
        except Exception as e:  # the new run is recorded FAILED with its traceback
            log.error("the rerun of %s failed: %s: %s", job.run_id, type(e).__name__, e)
            ok = False
    os.environ.pop("MLFLOW_RUN_ID", None)
    if tracking.get_record(new_id)["status"] == "RUNNING":  # the process died before its run started
        tracking.end_run(new_id, "FAILED", {tracking.TAG_ERROR: "the rerun ended before training"})
        ok = False
    # marked, so that the experiment's run list can leave reruns out (tags.`fer_exp.role` != 'reproduction')
    tracking.set_tags({tracking.TAG_ROLE: tracking.ROLE_REPRODUCTION}, run_id=new_id)
    return new_id, ok


# --- the verdict -----------------------------------------------------------------


def tolerance(job: Job, points: float | None) -> tuple[float, str]:
    """(tolerance, why) of "within noise" for a job's rerun (see differences.seed_tolerance)."""
    return differences.seed_tolerance(job.record, tracking.job_records(job.record["experiment_id"]), points)


def verdict(job: Job, new_id: str, tol: tuple[float, str]) -> tuple[str, str]:
    """(identical | within noise | differs, the explanation); tags both runs."""
    old, new = tracking.get_record(job.run_id), tracking.get_record(new_id)
    keys = sorted(set(differences.result_metrics(old)) | set(differences.result_metrics(new)))
    epochs = int(old["metrics"].get("epochs_run", 0))
    diverge = differences.first_divergence(
        tracking.histories(job.run_id, keys), tracking.histories(new_id, keys), epochs
    )
    if diverge is None:
        word, why = IDENTICAL, f"every metric equal, epoch by epoch ({len(keys)} metrics, {epochs} epochs)"
    else:
        before, after = (r["metrics"].get(METRIC, float("nan")) for r in (old, new))
        word = WITHIN_NOISE if abs(after - before) < tol[0] else DIFFERS
        why = (
            f"{METRIC} {before:.4f} -> {after:.4f} ({100 * (after - before):+.2f} points; tolerance {tol[1]}); "
            f"first difference at {diverge}"
        )
    if new["tags"].get(tracking.TAG_HASH) != old["tags"].get(tracking.TAG_HASH):
        why += f"; config hash {old['tags'].get(tracking.TAG_HASH)} -> {new['tags'].get(tracking.TAG_HASH)}"
    tracking.set_tags({tracking.TAG_REPRODUCED: word, tracking.TAG_REPRODUCED_BY: new_id}, run_id=job.run_id)
    tracking.set_tags({tracking.TAG_REPRODUCED: word}, run_id=new_id)
    return word, why


# --- the command -------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    # key=value (every command's convention) is the flag: tracking.dir=X is --tracking-dir=X, run=ID the RUN
    keys = ("checkout", "force", "jobs", "tolerance", "tracking.dir", "tracking.uri")
    argv = cli.as_flags(
        sys.argv[1:] if argv is None else argv, {"run": "", **{k: "--" + k.replace(".", "-") for k in keys}}
    )
    p = argparse.ArgumentParser(
        prog="python -m fer_exp.reproduce",
        description=__doc__.split("\n\n")[1],
        epilog="Each flag is also key=value: run=ID checkout=true jobs=best tolerance=0.5 tracking.dir=mlruns ...",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"fer_exp {cli.fer_exp_version()}")
    p.add_argument(
        "run",
        metavar="RUN",
        help="a run id, runs:/<id>/... or models:/<name>@<alias>; a sweep's parent reproduces its jobs",
    )
    p.add_argument(
        "--checkout",
        action="store_true",
        help="run the run's own code: a temporary git worktree at its commit, its patch applied",
    )
    p.add_argument(
        "--force", action="store_true", help="re-run even when the data differs (the result is then not a reproduction)"
    )
    p.add_argument(
        "--jobs",
        choices=("all", "best"),
        default="all",
        help="for a sweep: every FINISHED job (default) or only the best",
    )
    p.add_argument(
        "--tolerance",
        type=float,
        default=None,
        metavar="POINTS",
        help="'within noise' below this many accuracy points (default: the seed spread, else 0.5)",
    )
    p.add_argument("--tracking-dir", default="mlruns", help="the local MLflow store (default mlruns)")
    p.add_argument(
        "--tracking-uri",
        default=None,
        help="a tracking server or store URI (default MLFLOW_TRACKING_URI, else --tracking-dir)",
    )
    return p.parse_args(argv)


def jobs_of(record: dict, which: str) -> list[dict]:
    """A job run itself; a sweep's parent: its FINISHED jobs (or only its best)."""
    if record["tags"].get(tracking.TAG_ROLE) != "sweep":
        return [record]
    if which == "best":
        best = record["tags"].get(tracking.TAG_BEST_RUN)
        if not best:
            raise Refusal(f"sweep {record['run_id']} has no best job (tag {tracking.TAG_BEST_RUN})")
        return [tracking.get_record(best)]
    jobs = [j for j in tracking.sweep_jobs(record["run_id"]) if j["status"] == "FINISHED"]
    if not jobs:
        raise Refusal(f"sweep {record['run_id']} has no FINISHED job to reproduce")
    return jobs


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # small text files, one at a time
    logging.getLogger("urllib3").setLevel(logging.ERROR)  # its retries against a server that is away; we say it once
    uri = tracking.resolve_uri(args.tracking_uri, args.tracking_dir)
    if problem := tracking.missing_store(uri):
        print(f"fer_exp.reproduce: {problem}", file=sys.stderr)
        return 2
    with contextlib.ExitStack() as stack:
        try:
            with tracking.quick_failures():
                tracking.connect(uri)
                record = tracking.get_record(tracking.resolve_run(args.run))
            require_finished(record)
            jobs = [load_job(r) for r in jobs_of(record, args.jobs)]
            experiment = tracking.experiment_name(record["experiment_id"])
            # before the machine line loads TensorFlow (to list GPUs, where NVIDIA's driver is)
            os.environ.update(machine.onednn_env(jobs[0].record["tags"].get(f"{tracking.TAG_MACHINE}.onednn")))
            for job in jobs:
                plan(job, args, stack)
                print(
                    f"\nreproduce run {job.run_id} ({job.record['name']}, {METRIC} {job.record['metrics'].get(METRIC, float('nan')):.4f}):",
                    flush=True,
                )
                print("\n".join(f"  {aspect:<12} {line}" for aspect, line in job.lines), flush=True)
        except (Refusal, DataError, teachers.TeacherError) as e:
            print(f"fer_exp.reproduce: {e}", file=sys.stderr)
            return 2
        except tracking.TrackingError as e:
            print(f"fer_exp.reproduce: {args.run}: {tracking.describe_error(e, uri)}", file=sys.stderr)
            return 2
        results = []
        for job in jobs:
            start = time.time()
            new_id, ok = rerun(job, uri, experiment)
            if not ok:
                results.append((job, new_id, DIFFERS, "the rerun failed (its run says why)"))
                continue
            word, why = verdict(job, new_id, tolerance(job, args.tolerance))
            results.append((job, new_id, word, f"{why}; {time.time() - start:.0f} s"))
    print()
    for job, new_id, word, why in results:
        print(f"{job.record['name']}: run {job.run_id} -> {new_id}: {word}: {why}", flush=True)
    return 1 if any(word == DIFFERS for *_, word, _ in results) else 0


if __name__ == "__main__":
    sys.exit(main())
