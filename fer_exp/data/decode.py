"""Decode image files of any kind OpenCV reads into gray, square uint8 faces."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
from tqdm import tqdm


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
