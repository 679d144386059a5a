"""Load FER data into uint8 arrays: class folders, fer2013.csv or the synthetic set.

Pure functions with plain arguments: no Hydra, no MLflow. Every loader returns
`Split`s whose label ids are positions in the one configured class list.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from fer_exp.synthetic import make_faces

log = logging.getLogger(__name__)

# Bump when decoding changes, so old caches are not reused.
CACHE_VERSION = 1
CSV_USAGES = ("Training", "PublicTest", "PrivateTest")
CSV_SIDE = 48  # fer2013.csv holds 48x48 faces
DEFAULT_ROOT = Path("../shared/fer2013")
# Set (by hydra/launcher=ray) for jobs on cluster workers: no silent synthetic fallback there.
REMOTE_ENV = "FER_EXP_REMOTE"


class DataError(ValueError):
    """Bad data or data settings; the message says what to change."""


@dataclass
class Split:
    images: np.ndarray  # (N, H, W) uint8
    labels: np.ndarray  # (N,) int64, index into the class list
    sources: list[str] = field(default_factory=list)  # file path or "csv line N"
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (source, reason)
    stats: dict[str, int] = field(default_factory=dict)  # e.g. resized, to_gray
    digest: str = ""

    def __len__(self) -> int:
        return len(self.labels)

    def counts(self, num_classes: int) -> np.ndarray:
        return np.bincount(self.labels, minlength=num_classes)


# --- decoding ---------------------------------------------------------------


def to_gray(img: np.ndarray, size: int) -> tuple[np.ndarray, dict[str, int]]:
    """Any OpenCV image (gray, BGR, BGRA, 8/16 bit, any size) -> (size, size) uint8."""
    stats = {"to_gray": 0, "resized": 0}
    if img.ndim == 3:
        if img.shape[2] > 1:
            code = cv2.COLOR_BGRA2GRAY if img.shape[2] == 4 else cv2.COLOR_BGR2GRAY
            img = cv2.cvtColor(img, code)
            stats["to_gray"] = 1
        else:
            img = img[:, :, 0]
    if img.dtype == np.uint16:
        img = (img // 257).astype(np.uint8)
    elif img.dtype != np.uint8:
        img = cv2.normalize(img, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    if img.shape != (size, size):
        interp = cv2.INTER_AREA if min(img.shape) > size else cv2.INTER_LINEAR
        img = cv2.resize(img, (size, size), interpolation=interp)
        stats["resized"] = 1
    return img, stats


def decode_file(path: str, size: int) -> tuple[np.ndarray | None, str, dict[str, int]]:
    """Decode one image file; returns (image or None, reason it was skipped, stats)."""
    try:
        raw = np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        return None, f"unreadable: {e.strerror}", {}
    if raw.size == 0:
        return None, "empty file", {}
    # libjpeg decodes a truncated JPEG into a half-grey picture with only a
    # warning on stderr: catch it by the missing end-of-image marker.
    if raw[:2].tobytes() == b"\xff\xd8" and b"\xff\xd9" not in raw[-64:].tobytes():
        return None, "truncated or corrupt JPEG", {}
    img = cv2.imdecode(raw, cv2.IMREAD_UNCHANGED)
    if img is None:
        return None, "not an image OpenCV can read", {}
    img, stats = to_gray(img, size)
    return img, "", stats


def decode_files(
    paths: list[str], size: int, desc: str
) -> tuple[np.ndarray, list[bool], list[tuple[str, str]], dict[str, int]]:
    """Decode many files in parallel (OpenCV releases the GIL)."""
    images = np.zeros((len(paths), size, size), np.uint8)
    ok = [False] * len(paths)
    skipped: list[tuple[str, str]] = []
    stats = {"to_gray": 0, "resized": 0}
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        results = pool.map(lambda p: decode_file(p, size), paths, chunksize=64)
        for i, (img, reason, st) in enumerate(tqdm(results, total=len(paths), desc=desc, unit="img", mininterval=1.0)):
            if img is None:
                skipped.append((paths[i], reason))
                continue
            images[i], ok[i] = img, True
            for k, v in st.items():
                stats[k] += v
    return images, ok, skipped, stats


# --- the on-disk cache --------------------------------------------------------


def files_digest(entries: list[tuple[str, int, int]], settings: dict) -> str:
    """Digest of (path, size, mtime) triples plus the preprocessing settings."""
    h = hashlib.sha256(json.dumps({"v": CACHE_VERSION, **settings}, sort_keys=True).encode())
    for path, size, mtime in entries:
        h.update(f"{path}\0{size}\0{mtime}\n".encode())
    return h.hexdigest()


def _cache_path(cache_dir: str | None, kind: str, digest: str) -> Path | None:
    return Path(cache_dir) / f"{kind}-{digest[:20]}.npz" if cache_dir else None


def _read_cache(path: Path | None) -> Split | None:
    if path is None or not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            return Split(
                z["images"],
                z["labels"],
                list(z["sources"]),
                [tuple(s) for s in meta["skipped"]],
                meta["stats"],
                meta["digest"],
            )
    except (OSError, ValueError, KeyError) as e:
        log.warning("ignoring unreadable cache %s (%s)", path, e)
        return None


def _write_cache(path: Path | None, split: Split) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = json.dumps({"skipped": split.skipped, "stats": split.stats, "digest": split.digest})
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")  # atomic: parallel jobs share the cache
    np.savez(tmp, images=split.images, labels=split.labels, sources=np.array(split.sources, dtype=str), meta=meta)
    os.replace(tmp, path)


# --- class folders ------------------------------------------------------------


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
    digest = _folder_digest(paths, image_size, classes, unknown_classes)
    cache = _cache_path(cache_dir, f"{Path(root).name}-{split}", digest)
    split_data = _read_cache(cache)
    if split_data is not None:
        log.info("loaded %s/%s from cache %s", root, split, cache)
        return split_data
    images, ok, skipped, stats = decode_files(paths, image_size, desc=f"decode {split}")
    keep = np.array(ok, dtype=bool)
    labels = np.array([lab for _, lab in items], dtype=np.int64)
    split_data = Split(images[keep], labels[keep], [p for p, k in zip(paths, ok) if k], skipped, stats, digest)
    _write_cache(cache, split_data)
    return split_data


def _folder_digest(paths: list[str], image_size: int, classes: list[str], unknown_classes: str) -> str:
    entries = [(p, st.st_size, st.st_mtime_ns) for p in paths for st in [os.stat(p)]]
    return files_digest(
        entries, {"kind": "folders", "size": image_size, "classes": list(classes), "unknown": unknown_classes}
    )


# --- fer2013.csv --------------------------------------------------------------


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
        digest = _csv_digest(path, u, image_size, classes, csv_classes)
        return digest, _cache_path(cache_dir, f"{Path(path).stem}-{u}", digest)

    split = _read_cache(cache_for(usage)[1]) if found else None
    if split is None:
        for u, parsed in read_csv_splits(path, classes, csv_classes, image_size).items():
            parsed.digest, cache = cache_for(u)
            _write_cache(cache, parsed)
            if u == usage:
                split = parsed
    return split


def _csv_digest(path: str | Path, usage: str, image_size: int, classes: list[str], csv_classes: list[str]) -> str:
    st = Path(path).stat() if Path(path).is_file() else None
    entries = [(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)] if st else []
    return files_digest(
        entries, {"kind": "csv", "usage": usage, "size": image_size, "classes": list(classes), "csv": list(csv_classes)}
    )


# --- the built-in synthetic set -------------------------------------------------


def synthetic_split(n_per_class: int, classes: list[str], size: int = 48, seed: int = 0) -> Split:
    """`n_per_class` drawn faces of each class (see synthetic.py) as a Split."""
    try:
        images, labels = make_faces(n_per_class, classes, size, seed)
    except ValueError as e:
        raise DataError(str(e)) from None
    return Split(images, labels, digest=_synthetic_digest(n_per_class, size, seed))


def _synthetic_digest(n_per_class: int, size: int, seed: int) -> str:
    return f"synthetic-n{n_per_class}-s{size}-seed{seed}"


# --- checks and helpers -------------------------------------------------------


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
    """'balanced' weights: n_samples / (n_classes * count), for classes present."""
    counts = np.bincount(labels, minlength=num_classes)
    present = counts > 0
    w = len(labels) / (present.sum() * np.maximum(counts, 1))
    return {i: float(w[i]) for i in range(num_classes) if present[i]}


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
            return _folder_digest([p for p, _ in scan_folder(root, split, classes, unknown)], size, classes, unknown)

        return str(root.resolve()), split_names, load, digest
    if fmt == "csv":

        def load(name: str, split: str) -> Split:
            return load_csv_split(cfg["path"], split, classes, cfg["csv_classes"], size, cache)

        def digest(name: str, split: str) -> str:
            if not Path(cfg["path"]).is_file():
                raise DataError(f"data.path={cfg['path']!r}: file not found ({Path(cfg['path']).resolve()})")
            return _csv_digest(cfg["path"], split, size, classes, cfg["csv_classes"])

        return str(Path(cfg["path"]).resolve()), split_names, load, digest
    if fmt == "synthetic":
        per_class = {"train": cfg.get("train_per_class", 300), "validation": cfg.get("val_per_class", 60)}

        def load(name: str, split: str) -> Split:
            return synthetic_split(per_class[name], classes, size, seed=seed + (name == "validation"))

        def digest(name: str, split: str) -> str:
            return _synthetic_digest(per_class[name], size, seed + (name == "validation"))

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
