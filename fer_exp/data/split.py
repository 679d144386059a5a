"""A loaded split of images (uint8 arrays and label ids), the errors data raise, and the on-disk cache
of decoded splits, keyed by a digest of the files and the settings. No Hydra, no MLflow."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger("fer_exp.data")

# Bump when decoding changes, so old caches are not reused.
CACHE_VERSION = 1


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


def files_digest(entries: list[tuple[str, int, int]], settings: dict) -> str:
    """Digest of (path, size, mtime) triples plus the preprocessing settings."""
    h = hashlib.sha256(json.dumps({"v": CACHE_VERSION, **settings}, sort_keys=True).encode())
    for path, size, mtime in entries:
        h.update(f"{path}\0{size}\0{mtime}\n".encode())
    return h.hexdigest()


def cache_path(cache_dir: str | None, kind: str, digest: str) -> Path | None:
    return Path(cache_dir) / f"{kind}-{digest[:20]}.npz" if cache_dir else None


def read_cache(path: Path | None) -> Split | None:
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


def write_cache(path: Path | None, split: Split) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = json.dumps({"skipped": split.skipped, "stats": split.stats, "digest": split.digest})
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")  # atomic: parallel jobs share the cache
    np.savez(tmp, images=split.images, labels=split.labels, sources=np.array(split.sources, dtype=str), meta=meta)
    os.replace(tmp, path)
