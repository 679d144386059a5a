"""Compare the jobs of a sweep: a table sorted by a metric, and a PNG logged to the sweep's parent run.

    python -m fer_exp.compare [sweep=<parent run id>] [metric=best_val_accuracy] [out_dir=outputs/compare]
                              [tracking.experiment=fer_exp] [tracking.dir=mlruns | tracking.uri=http://...]

Without sweep=, the latest sweep of the experiment. Jobs still running show the best
value of their per-epoch metric so far. The table shows only the overrides that differ
between jobs.
"""

from __future__ import annotations

import sys
from pathlib import Path

from fer_exp import cli, tracking
from fer_exp.sweeps.results import PER_EPOCH, CompareError, find_sweep, job_rows, publish, table

KEYS = {
    "sweep": (None, "the sweep's parent run id (default: the experiment's latest sweep)"),
    "metric": ("best_val_accuracy", "what the jobs are ranked by (a loss is ranked lowest first)"),
    "out_dir": ("outputs/compare", "where compare.png and compare.txt go, in a folder per sweep"),
    **cli.EXPERIMENT,
    **cli.TRACKING,
}


def compare(sweep: dict, metric: str, out_dir: Path) -> tuple[str, Path, str]:
    """(the table, the PNG path, the MLflow UI link) of a sweep's parent run record (see publish)."""
    jobs = tracking.sweep_jobs(sweep["run_id"], PER_EPOCH.get(metric, metric))
    rows = job_rows(jobs, metric)
    if not rows:
        raise CompareError(f"sweep {sweep['run_id']} has no jobs yet")
    files, link = publish(sweep, jobs, rows, metric, Path(out_dir))
    return table(rows, metric), files[0], link


def main(argv: list[str] | None = None) -> int:
    args = cli.parse(argv, KEYS, __doc__)
    if (uri := cli.store_uri(args)) is None:
        return 2
    try:
        tracking.connect(uri)
        sweep = find_sweep(args.tracking.experiment, args.sweep)
        text, png, link = compare(sweep, args.metric, Path(args.out_dir))
    except (CompareError, tracking.TrackingError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"sweep {sweep['run_id']} ({sweep['name']}, {sweep['status']}), sorted by {args.metric}:\n{text}")
    print(f"plot: {png} (also in the parent run's artifacts)")
    print(f"MLflow UI (make ui): {link}  (charts: add &compareRunsMode=CHART)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
