"""train(cfg): one training job, from a resolved Hydra config to a recorded MLflow run."""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf
from omegaconf import DictConfig, OmegaConf

from fer_exp import tracking
from fer_exp.config import config_hash, flatten, validate
from fer_exp.data import Split, build_augmenter, class_weights, count_table, load_data, make_dataset, with_fallback
from fer_exp.models import log_evaluation, portable, whiten
from fer_exp.sweeps.trial import tell_reused, trial_for
from fer_exp.training import machine, teachers
from fer_exp.training.callbacks import (
    DROP_HDF5_NOTICE,
    EpochCheckpoint,
    EpochLogger,
    StopOnSignal,
    TimeBudget,
    fit_verbosity,
    speed_meter,
)
from fer_exp.training.compiled import compile_model

log = logging.getLogger(__name__)


def log_data(splits: dict[str, Split], source: str, name: str, classes: list[str]) -> None:
    """Print and record the class counts, the data set digests and what was skipped."""
    table = count_table(splits, classes)
    log.info("data from %s:\n%s", source, table)
    tracking.log_text(table, "data/class_counts.txt")
    tracking.log_dict(
        {n: dict(zip(classes, s.counts(len(classes)).tolist())) for n, s in splits.items()}, "data/class_counts.json"
    )
    for split_name, split in splits.items():
        tracking.log_dataset(
            f"{name}-{split_name}", source, split.digest, "training" if split_name == "train" else "validation"
        )
        stats = {f"data_{split_name}_{k}": v for k, v in split.stats.items()}
        tracking.log_metrics(
            {f"data_{split_name}_images": len(split), f"data_{split_name}_skipped": len(split.skipped), **stats}
        )
        if split.skipped:
            tracking.log_text(
                "\n".join(f"{src}\t{why}" for src, why in split.skipped), f"data/skipped_{split_name}.tsv"
            )


@dataclass
class Watch:
    """The callbacks of fit whose outcome train() reads afterwards."""

    budget: TimeBudget
    checkpoint: EpochCheckpoint
    stopper: keras.callbacks.EarlyStopping | None = None
    trial: Any = None  # trial_for's reporter (ReportToTrial), in a pruned sweep or a search

    def stop_reason(self) -> str:
        if self.trial and self.trial.pruned_at:
            return "pruned"
        if self.budget.triggered:
            return "max_minutes"
        return "early_stopping" if self.stopper and self.stopper.stopped_epoch > 0 else "epochs"


def make_callbacks(
    config: dict,
    out: Path,
    best: keras.callbacks.ModelCheckpoint,
    history: dict,
    speed: keras.callbacks.Callback,
    trial=None,
) -> tuple[list, Watch]:
    """(the callbacks of fit, the Watch on those whose outcome is read after fit)."""
    early_stopping = config["early_stopping"]
    watch = Watch(TimeBudget(config["max_minutes"]), EpochCheckpoint(out / "checkpoint", best, history), trial=trial)
    callbacks = [
        StopOnSignal(),
        keras.callbacks.TerminateOnNaN(raise_error=True),
        best,
        EpochLogger(),
        speed,
        watch.budget,
        watch.checkpoint,
    ]
    callbacks += [trial] if trial else []
    if early_stopping["patience"] > 0:
        watch.stopper = keras.callbacks.EarlyStopping(
            monitor=early_stopping["monitor"],
            mode=early_stopping["mode"],
            patience=early_stopping["patience"],
            verbose=1,
        )
        callbacks.append(watch.stopper)
    return callbacks, watch


def evaluate_kept(
    config: dict, model: keras.Model, model_file: Path, val: Split, classes: list[str], history: dict, run_name: str
) -> dict:
    """Evaluate the kept model on validation and log it with its curves, confusion matrix and report."""
    # keep_weights=last: the model in memory is the one just saved; best: an earlier epoch's, from its file
    kept = model if config["keep_weights"] == "last" else keras.models.load_model(model_file, compile=False)
    evaluation = log_evaluation(kept, model_file, val, classes, config["tta_views"], run_name, history)
    log.info(
        "validation accuracy %.4f single view, %.4f with %d-view TTA (%s weights)\n%s",
        evaluation.accuracy,
        evaluation.tta_accuracy,
        config["tta_views"],
        config["keep_weights"],
        evaluation.text,
    )
    return {
        "val_accuracy": evaluation.accuracy,
        "val_accuracy_tta": evaluation.tta_accuracy,
        "params": kept.count_params(),
    }


def reuse(config: dict, finished: dict, run_name: str) -> dict:
    """resume=true and this config already FINISHED: note it on the sweep (and the search's study), train nothing."""
    log.info("resume: %s already FINISHED as run %s; not training it again", run_name, finished["run_id"])
    tracking.note_reused(finished["run_id"])
    tell_reused(config, finished["metrics"].get("best_val_accuracy"))
    return {"run_id": finished["run_id"], "val_accuracy": finished["metrics"].get("best_val_accuracy"), "reused": True}


def start_model(
    config: dict,
    interrupted: dict | None,
    out: Path,
    best: keras.callbacks.ModelCheckpoint,
    num_classes: int,
    images,
) -> tuple[keras.Model, dict]:
    """(the model, its state: last epoch and history): the config's model, with the interrupted run's last
    checkpoint loaded into it, or new (its whitening stem, if it has one, set from the training `images`)."""
    model = compile_model(config, num_classes, -(-len(images) // max(1, config["batch_size"])))
    if not interrupted:
        if whiten(model, images):
            log.info("the whitening stem: set from the training images' 3x3 patches")
        return model, {"epoch": -1, "history": {}}
    state = EpochCheckpoint.restore(interrupted["run_id"], out / "resumed", best, model)
    log.info("resume: continuing run %s after epoch %d", interrupted["run_id"], state["epoch"] + 1)
    return model, state


def pipelines(config: dict, train: Split, val: Split, num_classes: int, soft=None, teacher=None) -> tuple:
    """(training batches, augmented and shuffled, with the teachers' probabilities when distilling: `soft`
    per image, or `teacher` of each augmented batch; validation batches; class weights or None)."""
    augmenter = build_augmenter(**config["augment"], seed=config["seed"])
    batch, seed = config["batch_size"], config["seed"]
    train_ds = make_dataset(
        train.images, train.labels, num_classes, batch, augmenter, training=True, seed=seed, soft=soft, teacher=teacher
    )
    val_ds = make_dataset(val.images, val.labels, num_classes, batch)
    weights = class_weights(train.labels, num_classes) if config["class_weight"] == "balanced" else None
    return train_ds, val_ds, weights


def describe_model(model: keras.Model, config: dict) -> str:
    return f"{config['model']['name']} ({model.count_params():,} parameters)"


def machine_tags(config: dict, overrides, interrupted: dict | None) -> tuple[dict[str, str], dict[str, str]]:
    """(the machine: CPU, GPUs, the precision and kernels chosen for it; the run's tags, those included)."""
    where = machine.describe(config["precision"])
    tags = {
        tracking.TAG_OVERRIDES: tracking.encode_overrides(overrides),
        **{f"{tracking.TAG_MACHINE}.{k}": v for k, v in where.items()},
    }
    return where, {**tags, **({tracking.TAG_RESUMED_FROM: interrupted["run_id"]} if interrupted else {})}


def train(
    cfg: DictConfig, run_name: str = "run", output_dir: str | Path | None = None, overrides: list[str] | tuple = ()
) -> dict:
    """Train one model as `cfg` describes, record it in MLflow, return its key results.

    With resume=true, a config that already FINISHED is not trained again, and an
    interrupted one continues from its last completed epoch.
    """
    config = OmegaConf.to_container(cfg, resolve=True)
    config["data"] = with_fallback(config["data"])
    out = Path(output_dir or tempfile.mkdtemp(prefix="fer_exp-"))
    out.mkdir(parents=True, exist_ok=True)
    store = config["tracking"]
    # a tracking server that does not answer: the job starts on its spool (tracking.start_run), no id yet
    experiment_id = tracking.configure(store["uri"], store["dir"], store["experiment"], offline=True)
    digest = config_hash(config)
    if config["resume"] and experiment_id is None:
        raise tracking.AccessError(
            f"resume=true needs the tracking server {store['uri']} to find the earlier runs, and it does not answer; "
            "start it (make server), or run without resume=true to train on the spool meanwhile"
        )
    finished, interrupted = tracking.find_previous(experiment_id, digest) if config["resume"] else (None, None)
    if finished:
        return reuse(config, finished, run_name)
    keras.utils.set_random_seed(config["seed"])
    if config["deterministic"]:
        tf.config.experimental.enable_op_determinism()
    where, tags = machine_tags(config, overrides, interrupted)
    # teacher=: found, checked and loaded before the run begins (a bad one writes nothing)
    found = teachers.find(teachers.refs_of(config.get("teacher")), config["data"]["classes"], out / "teachers")
    teacher_models = teachers.load(found, int(config["data"]["image_size"]))
    tags.update(teachers.lineage(found) if found else {})
    spool = (Path(store["spool_dir"]), store["outage_minutes"])  # where records wait while a tracking server is away
    with (
        tracking.start_run(
            run_name,
            digest,
            flatten(config),
            OmegaConf.to_yaml(config),
            tags,
            spool=spool,
            experiment=store["experiment"],
        ) as run_id,
        trial_for(config) as trial,
    ):
        validate(cfg)  # a bad value fails the run, recorded, before any data loads
        result = fit(config, out, where, interrupted, trial, run_name, (found, teacher_models))
    return {"run_id": run_id, **result}


def fit(
    config: dict, out: Path, where: dict, interrupted: dict | None, trial, run_name: str, taught: tuple[list, list]
) -> dict:
    """Inside the job's run: load the data, build (or restore) the model, fit it (learning also from the
    probabilities of the teachers `taught` = (found, their models), when there are any), then keep,
    evaluate and record the weights asked for. `trial` (or None) learns the result."""
    splits, source = load_data(config["data"], seed=config["seed"])
    classes, train_split, val_split = list(config["data"]["classes"]), splits["train"], splits["validation"]
    log_data(splits, source, config["data"]["name"], classes)
    soft, teacher = teachers.targets(
        *taught, train_split.images, config["distill"]["views"], config["data"].get("cache_dir"),
        fit_verbosity(config["verbose"]),
    )  # fmt: skip
    model_file = out / "model.h5"  # the kept model (by default the best epoch's, as the notebook saved it)
    early_stopping = config["early_stopping"]
    best = keras.callbacks.ModelCheckpoint(
        str(model_file), monitor=early_stopping["monitor"], mode=early_stopping["mode"], save_best_only=True
    )
    model, state = start_model(config, interrupted, out, best, len(classes), train_split.images)
    speed = speed_meter(model, where, len(train_split))
    train_ds, val_ds, weights = pipelines(config, train_split, val_split, len(classes), soft, teacher)
    callbacks, watch = make_callbacks(config, out, best, state["history"], speed, trial)
    log.info("training %s for up to %d epochs on %d images; %s", describe_model(model, config), config["epochs"],
             len(train_split), ", ".join([where["cpu"], where["precision"], f"oneDNN {where['onednn']}"]))  # fmt: skip
    logging.getLogger("absl").addFilter(DROP_HDF5_NOTICE)
    start = time.time()
    # shuffle=False: the tf.data pipeline shuffles, seeded
    model.fit(
        train_ds,
        validation_data=val_ds,
        epochs=config["epochs"],
        initial_epoch=state["epoch"] + 1,
        shuffle=False,
        class_weight=weights,
        callbacks=callbacks,
        verbose=fit_verbosity(config["verbose"]),
    )
    result = finish(config, model, model_file, val_split, classes, watch, time.time() - start, run_name)
    if trial:
        trial.value = result["val_accuracy"]
    return result


def finish(
    config: dict,
    model: keras.Model,
    model_file: Path,
    val: Split,
    classes: list,
    watch: Watch,
    seconds: float,
    name: str,
) -> dict:
    """After fit: keep the weights asked for, evaluate them and record why and when training stopped."""
    reason, history = watch.stop_reason(), watch.checkpoint.history
    epochs_run = len(history.get("loss", []))
    kept = keep_weights(config, model, model_file, history, config["early_stopping"])
    tracking.set_tags({tracking.TAG_STOP: reason, tracking.TAG_KEPT: kept})
    result = evaluate_kept(config, model, model_file, val, classes, history, name)
    scores = {"best_val_accuracy": result["val_accuracy"], "val_accuracy_tta": result["val_accuracy_tta"]}
    tracking.log_metrics({**scores, "train_seconds": seconds, "epochs_run": epochs_run})
    log.info("%s: %d epochs, stopped by %s, %.0f s; kept the %s weights", name, epochs_run, reason, seconds, kept)
    return {**result, "epochs": epochs_run, "train_seconds": seconds, "stop_reason": reason}


def keep_weights(config: dict, model: keras.Model, model_file: Path, history: dict, early_stopping: dict) -> str:
    """Make model_file hold the weights keep_weights asks for; returns which they are ("best epoch 7").

    best: the epoch best on the monitor, which ModelCheckpoint saved; last: the final weights
    (EMA-averaged with ema=true), saved now. Either is saved portable (Keras's own layers only).
    best_val_accuracy then scores these weights.
    """
    values = history.get(early_stopping["monitor"], [])
    if config["keep_weights"] == "last":
        portable(model).save(model_file)
        return f"last epoch {len(values)}" + (" (EMA)" if config["ema"] else "")
    if model_file.exists():  # ModelCheckpoint saved the best epoch's model with its own layers
        portable(keras.models.load_model(model_file, compile=False)).save(model_file)
    pick = max if early_stopping["mode"] == "max" else min
    return f"best epoch {values.index(pick(values)) + 1}" if values else "best epoch"
