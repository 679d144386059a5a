"""What every run that ends with a model logs, for a trained job and an ensemble alike: its
evaluation on validation, the model file with its class list, the MLflow model, the confusion
matrix, the classification report and, for a trained model, its training curves."""

from __future__ import annotations

from pathlib import Path

import keras

from fer_exp import plots, tracking
from fer_exp.data import Split
from fer_exp.evaluate import Evaluation, evaluate
from fer_exp.models import CLASSES_KEY, write_classes
from fer_exp.pipeline import to_inputs


def report(
    model: keras.Model,
    model_file: Path,
    val: Split,
    classes: list[str],
    tta_views: int,
    title: str,
    history: dict | None = None,
) -> Evaluation:
    """Evaluate `model` (saved as `model_file`) on `val` and log it all on the active run; the
    figures and report are written beside `model_file`."""
    out = model_file.parent
    ev = evaluate(model, val.images, val.labels, classes, tta_views)
    files = [model_file, write_classes(model_file, classes)]
    if history is not None:
        plots.save(plots.training_curves(history, title=title), out / "curves.png")
        files.append(out / "curves.png")
    matrix = plots.confusion_matrix_figure(
        ev.confusion, classes, title=f"{title}: validation accuracy {ev.accuracy:.1%}"
    )
    plots.save(matrix, out / "confusion_matrix.png")
    (out / "classification_report.txt").write_text(ev.text)
    tracking.log_files([*files, out / "confusion_matrix.png", out / "classification_report.txt"])
    tracking.log_dict(ev.report, "classification_report.json")
    tracking.log_keras_model(model, to_inputs(val.images[:2]).numpy(), metadata={CLASSES_KEY: list(classes)})
    return ev
