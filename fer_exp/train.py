"""train(cfg): one training job, from a resolved Hydra config to a recorded MLflow run."""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import keras
import tensorflow as tf
from omegaconf import DictConfig, OmegaConf
from sklearn.metrics import classification_report, confusion_matrix

from fer_exp import plots, tracking
from fer_exp.augment import build_augmenter
from fer_exp.callbacks import EpochCheckpoint, StopOnNonFinite, StopOnSignal, TimeBudget
from fer_exp.data import Split, class_weights, count_table, load_data, with_fallback
from fer_exp.models import build_model
from fer_exp.pipeline import make_dataset
from fer_exp.tta import view_probabilities

log = logging.getLogger(__name__)

# Keys that change where results go, how much is printed or how a job starts, not what is trained.
NOT_HASHED = ("tracking", "verbose", "resume", "max_minutes")
OPTIMIZERS = {"adam": keras.optimizers.Adam, "adamw": keras.optimizers.AdamW, "sgd": keras.optimizers.SGD}


class _DropHdf5Notice(logging.Filter):
    """Keras warns at every .h5 save; the notebook's format is kept on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "HDF5 file" not in record.getMessage()


_DROP_HDF5_NOTICE = _DropHdf5Notice()


def flatten(d: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists stay values."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_hash(cfg: dict) -> str:
    """A digest of what determines the result: the resolved config minus NOT_HASHED."""
    text = OmegaConf.to_yaml(OmegaConf.create({k: v for k, v in cfg.items() if k not in NOT_HASHED}))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def make_optimizer(name: str, lr, weight_decay: float = 0.0, ema: bool = False) -> keras.optimizers.Optimizer:
    """adam | adamw | sgd (Nesterov, momentum 0.9); `lr` may be a schedule."""
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer={name!r} is unknown; choose one of {sorted(OPTIMIZERS)}")
    kwargs = {"learning_rate": lr, "weight_decay": weight_decay or None, "use_ema": ema}
    if name == "sgd":
        kwargs.update(momentum=0.9, nesterov=True)
    return OPTIMIZERS[name](**kwargs)


def make_lr(c: dict, steps_per_epoch: int):
    """The learning rate: a constant, or cosine decay to 0 after a linear warm-up."""
    if c["lr_schedule"] == "constant":
        return c["lr"]
    if c["lr_schedule"] != "cosine":
        raise ValueError(f"lr_schedule={c['lr_schedule']!r} is unknown; choose constant or cosine")
    warmup = int(c["warmup_epochs"] * steps_per_epoch)
    decay = max(1, c["epochs"] * steps_per_epoch - warmup)
    if not warmup:
        return keras.optimizers.schedules.CosineDecay(c["lr"], decay)
    return keras.optimizers.schedules.CosineDecay(0.0, decay, warmup_target=c["lr"], warmup_steps=warmup)


def compile_model(c: dict, num_classes: int, steps_per_epoch: int) -> keras.Model:
    """The model, optimizer, loss and metrics that the resolved config `c` describes."""
    size = int(c["data"]["image_size"])
    keras.mixed_precision.set_global_policy(c["precision"])
    try:
        model = build_model(input_shape=(size, size, 1), num_classes=num_classes, **c["model"])
    finally:
        keras.mixed_precision.set_global_policy("float32")
    model.compile(
        optimizer=make_optimizer(c["optimizer"], make_lr(c, steps_per_epoch), c["weight_decay"], c["ema"]),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=c["label_smoothing"]),
        metrics=["accuracy", keras.metrics.Precision(name="precision"), keras.metrics.Recall(name="recall")],
    )
    return model


def fit_verbosity(setting) -> int:
    """verbose=auto: Keras's progress bar on a terminal, one line per epoch elsewhere."""
    if setting == "auto":
        return 1 if sys.stdout.isatty() else 2
    return int(setting)


def evaluate(model: keras.Model, split: Split, classes: list[str], tta_views: int) -> dict:
    """Single-view report and confusion matrix, plus accuracy with `tta_views` views."""
    probs = view_probabilities(model, split.images, tta_views)
    pred = probs[0].argmax(axis=1)
    ids = list(range(len(classes)))
    report = classification_report(split.labels, pred, labels=ids, target_names=classes, output_dict=True, zero_division=0)
    text = classification_report(split.labels, pred, labels=ids, target_names=classes, digits=4, zero_division=0)
    tta_acc = float((probs.mean(axis=0).argmax(axis=1) == split.labels).mean())
    return {"report": report, "text": text, "confusion": confusion_matrix(split.labels, pred, labels=ids), "accuracy": float(report["accuracy"]), "tta_accuracy": tta_acc}


def log_data(splits: dict[str, Split], source: str, name: str, classes: list[str]) -> None:
    """Print and record the class counts, the data set digests and what was skipped."""
    table = count_table(splits, classes)
    log.info("data from %s:\n%s", source, table)
    tracking.log_text(table, "data/class_counts.txt")
    tracking.log_dict({n: dict(zip(classes, s.counts(len(classes)).tolist())) for n, s in splits.items()}, "data/class_counts.json")
    for split_name, split in splits.items():
        tracking.log_dataset(f"{name}-{split_name}", source, split.digest, "training" if split_name == "train" else "validation")
        stats = {f"data_{split_name}_{k}": v for k, v in split.stats.items()}
        tracking.log_metrics({f"data_{split_name}_images": len(split), f"data_{split_name}_skipped": len(split.skipped), **stats})
        if split.skipped:
            tracking.log_text("\n".join(f"{src}\t{why}" for src, why in split.skipped), f"data/skipped_{split_name}.tsv")


def find_previous(experiment_id: str, chash: str):
    """(a FINISHED run of this config or None, the newest KILLED or lost run with a checkpoint or None)."""
    runs = tracking.previous_runs(experiment_id, chash)
    finished = next((r for r in runs if r.info.status == "FINISHED"), None)
    # FAILED runs start over: their failure (a NaN, a bad value) would likely repeat; not so a lost one (a dead worker).
    stopped = [r for r in runs if r.info.status == "KILLED" or r.data.tags.get("fer_exp.error") == tracking.LOST]
    interrupted = next((r for r in stopped if r.data.tags.get("fer_exp.checkpoint_epoch")), None)
    return finished, interrupted


def train(cfg: DictConfig, run_name: str = "run", output_dir: str | Path | None = None, overrides: list[str] | tuple = ()) -> dict:
    """Train one model as `cfg` describes, record it in MLflow, return its key results.

    With resume=true, a config that already FINISHED is not trained again, and an
    interrupted one continues from its last completed epoch.
    """
    c = OmegaConf.to_container(cfg, resolve=True)
    c["data"] = with_fallback(c["data"])
    out = Path(output_dir or tempfile.mkdtemp(prefix="fer_exp-"))
    out.mkdir(parents=True, exist_ok=True)
    t = c["tracking"]
    exp_id = tracking.configure(t["uri"], t["dir"], t["experiment"])
    chash = config_hash(c)
    interrupted = None
    if c["resume"]:
        finished, interrupted = find_previous(exp_id, chash)
        if finished:
            log.info("resume: %s already FINISHED as run %s; not training it again", run_name, finished.info.run_id)
            tracking.note_reused(finished.info.run_id)
            return {"run_id": finished.info.run_id, "val_accuracy": finished.data.metrics.get("best_val_accuracy"), "reused": True}

    keras.utils.set_random_seed(c["seed"])
    if c["deterministic"]:
        tf.config.experimental.enable_op_determinism()
    tags = {"fer_exp.overrides": " ".join(overrides)}
    if interrupted:
        tags["fer_exp.resumed_from"] = interrupted.info.run_id
    with tracking.start_run(run_name, chash, flatten(c), OmegaConf.to_yaml(c), tags) as run_id:
        splits, source = load_data(c["data"], seed=c["seed"])
        classes = list(c["data"]["classes"])
        log_data(splits, source, c["data"]["name"], classes)
        train_split, val_split = splits["train"], splits["validation"]

        checkpoint = out / "model.h5"  # the kept full model (by default the best epoch's, as the notebook saved it)
        es = c["early_stopping"]
        best_cb = keras.callbacks.ModelCheckpoint(str(checkpoint), monitor=es["monitor"], mode=es["mode"], save_best_only=True)
        state = {"epoch": -1, "history": {}}
        if interrupted:
            folder = tracking.download_checkpoint(interrupted.info.run_id, out / "resumed")
            state = json.loads((folder / "state.json").read_text())
            model = keras.models.load_model(folder / "last.keras")  # with its optimizer state
            if (folder / "best.h5").exists():
                (folder / "best.h5").replace(checkpoint)
                best_cb.best = state["best"]
            log.info("resume: continuing run %s after epoch %d", interrupted.info.run_id, state["epoch"] + 1)
        else:
            model = compile_model(c, len(classes), -(-len(train_split) // max(1, c["batch_size"])))
        tracking.log_metrics({"params": model.count_params()})

        augmenter = build_augmenter(**c["augment"], seed=c["seed"])
        train_ds = make_dataset(train_split.images, train_split.labels, len(classes), c["batch_size"], augmenter, training=True, seed=c["seed"])
        val_ds = make_dataset(val_split.images, val_split.labels, len(classes), c["batch_size"])
        weights = class_weights(train_split.labels, len(classes)) if c["class_weight"] == "balanced" else None

        def publish(files: list[Path]) -> None:
            tracking.log_files(files, "checkpoint")
            tracking.set_tags({"fer_exp.checkpoint_epoch": str(len(epoch_ckpt.history.get("loss", [])))})

        budget = TimeBudget(c["max_minutes"])
        epoch_ckpt = EpochCheckpoint(out / "checkpoint", best_cb, publish, state["history"])
        callbacks = [StopOnSignal(), StopOnNonFinite(), best_cb, tracking.EpochLogger(), budget, epoch_ckpt]
        stopper = None
        if es["patience"] > 0:
            stopper = keras.callbacks.EarlyStopping(monitor=es["monitor"], mode=es["mode"], patience=es["patience"], verbose=1)
            callbacks.append(stopper)

        log.info("training %s (%s parameters) for up to %d epochs on %d images", c["model"]["name"], f"{model.count_params():,}", c["epochs"], len(train_split))
        logging.getLogger("absl").addFilter(_DROP_HDF5_NOTICE)
        start = time.time()
        # shuffle=False: the tf.data pipeline shuffles, seeded
        model.fit(
            train_ds,
            validation_data=val_ds,
            epochs=c["epochs"],
            initial_epoch=state["epoch"] + 1,
            shuffle=False,
            class_weight=weights,
            callbacks=callbacks,
            verbose=fit_verbosity(c["verbose"]),
        )
        train_seconds = time.time() - start
        reason = "max_minutes" if budget.triggered else "early_stopping" if stopper and stopper.stopped_epoch > 0 else "epochs"
        tracking.set_tags({tracking.TAG_STOP: reason})

        if c["keep_weights"] == "last":  # the final (EMA-averaged, with ema=true) weights, not a val-picked epoch
            model.save(checkpoint)
        best = keras.models.load_model(checkpoint, compile=False)
        ev = evaluate(best, val_split, classes, c["tta_views"])
        report, report_text, cm, val_acc = ev["report"], ev["text"], ev["confusion"], ev["accuracy"]
        hist = epoch_ckpt.history
        plots.save(plots.training_curves(hist, title=run_name), out / "curves.png")
        plots.save(plots.confusion_matrix_figure(cm, classes, title=f"{run_name}: validation accuracy {val_acc:.1%}"), out / "confusion_matrix.png")
        (out / "classification_report.txt").write_text(report_text)
        tracking.log_files([checkpoint, out / "curves.png", out / "confusion_matrix.png", out / "classification_report.txt"])
        tracking.log_dict(report, "classification_report.json")
        tracking.log_keras_model(best, val_split.images[:2, ..., None].astype("float32") / 255.0)
        epochs_run = len(hist.get("loss", []))
        tracking.log_metrics({"best_val_accuracy": val_acc, "val_accuracy_tta": ev["tta_accuracy"], "train_seconds": train_seconds, "epochs_run": epochs_run})
        log.info(
            "validation accuracy %.4f single view, %.4f with %d-view TTA (%s weights), %d epochs, stopped by %s, %.0f s\n%s",
            val_acc, ev["tta_accuracy"], c["tta_views"], c["keep_weights"], epochs_run, reason, train_seconds, report_text,
        )
    return {
        "run_id": run_id, "val_accuracy": val_acc, "val_accuracy_tta": ev["tta_accuracy"], "epochs": epochs_run,
        "train_seconds": train_seconds, "params": model.count_params(), "stop_reason": reason,
    }
