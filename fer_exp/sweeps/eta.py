"""When a sweep will end: its jobs, counted from the command line, each job's minutes estimated from
this CPU's earlier runs of the same model on the same data, and an ETA as the jobs finish."""

from __future__ import annotations

import itertools
import statistics
import time

from fer_exp import tracking


def grid(overrides: list[str], model: str, epochs: int, n_trials: int | None = None) -> list[dict]:
    """The jobs a sweep's overrides make, as {"model", "epochs"} (what their minutes depend on most), in
    launch order; a search (n_trials) runs that many jobs of the configured model and epochs."""
    if n_trials is not None:
        return [{"model": model, "epochs": epochs}] * n_trials
    from hydra.core.override_parser.overrides_parser import OverridesParser

    axes = []
    for o in OverridesParser.create().parse_overrides(list(overrides)):
        values = list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.input_line.partition("=")[2]]
        axes.append([(o.key_or_group, v) for v in values])
    jobs = []
    for combination in itertools.product(*axes):
        chosen = dict(combination)
        jobs.append({"model": chosen.get("model", model), "epochs": int(chosen.get("epochs", epochs))})
    return jobs


def estimate(jobs: list[dict], cpu: str, data_name: str) -> tuple[list[float | None], str]:
    """(minutes per job, None where this CPU never ran that model on that data; where the figures come from):
    the median seconds per epoch of the FINISHED runs in the store, times the job's epochs."""
    per_epoch = {m: tracking.epoch_seconds(cpu, m, data_name) for m in {j["model"] for j in jobs}}
    minutes = [
        statistics.median(per_epoch[j["model"]]) * j["epochs"] / 60 if per_epoch[j["model"]] else None for j in jobs
    ]
    seen = ", ".join(f"{m}: {len(s)} run(s)" for m, s in sorted(per_epoch.items()) if s)
    source = f"from earlier runs on this CPU ({cpu}) of data {data_name}: {seen}" if seen else "no earlier run to go by"
    return minutes, source


def duration(minutes: float) -> str:
    return "under a minute" if minutes < 1 else f"{minutes:.0f} minutes"


class Progress:
    """A sweep's jobs as they finish: 'job k of N done, ETA hh:mm'."""

    def __init__(self, estimates: list[float | None]):
        self.estimates, self.done, self.start = estimates, 0, time.time()

    def plan(self, source: str) -> str:
        known = [m for m in self.estimates if m is not None]
        if not known:
            return f"{len(self.estimates)} jobs ({source}: no time estimate)"
        unknown = len(self.estimates) - len(known)
        rest = f", plus {unknown} job(s) without an estimate" if unknown else ""
        return f"{len(self.estimates)} jobs, about {duration(sum(known))}{rest} (estimated {source})"

    def job_done(self) -> str:
        """The line to print when the next job has finished."""
        self.done += 1
        elapsed = (time.time() - self.start) / 60
        left = self.estimates[self.done :]
        done = self.estimates[: self.done]
        if all(m is not None for m in self.estimates) and sum(done) > 0:
            to_go = sum(left) * elapsed / sum(done)  # the estimates, scaled by how this sweep has gone so far
        else:
            to_go = elapsed / self.done * len(left)
        end = time.strftime("%H:%M", time.localtime(time.time() + 60 * to_go))
        return f"job {self.done} of {len(self.estimates)} done, ETA {end} ({duration(to_go)} to go)"
