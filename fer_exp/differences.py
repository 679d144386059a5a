"""What differs between a recorded run and now, one line per aspect ("same: ..." or "differs: ..."):
code, config, data, teachers (of a distilled run), environment, machine, seed; and between a run and its rerun: the first metric that
diverges, and how far apart their scores may be and still count as noise. Reads today's checkout (git),
configs and data files to compare with; writes nothing."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from omegaconf import OmegaConf

from fer_exp.config import choices, conf_dir, flatten
from fer_exp.data import DataError, data_digests
from fer_exp.tracking import provenance
from fer_exp.tracking.names import METRIC, TAG_GIT_COMMIT, TAG_GIT_DIRTY, TAG_MACHINE, TAG_REPRODUCES, TAG_TEACHERS
from fer_exp.training import machine, teachers

TIMING = ("seconds", "per_s", "gflop", "mfu")  # metric names with these measure speed, not results


def short(text: str | None, n: int = 12) -> str:
    return (text or "-")[:n]


def code_line(tags: dict, now: dict | None, patch: str | None, checkout: bool) -> str:
    """The run's commit and patch (its tags, its source.patch) against `now` (provenance.code_state())."""
    commit, dirty = tags.get(TAG_GIT_COMMIT), tags.get(TAG_GIT_DIRTY) == "true"
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
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            cfg = OmegaConf.to_container(compose(config_name="config", overrides=overrides), resolve=True)
    except (HydraException, ValueError, OSError):
        return None
    cfg.pop("hydra", None)
    cfg["data"] = with_fallback(cfg["data"])
    return cfg


def config_line(config: dict, today: dict | None, checkout: bool) -> str:
    """The run's logged config against what today's conf/ composes from its overrides (today_config)."""
    if checkout:
        return "same: the run's overrides on the run's conf/ (its config hash is checked after)"
    if today is None:
        return "same: the run's logged config is re-run (today's conf/ cannot compose its overrides)"
    run, now = choices(flatten(config)), choices(flatten(today))
    changed = [
        f"{k} {run.get(k, '(none)')!r} -> {now.get(k, '(none)')!r}"
        for k in sorted(set(run) | set(now))
        if run.get(k) != now.get(k)
    ]
    if not changed:
        return "same: today's conf/ composes the run's config"
    more = f" (+{len(changed) - 3} more)" if len(changed) > 3 else ""
    return f"same: the run's logged config is re-run; today's defaults would change {'; '.join(changed[:3])}{more}"


def data_line(config: dict, recorded: dict[str, str], force: bool) -> str:
    """The data digests the run recorded ({dataset name: digest}) against the files found now.
    Raises DataError when they differ (unless `force`) or the data is missing."""
    data = config["data"]
    now, source = data_digests(data, seed=config["seed"])
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
            raise DataError(
                f"{message}. A rerun on other data is not a reproduction; restore the files, or pass --force to re-run anyway"
            )
        return f"differs (--force): {'; '.join(differ)} in {source}"
    if not any(f"{data['name']}-{s}" in recorded for s in now):
        return f"unknown: the run recorded no data digest ({source})"
    return f"same: {', '.join(f'{s} {short(d)}' for s, d in now.items())} ({source})"


def teacher_line(config: dict, run_tags: dict, dst: Path) -> str | None:
    """A distilled run's teachers, found again now, against the model files it recorded (None: not distilled).
    Raises TeacherError, naming the teacher, when one is gone or its model file is not the one the run learnt from."""
    refs = teachers.refs_of(config.get("teacher"))
    if not refs:
        return None
    recorded = {t["ref"]: t["sha256"] for t in json.loads(run_tags.get(TAG_TEACHERS, "[]"))}
    now = teachers.find(refs, config["data"]["classes"], dst)  # raises when one is gone
    for t in now:
        if t.ref in recorded and recorded[t.ref] != t.sha256:
            raise teachers.TeacherError(
                f"teacher={t.ref} ({t.describe()}) is not the model the run learnt from: its model file's SHA-256 was "
                f"{short(recorded[t.ref])}, now {short(t.sha256)}. A rerun with another teacher is not a reproduction"
            )
    return "same: " + "; ".join(
        f"{t.describe()} {short(t.sha256)}" + ("" if t.ref in recorded else " (the run recorded no digest)")
        for t in now
    )


def environment_line(run_env: str | None) -> str:
    """The run's environment.txt against the packages installed now."""
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


def machine_line(run_tags: dict, precision: str) -> str:
    """The CPU, flags, cores, GPUs and precision the run recorded against this machine's."""
    tags = {k.split(".")[-1]: v for k, v in run_tags.items() if k.startswith(f"{TAG_MACHINE}.")}
    now = machine.describe(precision)
    now["onednn"] = tags.get("onednn", now["onednn"])  # the rerun sets oneDNN as the run had it
    changed = [
        f"{k} {tags[k]!r} -> {now[k]!r}"
        for k in ("cpu", "cpu_flags", "cores", "gpu", "precision")
        if k in tags and tags[k] != now[k]
    ]
    if not tags:
        return f"unknown: the run recorded no machine ({now['cpu']} here)"
    what = f"{now['cpu']}, {now['precision']}, oneDNN {now['onednn']} (as the run)"
    return f"differs: {'; '.join(changed)}" if changed else f"same: {what}"


def seed_line(config: dict) -> str:
    seed, deterministic = config.get("seed"), config.get("deterministic", False)
    return f"same: {seed}" + (
        ", deterministic ops" if deterministic else "; deterministic=false, so expect within noise at best"
    )


# --- between a run and its rerun ----------------------------------------------------


def result_metrics(record: dict) -> list[str]:
    """The metrics that are results: not speed (TIMING), not MLflow's system metrics (system/*)."""
    return sorted(k for k in record["metrics"] if not k.startswith("system/") and not any(t in k for t in TIMING))


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


def seed_tolerance(record: dict, others: list[dict], points: float | None) -> tuple[float, str]:
    """(tolerance, why) of "within noise" for a rerun of `record`: `points` when given, else the std of the
    metric over the other FINISHED runs (`others`) of the same config with other seeds, else 0.5 points."""
    if points is not None:
        return points / 100, f"{points:g} points (--tolerance)"
    mine = choices(record["params"], drop=("seed",))
    seeds = {}
    for r in others:
        if choices(r["params"], drop=("seed",)) == mine and METRIC in r["metrics"] and TAG_REPRODUCES not in r["tags"]:
            seeds.setdefault(r["params"].get("seed"), r["metrics"][METRIC])
    if len(seeds) >= 2:
        std = statistics.stdev(seeds.values())
        return max(std, 1e-4), f"{100 * std:.2f} points: the std of {METRIC} over {len(seeds)} seeds of this config"
    return 0.005, "0.5 points (default; this config has no repeated seeds)"
