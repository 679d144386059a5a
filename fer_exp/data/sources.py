"""The data a `data` config describes: its train and validation splits from class folders, fer2013.csv or
the synthetic set, checked and counted, and their digests.

Pure functions with plain arguments: no Hydra, no MLflow. Every loader returns
`Split`s whose label ids are positions in the one configured class list.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from fer_exp.data.fer_csv import csv_digest, load_csv_split
from fer_exp.data.folders import REMOTE_ENV, folder_digest, load_folder_split, scan_folder
from fer_exp.data.split import DataError, Split
from fer_exp.data.synthetic import synthetic_digest, synthetic_split

log = logging.getLogger(__name__)

DEFAULT_ROOT = Path("../shared/fer2013")


def limit_per_class(split: Split, n: int | None, num_classes: int) -> Split:
    """Keep the first `n` images of each class (all when n is None)."""
    if not n:
        return split
    keep = np.concatenate([np.flatnonzero(split.labels == c)[:n] for c in range(num_classes)])
    keep.sort()
    sources = [split.sources[i] for i in keep] if split.sources else []
    return Split(split.images[keep], split.labels[keep], sources, split.skipped, split.stats, split.digest)


def check_split(split: Split, name: str, classes: list[str], strict: bool, require_all_classes: bool) -> None:
    """Raise DataError for splits that cannot be trained or validated on; warn about skipped files."""
    if split.skipped:
        listing = "\n".join(f"  {src}: {why}" for src, why in split.skipped[:50])
        more = f"\n  ... and {len(split.skipped) - 50} more" if len(split.skipped) > 50 else ""
        if strict:
            raise DataError(
                f"{name}: {len(split.skipped)} unreadable file(s) or row(s) (data.strict=true):\n{listing}{more}"
            )
        log.warning("%s: skipped %d unreadable file(s) or row(s):\n%s%s", name, len(split.skipped), listing, more)
    if len(split) == 0:
        raise DataError(
            f"{name}: no usable images. Check the folder or CSV, or the split name (data.train_split / data.val_split)."
        )
    absent = [c for c, n in zip(classes, split.counts(len(classes))) if n == 0]
    if absent and require_all_classes:
        raise DataError(
            f"{name}: no images of class(es) {absent}, but the model's head has {len(classes)} outputs "
            f"for data.classes {list(classes)}. Add images of those classes or remove them from data.classes."
        )
    if absent:
        log.warning("%s: no images of class(es) %s", name, absent)


def count_table(splits: dict[str, Split], classes: list[str]) -> str:
    """A per-class count table, one column per split."""
    names = list(splits)
    width = max(len(c) for c in [*classes, "total"]) + 2
    lines = ["class".ljust(width) + "".join(n.rjust(12) for n in names)]
    counts = {n: s.counts(len(classes)) for n, s in splits.items()}
    for i, c in enumerate(classes):
        lines.append(c.ljust(width) + "".join(str(counts[n][i]).rjust(12) for n in names))
    lines.append("total".ljust(width) + "".join(str(len(splits[n])).rjust(12) for n in names))
    return "\n".join(lines)


def class_weights(labels: np.ndarray, num_classes: int) -> dict[int, float]:
    """scikit-learn's 'balanced' weights, n_samples / (n_classes * count), for the classes present, as
    Keras's fit(class_weight=) takes them."""
    from sklearn.utils.class_weight import compute_class_weight

    present = np.unique(labels)
    weights = compute_class_weight("balanced", classes=present, y=labels)
    return {int(c): float(w) for c, w in zip(present, weights)}


def with_fallback(cfg: dict) -> dict:
    """The data config a job really uses: a folder config without a root and without
    ../shared/fer2013 becomes the synthetic set (registered as fer-synthetic, never fer).

    Not on a cluster worker (REMOTE_ENV set): a job there must not quietly train on other
    data than the sweep was started for; loading fails with a message naming the node.
    """
    if cfg["format"] != "folders" or cfg.get("root") is not None or DEFAULT_ROOT.is_dir() or os.environ.get(REMOTE_ENV):
        return cfg
    log.warning(
        "%s not found: using the built-in synthetic set (set data.root to use real data)", DEFAULT_ROOT.resolve()
    )
    return {**cfg, "format": "synthetic", "name": "synthetic", "register_as": "fer-synthetic"}


def _sources(cfg: dict, seed: int) -> tuple[str, dict[str, str], callable, callable]:
    """(description of the source, {"train": split name, "validation": ...}, load(name, split) -> Split,
    digest(name, split) -> str) for a plain `data` config; digest reads no image."""
    classes, size, cache = list(cfg["classes"]), int(cfg["image_size"]), cfg.get("cache_dir")
    fmt = cfg["format"]
    split_names = {"train": cfg.get("train_split", "train"), "validation": cfg.get("val_split", "validation")}
    if fmt == "folders":
        root = Path(cfg["root"]) if cfg.get("root") is not None else DEFAULT_ROOT
        unknown = cfg.get("unknown_classes", "error")

        def load(name: str, split: str) -> Split:
            return load_folder_split(root, split, classes, size, cache, unknown)

        def digest(name: str, split: str) -> str:
            return folder_digest([p for p, _ in scan_folder(root, split, classes, unknown)], size, classes, unknown)

        return str(root.resolve()), split_names, load, digest
    if fmt == "csv":

        def load(name: str, split: str) -> Split:
            return load_csv_split(cfg["path"], split, classes, cfg["csv_classes"], size, cache)

        def digest(name: str, split: str) -> str:
            if not Path(cfg["path"]).is_file():
                raise DataError(f"data.path={cfg['path']!r}: file not found ({Path(cfg['path']).resolve()})")
            return csv_digest(cfg["path"], split, size, classes, cfg["csv_classes"])

        return str(Path(cfg["path"]).resolve()), split_names, load, digest
    if fmt == "synthetic":
        per_class = {"train": cfg.get("train_per_class", 300), "validation": cfg.get("val_per_class", 60)}

        def load(name: str, split: str) -> Split:
            return synthetic_split(per_class[name], classes, size, seed=seed + (name == "validation"))

        def digest(name: str, split: str) -> str:
            return synthetic_digest(per_class[name], size, seed + (name == "validation"))

        return "synthetic", split_names, load, digest
    raise DataError(f"data.format={fmt!r} is not one of folders, csv, synthetic")


def load_data(cfg: dict, seed: int = 0) -> tuple[dict[str, Split], str]:
    """Load the train and validation splits that a plain `data` config describes.

    Returns ({"train": Split, "validation": Split}, a description of the source).
    A null folder root means ../shared/fer2013 (see with_fallback for when that is absent).
    """
    source, split_names, load, _ = _sources(cfg, seed)
    classes = list(cfg["classes"])
    splits = {}
    for name, split in split_names.items():
        data = load(name, split)
        check_split(data, f"{name} split {split!r} of {source}", classes, bool(cfg.get("strict")), name == "train")
        splits[name] = limit_per_class(data, cfg.get("limit_per_class"), len(classes))
    return splits, source


def data_digests(cfg: dict, seed: int = 0) -> tuple[dict[str, str], str]:
    """({"train": digest, "validation": digest}, source) of the files a `data` config finds now, as
    load_data records them, without decoding an image. Raises DataError when the data is missing."""
    source, split_names, _, digest = _sources(cfg, seed)
    return {name: digest(name, split) for name, split in split_names.items()}, source
