"""Measure a model on a folder of faces: single-view and test-time-augmented accuracy, a per-class report,
a confusion matrix and every face's probabilities.

    python -m fer_exp.evaluate model=<runs:/RUN_ID/model | models:/NAME@ALIAS | path/to/model.h5> \
        data_dir=<folder> [tta=10] [out_dir=...] [tracking.dir=mlruns | tracking.uri=http://...]

data_dir holds class subfolders (<data_dir>/<class>/*.jpg: accuracy is reported) or
just images (predictions only). Prints single-view and TTA accuracy and a per-class
report; writes confusion_matrix.png and predictions.csv (TTA probabilities) to out_dir.
The class names come with the model (see fer_exp.models.saved).
"""

from __future__ import annotations

import csv
import logging
import sys
import time
from pathlib import Path

import numpy as np

from fer_exp import cli
from fer_exp.data import DataError, Split, decode_files, load_folder_split
from fer_exp.models import evaluate, load_model

log = logging.getLogger("fer_exp.evaluate")


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
    log.info("predicting %d views of %d faces", tta, len(split))
    labels = split.labels if labelled else None
    evaluation = evaluate(model, split.images, labels, classes, tta, batch_size, cli.progress())
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = {"images": len(split), "skipped": len(split.skipped), "predictions": out / "predictions.csv"}
    write_predictions(
        result["predictions"], split.sources, evaluation.probs, classes, split.labels if labelled else None
    )
    if labelled:
        result.update(
            accuracy=evaluation.accuracy,
            tta_accuracy=evaluation.tta_accuracy,
            report=evaluation.text,
            confusion_png=out / "confusion_matrix.png",
        )
        title = f"{Path(data_dir).name}: accuracy {evaluation.accuracy:.1%} (single view)"
        plots.save(plots.confusion_matrix_figure(evaluation.confusion, classes, title=title), result["confusion_png"])
    return result


KEYS = {
    "model": (None, "runs:/RUN_ID/model, models:/NAME@ALIAS or a .h5/.keras file (required)"),
    "data_dir": (None, "a folder of class subfolders (accuracy is reported) or of images (required)"),
    "tta": (10, "test-time views (1..10) averaged for the TTA accuracy and predictions.csv"),
    "batch_size": (256, "images per prediction batch"),
    "out_dir": (None, "where predictions.csv and confusion_matrix.png go (default outputs/evaluate/<time>)"),
    **cli.TRACKING,
}


def main(argv: list[str] | None = None) -> int:
    args = cli.parse(argv, KEYS, __doc__, required=("model", "data_dir"))
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out_dir = args.out_dir or f"outputs/evaluate/{time.strftime('%Y-%m-%d_%H-%M-%S')}"
    try:
        model, classes = load_model(args.model, args.tracking.uri, args.tracking.dir)
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
