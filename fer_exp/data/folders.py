"""FER data as class folders: <root>/<split>/<class>/<image files>, decoded through the cache."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

import numpy as np

from fer_exp.data.decode import decode_files
from fer_exp.data.split import DataError, Split, cache_path, files_digest, read_cache, write_cache

log = logging.getLogger("fer_exp.data")

# Set (by hydra/launcher=ray) for jobs on cluster workers: no silent synthetic fallback there.
REMOTE_ENV = "FER_EXP_REMOTE"


def _layout_help(root: Path, split: str) -> str:
    return (
        f"Expected layout: {root}/{split}/<class>/<image files>, e.g. {root}/{split}/happy/0001.jpg.\n"
        "Fix: point data.root at the folder that holds the split folders "
        "(python -m fer_exp.run data.root=/path/to/fer2013), rename the split with "
        "data.train_split=... / data.val_split=..., or use the built-in set with data=synthetic."
        + (
            f"\nThis job ran on a {os.environ[REMOTE_ENV]} worker, in {Path.cwd()}: every node needs the data at the same path."
            if os.environ.get(REMOTE_ENV)
            else ""
        )
    )


def scan_folder(
    root: str | Path, split: str, classes: list[str], unknown_classes: str = "error"
) -> list[tuple[str, int]]:
    """List (file path, label id) of <root>/<split>/<class>/*, sorted, labels from `classes`."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data root not found: {root.resolve()} on {socket.gethostname()}\n{_layout_help(root, split)}")
    split_dir = root / split
    if not split_dir.is_dir():
        found = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise DataError(
            f"split folder not found: {split_dir.resolve()} (folders there: {found or 'none'})\n{_layout_help(root, split)}"
        )
    folders = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    unknown = [f for f in folders if f not in classes]
    if unknown and unknown_classes != "ignore":
        raise DataError(
            f"{split_dir}: class folder(s) {unknown} are not in data.classes {list(classes)}.\n"
            "Fix: add them to data.classes, rename the folders, or skip them with data.unknown_classes=ignore."
        )
    if unknown:
        log.warning("%s: ignoring class folders not in data.classes: %s", split_dir, unknown)
    missing = [c for c in classes if c not in folders]
    if missing:
        log.warning("%s: no folder for class(es) %s; label ids stay as configured", split_dir, missing)
    items = []
    for label, name in enumerate(classes):
        folder = split_dir / name
        if folder.is_dir():
            items += [(str(p), label) for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".")]
    return items


def load_folder_split(
    root: str | Path,
    split: str,
    classes: list[str],
    image_size: int = 48,
    cache_dir: str | None = None,
    unknown_classes: str = "error",
) -> Split:
    """Decode <root>/<split>/<class>/* into a Split, through the on-disk cache."""
    items = scan_folder(root, split, classes, unknown_classes)
    paths = [p for p, _ in items]
    digest = folder_digest(paths, image_size, classes, unknown_classes)
    cache = cache_path(cache_dir, f"{Path(root).name}-{split}", digest)
    split_data = read_cache(cache)
    if split_data is not None:
        log.info("loaded %s/%s from cache %s", root, split, cache)
        return split_data
    images, ok, skipped, stats = decode_files(paths, image_size, desc=f"decode {split}")
    keep = np.array(ok, dtype=bool)
    labels = np.array([lab for _, lab in items], dtype=np.int64)
    split_data = Split(images[keep], labels[keep], [p for p, k in zip(paths, ok) if k], skipped, stats, digest)
    write_cache(cache, split_data)
    return split_data


def folder_digest(paths: list[str], image_size: int, classes: list[str], unknown_classes: str) -> str:
    entries = [(p, st.st_size, st.st_mtime_ns) for p in paths for st in [os.stat(p)]]
    return files_digest(
        entries, {"kind": "folders", "size": image_size, "classes": list(classes), "unknown": unknown_classes}
    )
