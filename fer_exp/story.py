"""The tuning story of an experiment as one page: every sweep and run in launch order, what changed,
what beat the best so far, whether that is more than seed noise, and which settings mattered.

    python -m fer_exp.story [metric=best_val_accuracy] [out=outputs/story]
                            [tracking.experiment=fer_exp] [tracking.dir=mlruns | tracking.uri=http://...]

Writes story.html (self-contained: its figures embedded, nothing fetched from the network) and
story.md (its figures beside it) into `out`, prints their paths and logs them to the experiment's
`story` run. The facts are pure functions of run records (tracking.get_record); story_page.py
renders them.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections import Counter
from pathlib import Path

from fer_exp import cli, story_page, tracking
from fer_exp.config import choices
from fer_exp.story_page import Section, Story
from fer_exp.sweeps import results

KEYS = {
    "metric": ("best_val_accuracy", "the score the story follows (a loss: lower is better)"),
    "out": ("outputs/story", "where story.html, story.md and their figures go"),
    **cli.EXPERIMENT,
    **cli.TRACKING,
}
STORY = "story"  # the role (tag fer_exp.role) of the run that holds an experiment's story pages
MIN_IMPORTANCE_RUNS = 10  # fewer comparable runs than this: a main-effects table, no importance


def score(job: dict, metric: str) -> float | None:
    if results.status(job) != "FINISHED":
        return None
    return job["metrics"].get(metric)


def seed_groups(jobs: list[dict], metric: str) -> list[dict]:
    """Configs that ran with two or more seeds: their mean and standard deviation of `metric`."""
    groups: dict[tuple, list[dict]] = {}
    for j in jobs:
        if score(j, metric) is not None:
            groups.setdefault(tuple(sorted(choices(j["params"], ("seed",)).items())), []).append(j)
    out = []
    for members in groups.values():
        values = {m["params"].get("seed"): score(m, metric) for m in members}
        if len(values) >= 2:
            out.append(
                {
                    "label": ",".join(p for p in members[0]["name"].split(",") if not p.startswith("seed="))
                    or "defaults",
                    "mean": statistics.mean(values.values()),
                    "std": statistics.stdev(values.values()),
                    "n": len(values),
                    "jobs": members,
                }
            )
    return out


def main_effects(rows: list[dict]) -> dict[str, dict[str, tuple[float, int]]]:
    """For each setting with two or more values in a sweep: the mean metric per value (scored rows only)."""
    effects = {}
    for key in rows[0]["settings"] if rows else []:
        by_value: dict[str, list[float]] = {}
        for r in rows:
            if r["value"] is not None and r["status"] == "FINISHED":
                by_value.setdefault(str(r["settings"][key]), []).append(r["value"])
        if len(by_value) >= 2:
            effects[key] = {v: (statistics.mean(xs), len(xs)) for v, xs in by_value.items()}
    return effects


def importance(jobs: list[dict], metric: str) -> tuple[dict[str, float] | None, str, object]:
    """(fANOVA importance per param, a sentence on it, the Optuna study of the runs used): over the scored
    runs on the most common data set, rebuilt as trials. None with fewer than MIN_IMPORTANCE_RUNS of them."""
    scored = [j for j in jobs if score(j, metric) is not None]
    if not scored:
        return None, "No run has the metric yet: nothing to weigh.", None
    data = Counter(j["params"].get("data.name") for j in scored).most_common(1)[0][0]
    runs = [j for j in scored if j["params"].get("data.name") == data]
    values = {
        k: {choices(j["params"]).get(k) for j in runs} for k in set().union(*(choices(j["params"]) for j in runs))
    }
    varying = sorted(k for k, v in values.items() if len(v) > 1)
    if len(runs) < MIN_IMPORTANCE_RUNS or not varying:
        why = f"{len(runs)} comparable run(s)" + ("" if varying else ", no setting varies among them")
        return (
            None,
            f"Importance needs about {MIN_IMPORTANCE_RUNS} comparable runs that vary a setting; there are {why}.",
            None,
        )
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    distributions = {}
    for k in varying:
        numbers = [_number(v) for v in values[k]]
        if None not in numbers:
            distributions[k] = optuna.distributions.FloatDistribution(min(numbers), max(numbers))
        else:
            distributions[k] = optuna.distributions.CategoricalDistribution(sorted(map(str, values[k])))
    study = optuna.create_study(direction="minimize" if results.lower_is_better(metric) else "maximize")
    for j in runs:
        params = {
            k: _number(choices(j["params"]).get(k))
            if isinstance(d, optuna.distributions.FloatDistribution)
            else str(choices(j["params"]).get(k))
            for k, d in distributions.items()
        }
        study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions, value=score(j, metric)))
    found = optuna.importance.get_param_importances(
        study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0)
    )
    return dict(found), f"fANOVA importance (Optuna) over {len(runs)} runs on {data}.", study


def _number(v) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def build(records: list[dict], experiment: str, metric: str) -> Story:
    """The story's facts from every run record of an experiment."""
    runs = [
        r for r in records if r["tags"].get(tracking.TAG_ROLE) != STORY and tracking.TAG_REPRODUCES not in r["tags"]
    ]
    parents = {r["run_id"]: r for r in runs if r["tags"].get(tracking.TAG_ROLE) == "sweep"}
    jobs = sorted((r for r in runs if r["run_id"] not in parents), key=lambda r: r["start"])
    scores = [score(j, metric) for j in jobs]
    grouped: dict[str, list[dict]] = {}
    for j in jobs:
        grouped.setdefault(j["tags"].get(tracking.TAG_SWEEP) or j["run_id"], []).append(j)
    sections, best_so_far = [], None
    for key, members in sorted(grouped.items(), key=lambda kv: kv[1][0]["start"]):
        parent = parents.get(key)
        title = f"{parent['name']} (sweep {key})" if parent else f"run {members[0]['name']} ({key})"
        command = (parent or members[0])["tags"].get(tracking.TAG_COMMAND, "")
        rows = results.job_rows(members, metric)
        section = Section(title, parent, members, command, rows, before=best_so_far, effects=main_effects(rows))
        finished = [r for r in rows if r["value"] is not None and r["status"] == "FINISHED"]
        section.best = finished[0] if finished else None
        section_scores = [s for s in (score(j, metric) for j in members) if s is not None]
        if section_scores:
            top = results.best_of(section_scores, metric)
            best_so_far = top if results.better(top, best_so_far, metric) else best_so_far
        sections.append(section)
    noise = seed_groups(jobs, metric)
    found, note, study = importance(jobs, metric)
    spread = max((g["std"] for g in noise), default=None)
    return Story(experiment, metric, jobs, scores, sections, noise, spread, found, note, study)


def main(argv: list[str] | None = None) -> int:
    args = cli.parse(argv, KEYS, __doc__)
    if (uri := cli.store_uri(args)) is None:
        return 2
    start = time.perf_counter()
    try:
        with tracking.quick_failures():
            tracking.connect(uri)
            records = tracking.experiment_runs(args.tracking.experiment)
    except LookupError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except tracking.TrackingError as e:
        print(f"error: {tracking.describe_error(e, uri)}", file=sys.stderr)
        return 2
    story = build(records, args.tracking.experiment, args.metric)
    if not story.jobs:
        print(f"experiment {args.tracking.experiment!r} has no runs yet: the page says so", file=sys.stderr)
    elif not any(s is not None for s in story.scores):
        print(
            f"no run of experiment {args.tracking.experiment!r} has the metric {args.metric!r} yet: the page shows what ran",
            file=sys.stderr,
        )
    files = story_page.write(story, Path(args.out))
    try:
        tracking.log_story(args.tracking.experiment, STORY, files)
    except tracking.TrackingError as e:  # the page is written; the store may be read-only to this user
        print(f"warning: could not log the story to the store: {e}", file=sys.stderr)
    print(
        f"{files[0]}\n{files[1]}\n({len(story.jobs)} runs in {len(story.sections)} sections, {time.perf_counter() - start:.1f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
