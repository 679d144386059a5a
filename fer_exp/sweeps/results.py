"""A sweep's results: its jobs as rows best first (the settings that differ, status, score, best epoch,
minutes), as a table and a plot, and its MLflow UI view. Pure functions of run records
(tracking.get_record), but for publish, which logs the comparison to the sweep's parent run."""

from __future__ import annotations

import re
import time
from pathlib import Path

from fer_exp import tracking
from fer_exp.config import is_choice, override_values

# A summary metric and the per-epoch metric it summarises (what running jobs have so far).
PER_EPOCH = {"best_val_accuracy": "val_accuracy", "val_accuracy_tta": "val_accuracy"}


class CompareError(Exception):
    """No such sweep or experiment: the message says what to pass instead."""


def job_overrides(job: dict) -> dict[str, str]:
    """{key: value} of a job record's overrides tag, or of its run name ('model=deep,lr=0.001') without one."""
    if tag := job["tags"].get(tracking.TAG_OVERRIDES):
        return override_values(tracking.decode_overrides(tag))
    return dict(item.split("=", 1) for item in re.split(r",(?=[\w.]+=)", job["name"]) if "=" in item)


def lower_is_better(metric: str) -> bool:
    """A metric's direction, decided here only: losses are minimised, every other metric maximised."""
    return "loss" in metric


def best_of(values, metric: str):
    """The best of `values` of `metric` (see lower_is_better)."""
    return (min if lower_is_better(metric) else max)(values)


def better(value: float, than: float | None, metric: str) -> bool:
    """Whether `value` beats `than` (None: nothing to beat)."""
    return than is None or (value < than if lower_is_better(metric) else value > than)


def best_first(records: list[dict], metric: str) -> list[dict]:
    """Run records that have `metric`, sorted best first."""
    sign = 1 if lower_is_better(metric) else -1
    return sorted(records, key=lambda r: sign * r["metrics"][metric])


def status(job: dict) -> str:
    """A job record's status as we show it: MLflow's (FINISHED, FAILED, KILLED, RUNNING), or PRUNED for
    a FINISHED job that a pruner stopped early (tag fer_exp.stop_reason=pruned): not comparable."""
    if job["status"] == "FINISHED" and job["tags"].get(tracking.TAG_STOP) == "pruned":
        return "PRUNED"
    return job["status"]


def training_cost(job: dict) -> tuple[float | None, float | None]:
    """(training minutes, PFLOP) of a job record: its fit time (plus, distilled, its teachers' pass over
    the training images), and the training FLOPs it measured per image times the images and epochs it
    trained (None where a run did not record them)."""
    m = job["metrics"]
    minutes = (m["train_seconds"] + m.get("teacher_seconds", 0.0)) / 60 if "train_seconds" in m else None
    needed = ("train_gflop_per_image", "data_train_images", "epochs_run")
    pflop = m[needed[0]] * m[needed[1]] * m[needed[2]] / 1e6 if all(k in m for k in needed) else None
    return minutes, pflop


def pareto_front(points: list[tuple[float | None, float | None]], metric: str) -> list[bool]:
    """For (score, cost) points: whether each is on the front, i.e. no other point has a score at least as
    good for a cost at most as high, one of them strictly better. A point without both is not on it."""
    sign = -1 if lower_is_better(metric) else 1
    known = [(sign * s, c) for s, c in points if s is not None and c is not None]

    def dominated(s: float, c: float) -> bool:
        return any(s2 >= s and c2 <= c and (s2 > s or c2 < c) for s2, c2 in known)

    return [s is not None and c is not None and not dominated(sign * s, c) for s, c in points]


def job_rows(jobs: list[dict], metric: str) -> list[dict]:
    """One dict per job record (with the per-epoch `history` of PER_EPOCH[metric]): overrides, status,
    the metric (or its best epoch so far), best epoch, params, minutes, training minutes and PFLOP,
    whether it is on the cost front (pareto_front: FINISHED jobs, score against training minutes);
    best first, with `settings` and `label` naming only the overrides that differ between jobs."""
    rows = []
    for j in jobs:
        history = j.get("history") or []
        end = j["end"] or time.time() * 1000
        rows.append(
            {
                "run_id": j["run_id"],
                "overrides": job_overrides(j),
                "status": status(j),
                "value": j["metrics"].get(metric, best_of(history, metric) if history else None),
                "tta": j["metrics"].get("val_accuracy_tta"),
                "best_epoch": f"{history.index(best_of(history, metric)) + 1}/{len(history)}" if history else "-",
                "params": j["metrics"].get("params"),
                "minutes": (end - j["start"]) / 60000,
                **dict(zip(("train_minutes", "pflop"), training_cost(j))),
                "distilled_from": j["tags"].get(tracking.TAG_DISTILLED_FROM),
            }
        )
    finished = [r["value"] if r["status"] == "FINISHED" else None for r in rows]
    for row, front in zip(rows, pareto_front(list(zip(finished, (r["train_minutes"] for r in rows))), metric)):
        row["front"] = front
    # best first; pruned jobs (stopped early, not comparable) after the others
    rows.sort(
        key=lambda row: (
            row["value"] is None,
            row["status"] == "PRUNED",
            (row["value"] or 0) * (1 if lower_is_better(metric) else -1),
        )
    )
    keys = list(dict.fromkeys(k for row in rows for k in row["overrides"] if is_choice(f"{k}=")))  # command-line order
    differing = [k for k in keys if len({row["overrides"].get(k) for row in rows}) > 1]
    for row in rows:
        row["settings"] = {k: row["overrides"].get(k, "-") for k in differing}
        row["label"] = ",".join(f"{k}={v}" for k, v in row["settings"].items()) or row["run_id"][:8]
    return rows


def ui_view(parent: str, jobs: list[dict], rows: list[dict], metric: str) -> dict:
    """The MLflow UI's view of a sweep (see tracking.share_view): filtered to the sweep's own runs (its
    parent, its jobs, its ensembles: tag fer_exp.sweep_id), the parent row expanded so that every job is
    listed, best first, with the metric, TTA, epochs, seconds and the params that differ as columns."""
    params = set().union(*(j["params"] for j in jobs))
    settings = [
        k if k in params else f"{k}.name" for k in (rows[0]["settings"] if rows else {})
    ]  # model=deep -> model.name
    columns = [f"metrics.`{m}`" for m in dict.fromkeys((metric, "val_accuracy_tta", "epochs_run", "train_seconds"))]
    columns += [f"params.`{k}`" for k in settings if k in params]
    return {
        "searchFilter": f"tags.`{tracking.TAG_SWEEP}` = '{parent}'",
        "orderByKey": f"metrics.`{metric}`",
        "orderByAsc": lower_is_better(metric),
        "selectedColumns": columns,
        "runsExpanded": {parent: True},
    }


def table(rows: list[dict], metric: str) -> str:
    """Plain-text table, best first; `front` marks the jobs no other beats at a lower training cost."""
    lines = [("#", "job", "status", metric, "tta", "best epoch", "params", "minutes", "train min", "PFLOP", "front")]
    for i, r in enumerate(rows, 1):
        lines.append(
            (
                str(i),
                r["label"],
                r["status"],
                "-" if r["value"] is None else f"{r['value']:.4f}",
                "-" if r["tta"] is None else f"{r['tta']:.4f}",
                r["best_epoch"],
                "-" if r["params"] is None else f"{int(r['params']):,}",
                f"{r['minutes']:.1f}",
                "-" if r["train_minutes"] is None else f"{r['train_minutes']:.1f}",
                "-" if r["pflop"] is None else f"{r['pflop']:.3g}",
                "*" if r["front"] else "",
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    notes = [f"#{i} distilled from {r['distilled_from']}" for i, r in enumerate(rows, 1) if r.get("distilled_from")]
    return "\n".join(["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines] + notes)


def save(rows: list[dict], metric: str, out: Path, title: str = "") -> list[Path]:
    """Write compare.png, compare.txt (the table) and cost.png (score against training minutes, the
    front marked) into `out`; returns their paths."""
    from fer_exp import plots

    out.mkdir(parents=True, exist_ok=True)
    png, txt, cost = out / "compare.png", out / "compare.txt", out / "cost.png"
    plots.save(plots.sweep_comparison(rows, metric, title=title), png)
    txt.write_text(table(rows, metric) + "\n")
    points = [(r["train_minutes"], r["value"] if r["status"] == "FINISHED" else None) for r in rows]
    plots.save(plots.cost_front(points, [r["label"] for r in rows], [r["front"] for r in rows], metric, title), cost)
    return [png, txt, cost]


def publish(
    sweep: dict, jobs: list[dict], rows: list[dict], metric: str, out_dir: Path | None
) -> tuple[list[Path], str]:
    """Save a sweep's comparison (compare.png, compare.txt) into out_dir/<parent id> and log it to the
    parent run (with an out_dir), and (re)write its MLflow UI view; returns (the files, the view's link)."""
    files = []
    if out_dir is not None:
        files = save(rows, metric, Path(out_dir) / sweep["run_id"], title=f"{sweep['name']} ({len(rows)} jobs)")
        tracking.log_files(files, run_id=sweep["run_id"])
    return files, tracking.share_view(sweep["run_id"], ui_view(sweep["run_id"], jobs, rows, metric))


def find_sweep(experiment: str, sweep_id: str | None) -> dict:
    """The sweep's parent run record: the one named, else the newest in the experiment."""
    if sweep_id:
        run = tracking.get_record(sweep_id)
        if run["tags"].get(tracking.TAG_ROLE) != "sweep":
            raise CompareError(
                f"run {sweep_id} is not a sweep's parent run (tag {tracking.TAG_ROLE}=sweep); pass sweep=<parent run id>"
            )
        return run
    try:
        run = tracking.latest_sweep(experiment)
    except LookupError as e:
        raise CompareError(f"{e}; pass experiment= or tracking_dir=/tracking_uri=") from None
    if run is None:
        raise CompareError(f"no sweep in experiment {experiment!r}; run one with `python -m fer_exp.run -m ...`")
    return run
