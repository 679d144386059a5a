"""Measure a model on a folder:

    python -m fer_exp.evaluate model=<runs:/RUN_ID/model | models:/NAME@ALIAS | path/to/model.h5> \
        data_dir=<folder> [tta=10] [out_dir=...] [tracking_dir=mlruns]

data_dir holds class subfolders (<data_dir>/<class>/*.jpg: accuracy is reported) or
just images (predictions only). Prints single-view and TTA accuracy and a per-class
report; writes confusion_matrix.png and predictions.csv (TTA probabilities) to out_dir.
"""

from __future__ import annotations

import csv
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import time  # noqa: E402

import numpy as np  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from fer_exp.data import DataError, Split, decode_files, load_folder_split  # noqa: E402

log = logging.getLogger("fer_exp.evaluate")


def read_folder(data_dir: str | Path, classes: list[str], size: int) -> tuple[Split, bool]:
    """(images, labelled?) from class subfolders, or from loose images (labels -1)."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"data_dir not found: {data_dir.resolve()}; pass a folder of class subfolders or of images (data_dir=...)")
    if any(p.is_dir() for p in data_dir.iterdir()):
        return load_folder_split(data_dir.parent, data_dir.name, classes, size), True
    paths = sorted(str(p) for p in data_dir.iterdir() if p.is_file() and not p.name.startswith("."))
    images, ok, skipped, stats = decode_files(paths, size, desc="decode")
    keep = np.array(ok, dtype=bool)
    if not keep.any():
        raise DataError(f"{data_dir}: no readable images")
    return Split(images[keep], np.full(keep.sum(), -1), [p for p, k in zip(paths, ok) if k], skipped, stats), False


def evaluate_folder(model, data_dir, classes: list[str], tta: int, out_dir, batch_size: int = 256) -> dict:
    """Evaluate a loaded Keras model on a folder; returns accuracies and output paths."""
    from sklearn.metrics import classification_report, confusion_matrix

    from fer_exp import plots
    from fer_exp.tta import view_probabilities

    size = int(model.input_shape[1])
    split, labelled = read_folder(data_dir, classes, size)
    for src, why in split.skipped:
        log.warning("skipped %s: %s", src, why)
    views = view_probabilities(model, split.images, tta, batch_size)
    single, probs = views[0], views.mean(axis=0)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = {"images": len(split), "skipped": len(split.skipped), "predictions": out / "predictions.csv"}
    with open(result["predictions"], "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", *(["true_label"] if labelled else []), "predicted_label", *classes])
        for i, src in enumerate(split.sources):
            truth = [classes[split.labels[i]]] if labelled else []
            writer.writerow([src, *truth, classes[probs[i].argmax()], *(f"{p:.6f}" for p in probs[i])])
    if labelled:
        ids = list(range(len(classes)))
        pred = single.argmax(axis=1)
        result["accuracy"] = float((pred == split.labels).mean())
        result["tta_accuracy"] = float((probs.argmax(axis=1) == split.labels).mean())
        result["report"] = classification_report(split.labels, pred, labels=ids, target_names=classes, digits=4, zero_division=0)
        result["confusion_png"] = out / "confusion_matrix.png"
        cm = confusion_matrix(split.labels, pred, labels=ids)
        plots.save(plots.confusion_matrix_figure(cm, classes, title=f"{Path(data_dir).name}: accuracy {result['accuracy']:.1%} (single view)"), result["confusion_png"])
    return result


# The class list lives once, in the data configs.
CLASSES_FILE = Path(__file__).resolve().parents[1] / "conf" / "data" / "_fer7.yaml"
DEFAULTS = {"model": None, "data_dir": None, "tta": 10, "batch_size": 256, "out_dir": None, "tracking_dir": "mlruns", "tracking_uri": None}


def main(argv: list[str] | None = None) -> int:
    args = OmegaConf.merge(DEFAULTS, OmegaConf.from_dotlist(argv if argv is not None else sys.argv[1:]))
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    unknown = sorted(set(args) - set(DEFAULTS))
    if unknown or not args.model or not args.data_dir:
        print(__doc__ + (f"\nunknown option(s): {unknown}" if unknown else "\nmodel= and data_dir= are required"), file=sys.stderr)
        return 2
    classes = list(OmegaConf.load(CLASSES_FILE).classes)
    out_dir = args.out_dir or f"outputs/evaluate/{time.strftime('%Y-%m-%d_%H-%M-%S')}"
    from fer_exp import tracking

    try:
        model = tracking.load_keras_model(args.model, args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"), args.tracking_dir)
        r = evaluate_folder(model, args.data_dir, classes, args.tta, out_dir, args.batch_size)
    except (DataError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{r['images']} images from {args.data_dir} ({r['skipped']} skipped)")
    if "accuracy" in r:
        print(f"accuracy: {r['accuracy']:.4f} single view, {r['tta_accuracy']:.4f} with {args.tta}-view TTA")
        print(f"per class (single view):\n{r['report']}")
        print(f"confusion matrix: {r['confusion_png']}")
    print(f"predictions ({args.tta}-view probabilities): {r['predictions']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
