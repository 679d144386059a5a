"""Re-run a recorded run and say whether it reproduced.

    python -m fer_exp.reproduce RUN [--checkout] [--force] [--jobs all|best] [--tolerance POINTS]
                                    [--tracking-dir mlruns | --tracking-uri http://...]

RUN is a run id, runs:/<id>/... or models:/<name>@<alias>; a sweep's parent run reproduces its
jobs. Before any training it prints, one line each, what differs between the run and now (code,
config, data, environment, machine, seed) and refuses other data (exit 2) unless --force. The job
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

import numpy as np
from omegaconf import OmegaConf

from fer_exp import machine, provenance, tracking
from fer_exp.config import NOT_CHOICES, flatten
from fer_exp.data import DataError, data_digests

log = logging.getLogger("fer_exp.reproduce")
METRIC = "best_val_accuracy"  # what "within noise" is judged on
DEFAULT_TOLERANCE = 0.005  # 0.5 points of accuracy, when the config has no repeated seeds
TIMING = ("seconds", "per_s", "gflop", "mfu")  # metric names with these measure speed, not results
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


def short(text: str | None, n: int = 12) -> str:
    return (text or "-")[:n]


# --- what differs between the run and now ------------------------------------


def code_line(job: Job, now: dict | None, patch: str | None, checkout: bool) -> str:
    tags = job.record["tags"]
    commit, dirty = tags.get("mlflow.source.git.commit"), tags.get("fer_exp.git_dirty") == "true"
    run_patch = (
        f"a patch of {len(patch.splitlines())} lines" if patch else ("a patch not recorded" if dirty else "no patch")
    )
    if checkout:
        return f"same: the run's own code, commit {short(commit)} + {run_patch}, in a temporary worktree"
    if now is None:
        return f"unknown: the code here is not a git checkout (the run: commit {short(commit)}, {run_patch})"
    same_commit, same_patch = commit == now["commit"], (patch or "") == now["patch"] and not (dirty and patch is None)
    if same_commit and same_patch:
        return f"same: commit {short(commit)}, {run_patch}"
    parts = [] if same_commit else [f"commit {short(commit)} -> {short(now['commit'])}"]
    if not same_patch:
        parts.append(
            f"{run_patch} -> " + (f"a patch of {len(now['patch'].splitlines())} lines" if now["patch"] else "no patch")
        )
    return "differs: " + ", ".join(parts) + " (--checkout runs the run's own code)"


def today_config(overrides: list[str]) -> dict | None:
    """The config today's conf/ composes from the run's overrides; None when it cannot."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    from fer_exp.data import with_fallback

    try:
        with initialize_config_dir(config_dir=str(provenance.ROOT / "conf"), version_base="1.3"):
            cfg = OmegaConf.to_container(compose(config_name="config", overrides=overrides), resolve=True)
    except (HydraException, ValueError, OSError):
        return None
    cfg.pop("hydra", None)
    cfg["data"] = with_fallback(cfg["data"])
    return cfg


def choices(config: dict) -> dict:
    return {k: v for k, v in flatten(config).items() if k.split(".", 1)[0] not in NOT_CHOICES}


def config_line(job: Job, today: dict | None, checkout: bool) -> str:
    if checkout:
        return "same: the run's overrides on the run's conf/ (its config hash is checked after)"
    if today is None:
        return "same: the run's logged config is re-run (today's conf/ cannot compose its overrides)"
    run, now = choices(job.config), choices(today)
    changed = [
        f"{k} {run.get(k, '(none)')!r} -> {now.get(k, '(none)')!r}"
        for k in sorted(set(run) | set(now))
        if run.get(k) != now.get(k)
    ]
    if not changed:
        return "same: today's conf/ composes the run's config"
    more = f" (+{len(changed) - 3} more)" if len(changed) > 3 else ""
    return f"same: the run's logged config is re-run; today's defaults would change {'; '.join(changed[:3])}{more}"


def data_line(job: Job, force: bool) -> str:
    data = job.config["data"]
    now, source = data_digests(data, seed=job.config["seed"])  # DataError when the data is missing
    recorded = job.digests
    differ = []
    for split, digest in now.items():
        name = f"{data['name']}-{split}"
        if name not in recorded:
            continue
        if recorded[name] != digest[: len(recorded[name])]:
            differ.append(f"{split}: the run's {short(recorded[name])}, now {short(digest)}")
    if differ:
        message = f"data differs in {source}: {'; '.join(differ)}"
        if not force:
            raise Refusal(
                f"{message}. A rerun on other data is not a reproduction; restore the files, or pass --force to re-run anyway"
            )
        return f"differs (--force): {'; '.join(differ)} in {source}"
    if not any(f"{data['name']}-{s}" in recorded for s in now):
        return f"unknown: the run recorded no data digest ({source})"
    return f"same: {', '.join(f'{s} {short(d)}' for s, d in now.items())} ({source})"


def environment_line(run_env: str | None) -> str:
    if run_env is None:
        return "unknown: the run recorded no environment.txt"
    run, now = provenance.parse_environment(run_env), provenance.parse_environment(provenance.environment_text())
    full = "lock" in run  # older runs listed seven packages, not all
    keys = sorted(set(run) | set(now)) if full else sorted(run)
    changed = [f"{k} {run.get(k, '(none)')} -> {now.get(k, '(none)')}" for k in keys if run.get(k) != now.get(k)]
    if not changed:
        return f"same: python {now.get('python')}, {len(now) - 2} packages, {provenance.LOCK} {now.get('lock')}"
    more = f" (+{len(changed) - 4} more)" if len(changed) > 4 else ""
    return f"differs: {'; '.join(changed[:4])}{more}"


def machine_line(job: Job) -> str:
    tags = {k.split(".")[-1]: v for k, v in job.record["tags"].items() if k.startswith("fer_exp.machine.")}
    now = machine.describe(job.config.get("precision", "float32"))
    now["onednn"] = tags.get("onednn", now["onednn"])  # the rerun sets oneDNN as the run had it
    changed = [
        f"{k} {tags[k]!r} -> {now[k]!r}"
        for k in ("cpu", "cpu_flags", "cores", "precision")
        if k in tags and tags[k] != now[k]
    ]
    if not tags:
        return f"unknown: the run recorded no machine ({now['cpu']} here)"
    what = f"{now['cpu']}, {now['precision']}, oneDNN {now['onednn']} (as the run)"
    return f"differs: {'; '.join(changed)}" if changed else f"same: {what}"


def seed_line(job: Job) -> str:
    seed, deterministic = job.config.get("seed"), job.config.get("deterministic", False)
    return f"same: {seed}" + (
        ", deterministic ops" if deterministic else "; deterministic=false, so expect within noise at best"
    )


# --- planning: everything checked before any training ------------------------


def job_overrides(tag: str | None) -> list[str]:
    """The run's overrides minus where results go and resume (the rerun must train, not reuse)."""
    keep = [
        o for o in (tag or "").split() if o.split("=", 1)[0].lstrip("+~").split(".", 1)[0] not in ("tracking", "resume")
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
    return Job(
        record, OmegaConf.to_container(OmegaConf.create(text)), overrides, tracking.dataset_digests(record["run_id"])
    )


def make_worktree(job: Job, patch: str | None, stack: contextlib.ExitStack) -> Path:
    """A temporary git worktree at the run's commit with its patch applied (removed on exit)."""
    commit = job.record["tags"].get("mlflow.source.git.commit")
    if not commit:
        raise Refusal(f"run {job.run_id} recorded no git commit: its code cannot be checked out")
    if job.record["tags"].get("fer_exp.git_dirty") == "true" and patch is None:
        raise Refusal(
            f"run {job.run_id} ran on uncommitted changes that were not recorded (it predates source.patch): its code cannot be restored"
        )
    git = ["git", "-C", str(provenance.ROOT)]
    if subprocess.run([*git, "cat-file", "-e", f"{commit}^{{commit}}"], capture_output=True).returncode:
        raise Refusal(
            f"commit {commit} of run {job.run_id} is not in the repository at {provenance.ROOT}: fetch it (git fetch --all) and try again"
        )
    folder = Path(tempfile.mkdtemp(prefix="fer_exp-checkout-")) / "code"
    subprocess.run(
        [*git, "worktree", "add", "--detach", "--quiet", str(folder), commit], check=True, capture_output=True
    )
    stack.callback(lambda: subprocess.run([*git, "worktree", "remove", "--force", str(folder)], capture_output=True))
    if patch:
        applied = subprocess.run(
            ["git", "-C", str(folder), "apply", "--whitespace=nowarn", "-"], input=patch, text=True, capture_output=True
        )
        if applied.returncode:
            raise Refusal(
                f"the patch of run {job.run_id} does not apply on commit {short(commit)}: {applied.stderr.strip()[:500]}"
            )
    return folder


def plan(job: Job, args, stack: contextlib.ExitStack) -> None:
    """Fill job.lines (what differs); raise Refusal when the rerun would not be a reproduction."""
    patch = tracking.artifact_text(job.run_id, tracking.PATCH)
    if args.checkout:
        job.worktree = make_worktree(job, patch, stack)
    today = None if args.checkout else today_config(job.overrides)
    job.lines = [
        ("code", code_line(job, provenance.code_state(), patch, args.checkout)),
        ("config", config_line(job, today, args.checkout)),
        ("data", data_line(job, args.force)),
        ("environment", environment_line(tracking.artifact_text(job.run_id, "environment.txt"))),
        ("machine", machine_line(job)),
        ("seed", seed_line(job)),
    ]
    if today is not None:  # keys added to conf/ since the run take today's defaults; the run's values win
        job.config = OmegaConf.to_container(OmegaConf.merge(today, job.config))


# --- the rerun -----------------------------------------------------------------


def rerun(job: Job, uri: str, experiment: str) -> tuple[str, bool]:
    """Train the job again into a new run tagged fer_exp.reproduces; returns (its id, whether it finished)."""
    tags = {tracking.TAG_REPRODUCES: job.run_id}
    new_id = tracking.create_run(job.record["experiment_id"], job.record["name"], tags)
    onednn = job.record["tags"].get("fer_exp.machine.onednn")
    env = {"MLFLOW_RUN_ID": new_id, **({machine.ONEDNN_ENV: "1" if onednn == "on" else "0"} if onednn else {})}
    out = Path("outputs") / "reproduce" / new_id
    if job.worktree:
        command = [
            sys.executable,
            "-c",
            BOOT,
            str(job.worktree),
            *job.overrides,
            f"tracking.uri='{uri}'",
            f"tracking.experiment={experiment}",
            "resume=false",
            f"hydra.run.dir={out}",
        ]
        ok = subprocess.run(command, env={**os.environ, **env}).returncode == 0
    else:
        os.environ.update(env)  # before TensorFlow loads (oneDNN); MLflow's start_run continues MLFLOW_RUN_ID
        from fer_exp.train import train

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
    return new_id, ok


# --- the verdict -----------------------------------------------------------------


def result_metrics(record: dict) -> list[str]:
    return sorted(k for k in record["metrics"] if not any(t in k for t in TIMING))


def first_divergence(old: dict[str, list[float]], new: dict[str, list[float]], epochs: int) -> str | None:
    """Where two runs' metrics first differ: "epoch 3 val_loss 0.81 vs 0.82"; None when all are equal."""
    keys = sorted(set(old) | set(new), key=lambda k: (len(old.get(k, [])) != epochs, k))  # per-epoch ones first
    for step in range(max([len(v) for v in [*old.values(), *new.values()]] or [0])):
        for k in keys:
            a, b = old.get(k, []), new.get(k, [])
            if step >= len(a) and step >= len(b):
                continue
            va, vb = (a[step] if step < len(a) else None), (b[step] if step < len(b) else None)
            if va != vb:
                where = f"epoch {step + 1} {k}" if len(a) == epochs or len(b) == epochs else f"{k}"
                return f"{where}: {va if va is None else f'{va:.6g}'} vs {vb if vb is None else f'{vb:.6g}'}"
    return None


def tolerance(job: Job, points: float | None) -> tuple[float, str]:
    """(tolerance, why): --tolerance, else the seed spread of this config where repeated seeds exist, else 0.5 points."""
    if points is not None:
        return points / 100, f"{points:g} points (--tolerance)"

    def same_config(r: dict) -> bool:
        return {k: v for k, v in r["params"].items() if k != "seed" and k.split(".", 1)[0] not in NOT_CHOICES} == mine

    mine = {k: v for k, v in job.record["params"].items() if k != "seed" and k.split(".", 1)[0] not in NOT_CHOICES}
    seeds = {}
    for r in tracking.job_records(job.record["experiment_id"]):
        if same_config(r) and METRIC in r["metrics"] and tracking.TAG_REPRODUCES not in r["tags"]:
            seeds.setdefault(r["params"].get("seed"), r["metrics"][METRIC])
    if len(seeds) >= 2:
        std = float(np.std(list(seeds.values()), ddof=1))
        return max(std, 1e-4), f"{100 * std:.2f} points: the std of {METRIC} over {len(seeds)} seeds of this config"
    return DEFAULT_TOLERANCE, f"{100 * DEFAULT_TOLERANCE:g} points (default; this config has no repeated seeds)"


def verdict(job: Job, new_id: str, tol: tuple[float, str]) -> tuple[str, str]:
    """(identical | within noise | differs, the explanation); tags both runs."""
    old, new = tracking.get_record(job.run_id), tracking.get_record(new_id)
    keys = sorted(set(result_metrics(old)) | set(result_metrics(new)))
    epochs = int(old["metrics"].get("epochs_run", 0))
    diverge = first_divergence(tracking.histories(job.run_id, keys), tracking.histories(new_id, keys), epochs)
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
    tracking.tag_run(job.run_id, {tracking.TAG_REPRODUCED: word, tracking.TAG_REPRODUCED_BY: new_id})
    tracking.tag_run(new_id, {tracking.TAG_REPRODUCED: word})
    return word, why


# --- the command -------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m fer_exp.reproduce",
        description=__doc__.split("\n\n")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
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
    if (
        not args.tracking_uri
        and not os.environ.get("MLFLOW_TRACKING_URI")
        and not (Path(args.tracking_dir) / "mlflow.db").is_file()
    ):
        print(
            f"fer_exp.reproduce: no MLflow store at {Path(args.tracking_dir).resolve()}: pass --tracking-dir or --tracking-uri",
            file=sys.stderr,
        )
        return 2
    with contextlib.ExitStack() as stack:
        try:
            with tracking.quick_failures():
                tracking.connect(uri)
                record = tracking.get_record(tracking.resolve_run(args.run))
            require_finished(record)
            jobs = [load_job(r) for r in jobs_of(record, args.jobs)]
            experiment = tracking.experiment_name(record["experiment_id"])
            for job in jobs:
                plan(job, args, stack)
                print(
                    f"\nreproduce run {job.run_id} ({job.record['name']}, {METRIC} {job.record['metrics'].get(METRIC, float('nan')):.4f}):",
                    flush=True,
                )
                print("\n".join(f"  {aspect:<12} {line}" for aspect, line in job.lines), flush=True)
        except (Refusal, DataError) as e:
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
