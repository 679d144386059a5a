"""The best model a sweep can give: average the class probabilities of its top runs.

    python -m fer_exp.ensemble [sweep=<parent run id>] [top_k=5] [metric=best_val_accuracy]
        [runs=<run id>,<run id>,... | runs=[<run id>,...]] [select=all | greedy] [tta=10]
        [tracking.experiment=fer_exp] [tracking.dir=mlruns | tracking.uri=http://...]

Takes the sweep's top_k FINISHED jobs (not pruned) by `metric`, builds one Keras model whose
output is the mean of theirs, evaluates it on the members' validation split like a single run
(single view and TTA, per-class report, confusion matrix) and logs it as a child run of the sweep
(`ensemble top-K`, tag fer_exp.members) with model.h5, classes.json and the MLflow model, so
that evaluate, predict, `make serve` and the registry take it like any model.

runs= averages the FINISHED job runs named instead (single runs, or jobs of different sweeps):
the ensemble is then a run of their experiment, `ensemble of N runs`, nested under no sweep.

select=all (the default) averages all top_k members: nothing is fitted on validation, so its
validation accuracy is an honest estimate. select=greedy adds members one at a time (with
repeats, Caruana et al.) while validation accuracy improves: often better, but chosen on the
very split it is scored on, so its figure is optimistic.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from fer_exp import cli, tracking
from fer_exp.sweeps import results

log = logging.getLogger("fer_exp.ensemble")
KEYS = {
    "sweep": (None, "the sweep's parent run id (default: the experiment's latest sweep)"),
    "top_k": (5, "how many of the sweep's best FINISHED jobs to average"),
    "metric": ("best_val_accuracy", "what the jobs are ranked by"),
    "select": ("all", "all: average the top_k; greedy: add members while validation improves (optimistic)"),
    "runs": (None, "run ids to average instead of a sweep's best: runs=<a>,<b> or runs=[<a>,<b>]"),
    "tta": (10, "test-time views (1..10) of the ensemble's evaluation"),
    **cli.EXPERIMENT,
    **cli.TRACKING,
}


class EnsembleError(ValueError):
    """Members that cannot be combined, or no members: the message says why."""


def top_members(jobs: list[dict], metric: str, top_k: int) -> list[dict]:
    """The top_k FINISHED, unpruned jobs with `metric`, best first."""
    done = [
        j
        for j in jobs
        if results.status(j) == "FINISHED" and metric in j["metrics"] and j["tags"].get(tracking.TAG_ROLE) == "job"
    ]
    if len(done) < 2:
        raise EnsembleError(f"the sweep has {len(done)} FINISHED job(s) with {metric}; an ensemble needs at least 2")
    return results.best_first(done, metric)[:top_k]


def run_ids(value) -> list[str]:
    """runs=<a>,<b> or Hydra's list form runs=[<a>,<b>] (the form fer_exp.run's teacher= takes)."""
    items = list(value) if OmegaConf.is_list(value) else str(value).split(",")
    return [str(i).strip() for i in items if str(i).strip()]


def named_members(ids: list[str], metric: str) -> list[dict]:
    """The runs named by id, which must be FINISHED jobs with `metric`, best first."""
    if len(set(ids)) < 2:
        raise EnsembleError(f"runs={','.join(ids)}: an ensemble needs at least 2 different run ids")
    members = [tracking.get_record(i) for i in dict.fromkeys(ids)]
    for m in members:
        if m["status"] != "FINISHED" or metric not in m["metrics"] or m["tags"].get(tracking.TAG_ROLE) != "job":
            raise EnsembleError(
                f"run {m['run_id']} ({m['name']}): status {m['status']}, role {m['tags'].get(tracking.TAG_ROLE)}; "
                f"members must be FINISHED job runs with {metric}"
            )
    return results.best_first(members, metric)


def check_compatible(models: list, classes: list[list[str]], ids: list[str]) -> None:
    """Members must take the same input and name the same classes in the same order."""
    shapes = {tuple(m.input_shape[1:]) for m in models}
    if len(shapes) > 1:
        raise EnsembleError(
            f"members take different inputs {sorted(shapes)}: runs {ids}; ensemble runs of one data.image_size"
        )
    if any(c != classes[0] for c in classes):
        raise EnsembleError(f"members were trained on different class lists {classes}: runs {ids}")


def greedy(probs: np.ndarray, labels: np.ndarray, rounds: int = 10) -> list[int]:
    """Member indices (with repeats) chosen by forward selection on validation accuracy, best member first."""
    chosen = [int(np.argmax([(p.argmax(1) == labels).mean() for p in probs]))]
    for _ in range(rounds):
        current = (probs[chosen].mean(0).argmax(1) == labels).mean()
        scores = [(probs[chosen + [i]].mean(0).argmax(1) == labels).mean() for i in range(len(probs))]
        if max(scores) <= current:
            break
        chosen.append(int(np.argmax(scores)))
    return chosen


def average(models: list, picks: list[int]):
    """One Keras model: the mean of the picked members' outputs (a member picked twice counts twice)."""
    import keras

    inputs = keras.Input(models[0].input_shape[1:])
    # each member under a name of its own (members of one architecture share theirs)
    renamed = {i: keras.Model(models[i].inputs, models[i].output, name=f"member_{i}") for i in set(picks)}
    outputs = [renamed[i](inputs) for i in picks]
    return keras.Model(
        inputs, keras.layers.Average(dtype="float32")(outputs) if len(outputs) > 1 else outputs[0], name="ensemble"
    )


def validation_split(member: dict):
    """The validation split the member was scored on, from its logged config."""
    from fer_exp.data import load_data, with_fallback

    config = OmegaConf.to_container(OmegaConf.create(tracking.load_text(member["run_id"], "config.yaml")), resolve=True)
    splits, _ = load_data(with_fallback(config["data"]), seed=config["seed"])
    return splits["validation"], config


def build(members: list[dict], select: str) -> tuple:
    """(the ensemble model, its classes, the member ids it averages (with repeats), validation split, member config)."""
    from fer_exp.models import evaluate, load_model

    ids = [m["run_id"] for m in members]
    loaded = []
    for k, i in enumerate(ids, 1):
        log.info("loading member %d of %d: run %s (%s)", k, len(ids), i, members[k - 1]["name"])
        loaded.append(load_model(f"runs:/{i}/model"))
    models, classes = [m for m, _ in loaded], [c for _, c in loaded]
    check_compatible(models, classes, ids)
    val, config = validation_split(members[0])
    picks = list(range(len(models)))
    if select == "greedy":
        log.info("greedy selection: predicting %d faces with each of %d members", len(val), len(models))
        probs = np.stack([evaluate(m, val.images, None, classes[0]).single for m in models])
        picks = greedy(probs, val.labels)
    elif select != "all":
        raise EnsembleError(f"select={select!r}: use all or greedy")
    return average(models, picks), classes[0], [ids[i] for i in picks], val, config


def log_ensemble(members: list[dict], sweep_id: str | None, metric: str, select: str, top_k: int, tta: int) -> dict:
    """Build, evaluate and log the ensemble of `members` (best first) as a child run of the sweep,
    else as a run of the members' experiment; returns its record."""
    from fer_exp.config import config_hash
    from fer_exp.models import log_evaluation

    model, classes, picked, val, member_config = build(members, select)
    name = (f"ensemble top-{len(members)}" if sweep_id else f"ensemble of {len(members)} runs") + (
        " greedy" if select == "greedy" else ""
    )
    if not sweep_id:
        tracking.use_experiment_of(members[0]["run_id"])
    config = {
        "ensemble": {"sweep": sweep_id, "top_k": top_k, "metric": metric, "select": select, "members": picked},
        "data": member_config["data"],
        "tta_views": tta,
    }
    tags = {
        tracking.TAG_ROLE: "ensemble",
        tracking.TAG_MEMBERS: ",".join(dict.fromkeys(picked)),
        tracking.TAG_OVERRIDES: tracking.encode_overrides([name.replace("ensemble ", "ensemble=").replace(" ", "-")]),
    }
    params = {
        "data.register_as": member_config["data"].get("register_as"),
        "data.name": member_config["data"]["name"],
        "ensemble.top_k": top_k,
        "ensemble.select": select,
        "ensemble.size": len(picked),
    }
    with (
        tempfile.TemporaryDirectory() as tmp,
        tracking.start_run(
            name, config_hash(config), params, OmegaConf.to_yaml(config), tags, parent=sweep_id
        ) as run_id,
    ):
        model.save(Path(tmp) / "model.h5")
        log.info("evaluating the ensemble: %d views of %d validation faces", tta, len(val))
        evaluation = log_evaluation(model, Path(tmp) / "model.h5", val, classes, tta, name, verbose=cli.progress())
        best = members[0]["metrics"][metric]
        tracking.log_metrics(
            {
                "best_val_accuracy": evaluation.accuracy,
                "val_accuracy_tta": evaluation.tta_accuracy,
                "params": model.count_params(),
                "best_member_val_accuracy": best,
            }
        )
    log.info(
        "%s: validation accuracy %.4f single view, %.4f with %d-view TTA; best member %.4f\n%s",
        name,
        evaluation.accuracy,
        evaluation.tta_accuracy,
        tta,
        best,
        evaluation.text,
    )
    return tracking.get_record(run_id)


def main(argv: list[str] | None = None) -> int:
    args = cli.parse(argv, KEYS, __doc__)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    try:
        tracking.connect(tracking.resolve_uri(args.tracking.uri, args.tracking.dir))
        if args.runs and args.sweep:
            raise EnsembleError("pass sweep= (its top_k jobs) or runs= (these runs), not both")
        if args.runs:
            parent, members = (
                None,
                named_members(run_ids(args.runs), args.metric),
            )
        else:
            parent = results.find_sweep(args.tracking.experiment, args.sweep)["run_id"]
            members = top_members(tracking.sweep_jobs(parent), args.metric, int(args.top_k))
        run = log_ensemble(
            members, parent, args.metric, args.select, int(args.top_k) if parent else len(members), int(args.tta)
        )
    except (results.CompareError, EnsembleError, tracking.TrackingError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    m = run["metrics"]
    print(f"{run['name']}{f' of sweep {parent}' if parent else ''}: run {run['run_id']} (runs:/{run['run_id']}/model)")
    print(f"members: {run['tags'][tracking.TAG_MEMBERS]}")
    print(
        f"validation accuracy {m['best_val_accuracy']:.4f} single view, {m['val_accuracy_tta']:.4f} TTA; "
        f"best member {m['best_member_val_accuracy']:.4f}"
    )
    try:
        if note := tracking.register_champion(run):
            print(note)
    except tracking.TrackingError as e:
        log.warning("could not register the ensemble: %s", e)
    return 0


if __name__ == "__main__":
    os.environ.pop(tracking.PARENT_ENV, None)  # nest under the sweep named, never under one this shell is in
    sys.exit(main())
