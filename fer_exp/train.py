"""train(cfg): one training job, from a resolved Hydra config to a recorded MLflow run."""

from __future__ import annotations

import hashlib
import logging
import tempfile
import time
from pathlib import Path

import keras
import numpy as np
from omegaconf import DictConfig, OmegaConf
from sklearn.metrics import classification_report, confusion_matrix

from fer_exp import plots, tracking
from fer_exp.augment import build_augmenter
from fer_exp.data import class_weights, count_table, load_data
from fer_exp.models import build_model
from fer_exp.pipeline import make_dataset

log = logging.getLogger(__name__)

# Keys that change where results go or how much is printed, not what is trained.
NOT_HASHED = ("tracking", "verbose")


class _DropHdf5Notice(logging.Filter):
    """Keras warns at every .h5 save; the notebook's format is kept on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "HDF5 file" not in record.getMessage()


_DROP_HDF5_NOTICE = _DropHdf5Notice()
OPTIMIZERS = {"adam": keras.optimizers.Adam, "adamw": keras.optimizers.AdamW, "sgd": keras.optimizers.SGD}


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


def make_optimizer(name: str, lr: float) -> keras.optimizers.Optimizer:
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer={name!r} is unknown; choose one of {sorted(OPTIMIZERS)}")
    return OPTIMIZERS[name](learning_rate=lr)


def make_callbacks(cfg: dict, checkpoint: Path) -> list[keras.callbacks.Callback]:
    es = cfg["early_stopping"]
    callbacks = [
        # The best epoch's full model, as the notebook saved it (model.h5).
        keras.callbacks.ModelCheckpoint(str(checkpoint), monitor=es["monitor"], mode=es["mode"], save_best_only=True),
        tracking.EpochLogger(),
    ]
    if es["patience"] > 0:
        callbacks.append(keras.callbacks.EarlyStopping(monitor=es["monitor"], mode=es["mode"], patience=es["patience"], verbose=1))
    return callbacks


def evaluate(model: keras.Model, ds, labels: np.ndarray, classes: list[str]) -> tuple[np.ndarray, dict, str, np.ndarray]:
    """(probabilities, report dict, report text, confusion matrix) on one split."""
    probs = model.predict(ds, verbose=0)
    pred = probs.argmax(axis=1)
    ids = list(range(len(classes)))
    report = classification_report(labels, pred, labels=ids, target_names=classes, output_dict=True, zero_division=0)
    text = classification_report(labels, pred, labels=ids, target_names=classes, digits=4, zero_division=0)
    return probs, report, text, confusion_matrix(labels, pred, labels=ids)


def train(cfg: DictConfig, run_name: str = "run", output_dir: str | Path | None = None) -> dict:
    """Train one model as `cfg` describes, record it in MLflow, return its key results."""
    c = OmegaConf.to_container(cfg, resolve=True)
    out = Path(output_dir or tempfile.mkdtemp(prefix="fer_exp-"))
    out.mkdir(parents=True, exist_ok=True)
    t = c["tracking"]
    tracking.configure(t["uri"], t["dir"], t["experiment"])
    keras.utils.set_random_seed(c["seed"])
    with tracking.start_run(run_name, config_hash(c), flatten(c), OmegaConf.to_yaml(cfg, resolve=True)) as run_id:
        splits, source = load_data(c["data"], seed=c["seed"])
        classes, size = list(c["data"]["classes"]), int(c["data"]["image_size"])
        train_split, val_split = splits["train"], splits["validation"]
        table = count_table(splits, classes)
        log.info("data from %s:\n%s", source, table)
        tracking.log_text(table, "data/class_counts.txt")
        tracking.log_dict({n: dict(zip(classes, s.counts(len(classes)).tolist())) for n, s in splits.items()}, "data/class_counts.json")
        for name, split in splits.items():
            tracking.log_dataset(f"{c['data']['name']}-{name}", source, split.digest, "training" if name == "train" else "validation")
            tracking.log_metrics({f"data_{name}_images": len(split), f"data_{name}_skipped": len(split.skipped), **{f"data_{name}_{k}": v for k, v in split.stats.items()}})
            if split.skipped:
                tracking.log_text("\n".join(f"{src}\t{why}" for src, why in split.skipped), f"data/skipped_{name}.tsv")

        model = build_model(input_shape=(size, size, 1), num_classes=len(classes), **c["model"])
        model.compile(
            optimizer=make_optimizer(c["optimizer"], c["lr"]),
            loss="categorical_crossentropy",
            metrics=["accuracy", keras.metrics.Precision(name="precision"), keras.metrics.Recall(name="recall")],
        )
        tracking.log_metrics({"params": model.count_params()})
        augmenter = build_augmenter(**c["augment"], seed=c["seed"])
        train_ds = make_dataset(train_split.images, train_split.labels, len(classes), c["batch_size"], augmenter, training=True, seed=c["seed"])
        val_ds = make_dataset(val_split.images, val_split.labels, len(classes), c["batch_size"])
        weights = class_weights(train_split.labels, len(classes)) if c["class_weight"] == "balanced" else None
        checkpoint = out / "model.h5"

        log.info("training %s (%s parameters) for up to %d epochs on %d images", c["model"]["name"], f"{model.count_params():,}", c["epochs"], len(train_split))
        start = time.time()
        logging.getLogger("absl").addFilter(_DROP_HDF5_NOTICE)
        # shuffle=False: the tf.data pipeline shuffles, seeded
        history = model.fit(
            train_ds, validation_data=val_ds, epochs=c["epochs"], shuffle=False, class_weight=weights, callbacks=make_callbacks(c, checkpoint), verbose=c["verbose"]
        )
        train_seconds = time.time() - start

        best = keras.models.load_model(checkpoint, compile=False)
        probs, report, report_text, cm = evaluate(best, val_ds, val_split.labels, classes)
        val_acc = float(report["accuracy"])
        hist = {k: [float(v) for v in vs] for k, vs in history.history.items()}
        plots.save(plots.training_curves(hist, title=run_name), out / "curves.png")
        plots.save(plots.confusion_matrix_figure(cm, classes, title=f"{run_name}: validation accuracy {val_acc:.1%}"), out / "confusion_matrix.png")
        (out / "classification_report.txt").write_text(report_text)
        tracking.log_files([checkpoint, out / "curves.png", out / "confusion_matrix.png", out / "classification_report.txt"])
        tracking.log_dict(report, "classification_report.json")
        tracking.log_keras_model(best, val_split.images[:2, ..., None].astype("float32") / 255.0)
        epochs_run = len(hist.get("loss", []))
        tracking.log_metrics({"best_val_accuracy": val_acc, "train_seconds": train_seconds, "epochs_run": epochs_run})
        log.info("validation accuracy %.4f (best epoch's weights), %d epochs in %.0f s\n%s", val_acc, epochs_run, train_seconds, report_text)
    return {"run_id": run_id, "val_accuracy": val_acc, "epochs": epochs_run, "train_seconds": train_seconds, "params": model.count_params()}
