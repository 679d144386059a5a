"""Compare the jobs of a sweep: a table sorted by a metric, and a PNG logged to the sweep's parent run.

    python -m fer_exp.compare [sweep=<parent run id>] [experiment=fer_exp] [metric=best_val_accuracy]
                              [tracking_dir=mlruns | tracking_uri=http://...] [out_dir=outputs/compare]

Without sweep=, the latest sweep of the experiment. Jobs still running show the best
value of their per-epoch metric so far. The table shows only the overrides that differ
between jobs.
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from omegaconf import OmegaConf  # noqa: E402

DEFAULTS = {"sweep": None, "experiment": "fer_exp", "metric": "best_val_accuracy", "tracking_dir": "mlruns", "tracking_uri": None, "out_dir": "outputs/compare"}
# A summary metric and the per-epoch metric it summarises (what running jobs have so far).
PER_EPOCH = {"best_val_accuracy": "val_accuracy", "val_accuracy_tta": "val_accuracy"}


class CompareError(Exception):
    """No such sweep or experiment: the message says what to pass instead."""


def find_sweep(client, experiment: str, sweep_id: str | None):
    """The sweep's parent run: the one named, else the newest in the experiment."""
    from fer_exp.tracking import TAG_ROLE

    if sweep_id:
        run = client.get_run(sweep_id)
        if run.data.tags.get(TAG_ROLE) != "sweep":
            raise CompareError(f"run {sweep_id} is not a sweep's parent run (tag {TAG_ROLE}=sweep); pass sweep=<parent run id>")
        return run
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise CompareError(f"no experiment {experiment!r} in this store; pass experiment= or tracking_dir=/tracking_uri=")
    runs = client.search_runs([exp.experiment_id], f"tags.`{TAG_ROLE}` = 'sweep'", order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        raise CompareError(f"no sweep in experiment {experiment!r}; run one with `python -m fer_exp.run -m ...`")
    return runs[0]


def parse_overrides(text: str) -> dict[str, str]:
    """'model=deep lr=0.001' (the overrides tag) or 'model=deep,lr=0.001' (a job's run name) -> a dict."""
    return dict(item.split("=", 1) for item in re.split(r"\s+|,(?=[\w.]+=)", text) if "=" in item)


def job_rows(client, runs: list, metric: str) -> list[dict]:
    """One dict per job: overrides, status, the metric (or its best epoch so far), best epoch, params, minutes."""
    lower_is_better = "loss" in metric
    pick = min if lower_is_better else max
    rows = []
    for r in runs:
        per_epoch = PER_EPOCH.get(metric, metric)
        history = [m.value for m in sorted(client.get_metric_history(r.info.run_id, per_epoch), key=lambda m: m.step)]
        value = r.data.metrics.get(metric, pick(history) if history else None)
        end = r.info.end_time or time.time() * 1000
        rows.append({
            "run_id": r.info.run_id, "overrides": parse_overrides(r.data.tags.get("fer_exp.overrides") or r.info.run_name or ""), "status": r.info.status,
            "value": value, "tta": r.data.metrics.get("val_accuracy_tta"),
            "best_epoch": f"{history.index(pick(history)) + 1}/{len(history)}" if history else "-",
            "params": r.data.metrics.get("params"), "minutes": (end - r.info.start_time) / 60000,
        })
    rows.sort(key=lambda row: (row["value"] is None, (row["value"] or 0) * (1 if lower_is_better else -1)))
    keys = list(dict.fromkeys(k for row in rows for k in row["overrides"]))  # command-line order
    differing = [k for k in keys if len({row["overrides"].get(k) for row in rows}) > 1]
    for row in rows:
        row["settings"] = {k: row["overrides"].get(k, "-") for k in differing}
        row["label"] = ",".join(f"{k}={v}" for k, v in row["settings"].items()) or row["run_id"][:8]
    return rows


def table(rows: list[dict], metric: str) -> str:
    """Plain-text table, best first."""
    lines = [("#", "job", "status", metric, "tta", "best epoch", "params", "minutes")]
    for i, r in enumerate(rows, 1):
        lines.append((
            str(i), r["label"], r["status"], "-" if r["value"] is None else f"{r['value']:.4f}", "-" if r["tta"] is None else f"{r['tta']:.4f}",
            r["best_epoch"], "-" if r["params"] is None else f"{int(r['params']):,}", f"{r['minutes']:.1f}",
        ))
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)


def save(client, sweep, rows: list[dict], metric: str, out_dir: Path) -> Path:
    """Write the table and the PNG to out_dir/<parent run id>/ and log both to the parent run."""
    from fer_exp import plots

    out = Path(out_dir) / sweep.info.run_id
    out.mkdir(parents=True, exist_ok=True)
    png = out / "compare.png"
    plots.save(plots.sweep_comparison(rows, metric, title=f"{sweep.info.run_name} ({len(rows)} jobs)"), png)
    (out / "compare.txt").write_text(table(rows, metric) + "\n")
    client.log_artifact(sweep.info.run_id, str(png))
    client.log_artifact(sweep.info.run_id, str(out / "compare.txt"))
    return png


def compare(client, sweep, metric: str, out_dir: Path) -> tuple[str, Path]:
    """(the table, the PNG path); the PNG and the table are also logged to the parent run."""
    from fer_exp.tracking import child_runs

    rows = job_rows(client, child_runs(sweep.info.run_id), metric)
    if not rows:
        raise CompareError(f"sweep {sweep.info.run_id} has no jobs yet")
    return table(rows, metric), save(client, sweep, rows, metric, out_dir)


def main(argv: list[str] | None = None) -> int:
    args = OmegaConf.merge(DEFAULTS, OmegaConf.from_dotlist(argv if argv is not None else sys.argv[1:]))
    if unknown := sorted(set(args) - set(DEFAULTS)):
        print(f"{__doc__}\nunknown option(s): {unknown}", file=sys.stderr)
        return 2
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from fer_exp.tracking import store_uris

    uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or store_uris(args.tracking_dir)[0]
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        print(f"error: no MLflow store at {uri[len('sqlite:///'):]}; run a sweep first or pass tracking_dir=", file=sys.stderr)
        return 2
    mlflow.set_tracking_uri(uri)
    client = MlflowClient()
    try:
        sweep = find_sweep(client, args.experiment, args.sweep)
        text, png = compare(client, sweep, args.metric, Path(args.out_dir))
    except (CompareError, MlflowException) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"sweep {sweep.info.run_id} ({sweep.info.run_name}, {sweep.info.status}), sorted by {args.metric}:\n{text}")
    print(f"plot: {png} (also in the parent run's artifacts)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
