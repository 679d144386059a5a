"""Measure a model: test-time-augmented probabilities, accuracy, a per-class report, a confusion matrix.

    python -m fer_exp.evaluate model=<runs:/RUN_ID/model | models:/NAME@ALIAS | path/to/model.h5> \
        data_dir=<folder> [tta=10] [out_dir=...] [tracking_dir=mlruns | tracking_uri=http://...]

data_dir holds class subfolders (<data_dir>/<class>/*.jpg: accuracy is reported) or
just images (predictions only). Prints single-view and TTA accuracy and a per-class
report; writes confusion_matrix.png and predictions.csv (TTA probabilities) to out_dir.
The class names come with the model (see models.read_classes).
"""

from __future__ import annotations

import csv
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fer_exp import cli
from fer_exp.data import DataError, Split, decode_files, load_folder_split

log = logging.getLogger("fer_exp.evaluate")


# --- test-time augmentation ------------------------------------------------------


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


def view_probabilities(model, images: np.ndarray, n_views: int = 1, batch_size: int = 256) -> np.ndarray:
    """Class probabilities (n_views, N, classes) for each view of uint8 (N, H, W) images.

    One predict call over all views (each call has a fixed set-up cost); views are scaled per batch.
    """
    import tensorflow as tf

    from fer_exp.pipeline import to_inputs

    views = np.concatenate(make_views(images, n_views))
    ds = tf.data.Dataset.from_tensor_slices(views).batch(batch_size).map(to_inputs)
    probs = np.asarray(model.predict(ds, verbose=0), dtype=np.float64)
    return probs.reshape(n_views, len(images), -1)


# --- the one evaluation -------------------------------------------------------------


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
    model, images: np.ndarray, labels: np.ndarray | None, classes: list[str], tta_views: int = 1, batch_size: int = 256
) -> Evaluation:
    """Predict uint8 (N, H, W) images single view and with `tta_views` views; score them when labels are given."""
    from sklearn.metrics import classification_report, confusion_matrix

    views = view_probabilities(model, images, tta_views, batch_size)
    ev = Evaluation(single=views[0], probs=views.mean(axis=0))
    if labels is None:
        return ev
    ids, pred = list(range(len(classes))), ev.single.argmax(axis=1)
    ev.report = classification_report(labels, pred, labels=ids, target_names=classes, output_dict=True, zero_division=0)
    ev.text = classification_report(labels, pred, labels=ids, target_names=classes, digits=4, zero_division=0)
    ev.accuracy = float((pred == labels).mean())
    ev.tta_accuracy = float((ev.probs.argmax(axis=1) == labels).mean())
    ev.confusion = confusion_matrix(labels, pred, labels=ids)
    return ev


def load_model(uri: str, tracking_uri: str | None = None, tracking_dir: str | Path = "mlruns"):
    """(Keras model, its class names) from a file (.h5, .keras) or an MLflow URI (runs:/..., models:/...)."""
    import keras

    from fer_exp import models, tracking

    if "://" not in uri and ":/" not in uri:
        if not Path(uri).exists():
            raise FileNotFoundError(
                f"model file not found: {Path(uri).resolve()} (model=path/to/model.h5 or runs:/RUN_ID/model)"
            )
        model, classes = keras.models.load_model(uri, compile=False), models.read_classes(uri)
    else:
        model, metadata = tracking.load_logged_model(uri, tracking.resolve_uri(tracking_uri, tracking_dir))
        classes = metadata.get(models.CLASSES_KEY)
    return model, models.classes_for(model, classes, uri)


# --- the command line ------------------------------------------------------------------


def read_folder(data_dir: str | Path, classes: list[str], size: int) -> tuple[Split, bool]:
    """(images, labelled?) from class subfolders, or from loose images (labels -1)."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(
            f"data_dir not found: {data_dir.resolve()}; pass a folder of class subfolders or of images (data_dir=...)"
        )
    if any(p.is_dir() for p in data_dir.iterdir()):
        return load_folder_split(data_dir.parent, data_dir.name, classes, size), True
    paths = sorted(str(p) for p in data_dir.iterdir() if p.is_file() and not p.name.startswith("."))
    images, ok, skipped, stats = decode_files(paths, size, desc="decode")
    keep = np.array(ok, dtype=bool)
    if not keep.any():
        raise DataError(f"{data_dir}: no readable images")
    return Split(images[keep], np.full(keep.sum(), -1), [p for p, k in zip(paths, ok) if k], skipped, stats), False


def write_predictions(
    path: Path, sources: list[str], probs: np.ndarray, classes: list[str], labels: np.ndarray | None = None
) -> None:
    """predictions.csv: path, [true_label,] predicted_label, one probability column per class."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", *(["true_label"] if labels is not None else []), "predicted_label", *classes])
        for i, src in enumerate(sources):
            truth = [classes[labels[i]]] if labels is not None else []
            writer.writerow([src, *truth, classes[probs[i].argmax()], *(f"{p:.6f}" for p in probs[i])])


def evaluate_folder(model, data_dir, classes: list[str], tta: int, out_dir, batch_size: int = 256) -> dict:
    """Evaluate a loaded Keras model on a folder; returns accuracies and output paths."""
    from fer_exp import plots

    split, labelled = read_folder(data_dir, classes, int(model.input_shape[1]))
    for src, why in split.skipped:
        log.warning("skipped %s: %s", src, why)
    ev = evaluate(model, split.images, split.labels if labelled else None, classes, tta, batch_size)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = {"images": len(split), "skipped": len(split.skipped), "predictions": out / "predictions.csv"}
    write_predictions(result["predictions"], split.sources, ev.probs, classes, split.labels if labelled else None)
    if labelled:
        result.update(
            accuracy=ev.accuracy,
            tta_accuracy=ev.tta_accuracy,
            report=ev.text,
            confusion_png=out / "confusion_matrix.png",
        )
        title = f"{Path(data_dir).name}: accuracy {ev.accuracy:.1%} (single view)"
        plots.save(plots.confusion_matrix_figure(ev.confusion, classes, title=title), result["confusion_png"])
    return result


DEFAULTS = {
    "model": None,
    "data_dir": None,
    "tta": 10,
    "batch_size": 256,
    "out_dir": None,
    "tracking_dir": "mlruns",
    "tracking_uri": None,
}


def main(argv: list[str] | None = None) -> int:
    args = cli.parse(argv, DEFAULTS, __doc__, required=("model", "data_dir"))
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out_dir = args.out_dir or f"outputs/evaluate/{time.strftime('%Y-%m-%d_%H-%M-%S')}"
    try:
        model, classes = load_model(args.model, args.tracking_uri, args.tracking_dir)
        r = evaluate_folder(model, args.data_dir, classes, args.tta, out_dir, args.batch_size)
    except (DataError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{r['images']} images from {args.data_dir} ({r['skipped']} skipped); classes {', '.join(classes)}")
    if "accuracy" in r:
        print(f"accuracy: {r['accuracy']:.4f} single view, {r['tta_accuracy']:.4f} with {args.tta}-view TTA")
        print(f"per class (single view):\n{r['report']}")
        print(f"confusion matrix: {r['confusion_png']}")
    print(f"predictions ({args.tta}-view probabilities): {r['predictions']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
