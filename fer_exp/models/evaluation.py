"""Measure a model: test-time-augmented probabilities, accuracy, a per-class report, a confusion matrix;
and log_evaluation, what every run that ends with a model logs, for a trained job and an ensemble alike:
its evaluation on validation, the model file with its class list, the MLflow model, the confusion
matrix, the classification report and, for a trained model, its training curves."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fer_exp.data import Split
from fer_exp.models.saved import CLASSES_KEY, write_classes

if TYPE_CHECKING:
    import keras


def make_views(images: np.ndarray, n_views: int, shift: int = 3) -> list[np.ndarray]:
    """Up to 10 views of (N, H, W) images: the original and shifted crops, each also flipped.

    Order: original, flip, then for each corner offset (+-shift, +-shift) the crop and its flip.
    """
    if not 1 <= n_views <= 10:
        raise ValueError(f"tta views must be 1..10, got {n_views}")
    h, w = images.shape[1:3]
    padded = np.pad(images, ((0, 0), (shift, shift), (shift, shift)), mode="edge")
    views = []
    for dy, dx in ((0, 0), (-shift, -shift), (-shift, shift), (shift, -shift), (shift, shift)):
        crop = padded[:, shift + dy : shift + dy + h, shift + dx : shift + dx + w]
        views += [crop, crop[:, :, ::-1]]
    return views[:n_views]


def view_probabilities(
    model, images: np.ndarray, n_views: int = 1, batch_size: int = 256, verbose: int = 0
) -> np.ndarray:
    """Class probabilities (n_views, N, classes) for each view of uint8 (N, H, W) images.

    One predict call over all views (each call has a fixed set-up cost); views are scaled per batch.
    verbose: Keras's predict progress (0 none, 1 a bar, 2 a line at the end).
    """
    import tensorflow as tf

    from fer_exp.data.pipeline import to_inputs

    views = np.concatenate(make_views(images, n_views))
    ds = tf.data.Dataset.from_tensor_slices(views).batch(batch_size).map(to_inputs)
    probs = np.asarray(model.predict(ds, verbose=verbose), dtype=np.float64)
    return probs.reshape(n_views, len(images), -1)


@dataclass
class Evaluation:
    single: np.ndarray  # (N, classes) probabilities of the plain view
    probs: np.ndarray  # (N, classes) probabilities averaged over the TTA views
    accuracy: float | None = None  # single view; None without labels
    tta_accuracy: float | None = None
    report: dict | None = None  # sklearn's classification_report (single view)
    text: str = ""  # the same report as text
    confusion: np.ndarray | None = None  # (classes, classes), single view


def evaluate(
    model,
    images: np.ndarray,
    labels: np.ndarray | None,
    classes: list[str],
    tta_views: int = 1,
    batch_size: int = 256,
    verbose: int = 0,
) -> Evaluation:
    """Predict uint8 (N, H, W) images single view and with `tta_views` views; score them when labels are given.
    verbose: as view_probabilities."""
    from sklearn.metrics import classification_report, confusion_matrix

    views = view_probabilities(model, images, tta_views, batch_size, verbose)
    evaluation = Evaluation(single=views[0], probs=views.mean(axis=0))
    if labels is None:
        return evaluation
    ids, pred = list(range(len(classes))), evaluation.single.argmax(axis=1)
    evaluation.report = classification_report(
        labels, pred, labels=ids, target_names=classes, output_dict=True, zero_division=0
    )
    evaluation.text = classification_report(labels, pred, labels=ids, target_names=classes, digits=4, zero_division=0)
    evaluation.accuracy = float((pred == labels).mean())
    evaluation.tta_accuracy = float((evaluation.probs.argmax(axis=1) == labels).mean())
    evaluation.confusion = confusion_matrix(labels, pred, labels=ids)
    return evaluation


def log_evaluation(
    model: keras.Model,
    model_file: Path,
    val: Split,
    classes: list[str],
    tta_views: int,
    title: str,
    history: dict | None = None,
    verbose: int = 0,
) -> Evaluation:
    """Evaluate `model` (saved as `model_file`) on `val` and log it all on the active run; the
    figures and report are written beside `model_file`. verbose: the prediction's progress (see evaluate)."""
    from fer_exp import plots, tracking
    from fer_exp.data.pipeline import to_inputs
    from fer_exp.models.layers import portable

    out = model_file.parent
    evaluation = evaluate(model, val.images, val.labels, classes, tta_views, verbose=verbose)
    files = [model_file, write_classes(model_file, classes)]
    if history is not None:
        plots.save(plots.training_curves(history, title=title), out / "curves.png")
        files.append(out / "curves.png")
    matrix = plots.confusion_matrix_figure(
        evaluation.confusion, classes, title=f"{title}: validation accuracy {evaluation.accuracy:.1%}"
    )
    plots.save(matrix, out / "confusion_matrix.png")
    (out / "classification_report.txt").write_text(evaluation.text)
    tracking.log_files([*files, out / "confusion_matrix.png", out / "classification_report.txt"])
    tracking.log_dict(evaluation.report, "classification_report.json")
    tracking.log_keras_model(portable(model), to_inputs(val.images[:2]).numpy(), metadata={CLASSES_KEY: list(classes)})
    return evaluation
