"""FER2013 as the original fer2013.csv (emotion,pixels,Usage), split by Usage, through the cache."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from tqdm import tqdm

from fer_exp.data.decode import to_gray
from fer_exp.data.split import DataError, Split, cache_path, files_digest, read_cache, write_cache

CSV_USAGES = ("Training", "PublicTest", "PrivateTest")

CSV_SIDE = 48  # fer2013.csv holds 48x48 faces


def _parse_csv_row(
    row: list[str], col: dict[str, int], n_columns: int, n_emotions: int
) -> tuple[str | None, int, np.ndarray | str]:
    """(Usage or None when it is unknown, emotion id, 48x48 uint8 face or the reason the row is bad)."""
    if len(row) < n_columns:
        return None, -1, f"{len(row)} columns, expected {n_columns}"
    emotion, pixels, usage = row[col["emotion"]].strip(), row[col["pixels"]], row[col["Usage"]].strip()
    if usage not in CSV_USAGES:
        return None, -1, f"unknown Usage {usage!r} (expected one of {', '.join(CSV_USAGES)})"
    if not emotion.isdigit() or int(emotion) >= n_emotions:
        return usage, -1, f"unknown emotion id {emotion!r} (expected 0..{n_emotions - 1})"
    try:
        values = np.array(pixels.split(), dtype=np.float64)
    except ValueError:
        return usage, -1, "non-numeric pixel values"
    if values.size != CSV_SIDE * CSV_SIDE:
        return usage, -1, f"{values.size} pixel values, expected {CSV_SIDE}x{CSV_SIDE} = {CSV_SIDE * CSV_SIDE}"
    if values.min() < 0 or values.max() > 255:
        return usage, -1, "pixel values outside 0..255"
    return usage, int(emotion), values.reshape(CSV_SIDE, CSV_SIDE).astype(np.uint8)


def read_csv_splits(
    path: str | Path, classes: list[str], csv_classes: list[str], image_size: int = 48
) -> dict[str, Split]:
    """Parse fer2013.csv (emotion,pixels,Usage) into one Split per Usage value.

    CSV emotion ids index `csv_classes`; they are mapped by name onto `classes`.
    A bad row is listed in the `skipped` of its Usage's split, or of every split
    when its Usage itself is unknown.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"CSV file not found: {path.resolve()}\n"
            "Expected: the original fer2013.csv with columns emotion,pixels,Usage.\n"
            "Fix: python -m fer_exp.run data=fer2013_csv data.path=/path/to/fer2013.csv"
        )
    not_configured = [c for c in csv_classes if c not in classes]
    if not_configured:
        raise DataError(f"data.csv_classes {not_configured} are not in data.classes {list(classes)}")
    to_label = [classes.index(c) for c in csv_classes]
    rows: dict[str, tuple[list, list, list]] = {u: ([], [], []) for u in CSV_USAGES}
    bad: list[tuple[str | None, str, str]] = []  # (usage or None, where, why)
    stats = {"to_gray": 0, "resized": 0}
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        if not {"emotion", "pixels", "Usage"} <= set(header):
            raise DataError(f"{path}: header is {header}; expected the columns emotion,pixels,Usage")
        col = {name: header.index(name) for name in ("emotion", "pixels", "Usage")}
        for row in tqdm(reader, desc=f"read {path.name}", unit="row", mininterval=1.0):
            where = f"{path.name} line {reader.line_num}"
            usage, emotion, face = _parse_csv_row(row, col, len(header), len(csv_classes))
            if isinstance(face, str):
                bad.append((usage, where, face))
                continue
            img, st = to_gray(face, image_size)
            for k, v in st.items():
                stats[k] += v
            for values, value in zip(rows[usage], (img, to_label[emotion], where)):
                values.append(value)
    out = {}
    for usage, (images, labels, sources) in rows.items():
        arr = np.stack(images) if images else np.zeros((0, image_size, image_size), np.uint8)
        skipped = [(where, why) for u, where, why in bad if u in (usage, None)]
        out[usage] = Split(arr, np.array(labels, dtype=np.int64), sources, skipped, dict(stats))
    return out


def load_csv_split(
    path: str | Path,
    usage: str,
    classes: list[str],
    csv_classes: list[str],
    image_size: int = 48,
    cache_dir: str | None = None,
) -> Split:
    """One Usage of fer2013.csv as a Split, through the on-disk cache.

    A cache miss parses the file once and caches every Usage, so the next split loads from cache.
    """
    if usage not in CSV_USAGES:
        raise DataError(f"CSV split {usage!r} is not a Usage value; use one of {', '.join(CSV_USAGES)}")
    found = Path(path).is_file()

    def cache_for(u: str) -> tuple[str, Path | None]:
        digest = csv_digest(path, u, image_size, classes, csv_classes)
        return digest, cache_path(cache_dir, f"{Path(path).stem}-{u}", digest)

    split = read_cache(cache_for(usage)[1]) if found else None
    if split is None:
        for u, parsed in read_csv_splits(path, classes, csv_classes, image_size).items():
            parsed.digest, cache = cache_for(u)
            write_cache(cache, parsed)
            if u == usage:
                split = parsed
    return split


def csv_digest(path: str | Path, usage: str, image_size: int, classes: list[str], csv_classes: list[str]) -> str:
    st = Path(path).stat() if Path(path).is_file() else None
    entries = [(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)] if st else []
    return files_digest(
        entries, {"kind": "csv", "usage": usage, "size": image_size, "classes": list(classes), "csv": list(csv_classes)}
    )
