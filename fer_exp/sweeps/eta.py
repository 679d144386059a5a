"""When a sweep will end: its jobs, counted from the command line, each job's minutes estimated from
this CPU's earlier runs of the same model on the same data (of the same model settings, batch size,
precision and image count where there are such runs), and an ETA as the jobs finish."""

from __future__ import annotations

import itertools
import statistics
import time

from omegaconf import OmegaConf

from fer_exp import tracking
from fer_exp.config import flatten

# besides model.*, the params an epoch's seconds depend on most
SPEED = ("batch_size", "precision", "data.image_size", "data.limit_per_class")


def speed_params(config) -> dict[str, str]:
    """The params of a config (DictConfig) that decide its seconds per epoch, as runs log them."""
    model = flatten(OmegaConf.to_container(config.model, resolve=True), "model.")
    return {k: str(v) for k, v in model.items()} | {k: str(OmegaConf.select(config, k)) for k in SPEED}


def grid(
    overrides: list[str], model: str, epochs: int, n_trials: int | None = None, speed: dict | None = None
) -> list[dict]:
    """The jobs a sweep's overrides make, as {"model", "epochs", "same"} in launch order: what their minutes
    depend on most, "same" the `speed` params (speed_params of the sweep's config) that no sweep override
    changes (none when it sweeps experiment=). A search (n_trials) runs that many jobs of the configured
    model and epochs."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    axes, swept = [], set()
    for o in OverridesParser.create().parse_overrides(list(overrides)):
        values = list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.input_line.partition("=")[2]]
        axes.append([(o.key_or_group, v) for v in values])
        swept |= {o.key_or_group} if o.is_sweep_override() else set()
    same = {
        k: v
        for k, v in (speed or {}).items()
        if "experiment" not in swept and not any(k == s or k.startswith(s + ".") for s in swept)
    }
    if n_trials is not None:
        return [{"model": model, "epochs": epochs, "same": same}] * n_trials
    jobs = []
    for combination in itertools.product(*axes):
        chosen = dict(combination)
        jobs.append({"model": chosen.get("model", model), "epochs": int(chosen.get("epochs", epochs)), "same": same})
    return jobs


def alike_params(params: dict, same: dict) -> bool:
    """Whether a run's params have the `same` values, and no other model settings when `same` has any."""

    def model_keys(d):
        return {k for k in d if k.startswith("model.")}

    if model_keys(same) and model_keys(params) != model_keys(same):
        return False
    return all(params.get(k) == v for k, v in same.items())


def estimate(jobs: list[dict], cpu: str, data_name: str) -> tuple[list[float | None], str]:
    """(minutes per job, None where this CPU never ran that model on that data; where the figures come from):
    the median seconds per epoch of the FINISHED runs in the store, times the job's epochs. The runs whose
    params match the job's "same" count alone when there are any."""
    earlier = {m: tracking.epoch_seconds(cpu, m, data_name) for m in {j["model"] for j in jobs}}
    minutes, used = [], {}
    for j in jobs:
        runs = earlier[j["model"]]
        alike = [s for s, params in runs if alike_params(params, j.get("same", {}))]
        seconds = alike or [s for s, _ in runs]
        minutes.append(statistics.median(seconds) * j["epochs"] / 60 if seconds else None)
        if seconds:
            used[j["model"]] = f"{len(seconds)} run(s)" + ("" if alike else " of other settings")
    seen = ", ".join(f"{m}: {n}" for m, n in sorted(used.items()))
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
