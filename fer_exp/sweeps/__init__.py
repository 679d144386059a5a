"""Sweeps: a multirun's lifecycle, its results, and its Optuna study on both sides.

lifecycle  SweepRun (Hydra callback): the parent run, the summary, the best job registered
results    the jobs as rows best first, a table, a plot, the MLflow UI view, the cost front
eta        how many jobs, about how many minutes, and the ETA as they finish
study      the driver's side: the study database, pruners, plots
trial      the job's side: its trial, reported every epoch, told how it ended
"""

from fer_exp import lazy_exports

__getattr__, __all__ = lazy_exports(
    __name__,
    {
        "SweepRun": "lifecycle",
        **dict.fromkeys(["CompareError", "find_sweep", "job_rows", "job_overrides", "table"], "results"),
    },
)
