"""Small generated data sets on disk: class folders of synthetic faces, odd files, fer2013.csv."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

CLASSES = ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]


def write_folders(
    root: Path, per_class: int = 3, splits=("train", "validation"), classes=CLASSES, ext: str = ".png", seed: int = 0
):
    """Class folders of synthetic faces: root/<split>/<class>/<i><ext>. Returns {split: Split}."""
    from fer_exp.data import synthetic_split

    out = {}
    for k, split in enumerate(splits):
        s = synthetic_split(per_class, list(classes), 48, seed=seed + k)
        for i, (img, label) in enumerate(zip(s.images, s.labels)):
            folder = root / split / classes[label]
            folder.mkdir(parents=True, exist_ok=True)
            assert cv2.imwrite(str(folder / f"{i:04d}{ext}"), img)
        out[split] = s
    return out


def dirty_folders(root: Path) -> Path:
    """Class folders (2 JPEGs a class) whose train/happy also holds every kind of odd input: a
    truncated JPEG, an empty file, a text file (all three skipped), a colour PNG, a PNG with
    alpha (both turned gray) and an oversized BMP (resized)."""
    write_folders(root, per_class=2, ext=".jpg")
    happy = root / "train" / "happy"
    good = next(happy.iterdir()).read_bytes()
    (happy / "corrupt.jpg").write_bytes(good[: len(good) // 2])
    (happy / "empty.jpg").write_bytes(b"")
    (happy / "notes.jpg").write_text("not an image at all")
    rng = np.random.default_rng(0)
    cv2.imwrite(str(happy / "colour.png"), rng.integers(0, 255, (48, 48, 3), dtype=np.uint8))
    cv2.imwrite(str(happy / "alpha.png"), rng.integers(0, 255, (48, 48, 4), dtype=np.uint8))
    cv2.imwrite(str(happy / "big.bmp"), rng.integers(0, 255, (100, 100), dtype=np.uint8))
    return root


def by_class(split):
    """The images of a generated split in the loader's order: class by class, file order."""
    order = np.concatenate([np.flatnonzero(split.labels == c) for c in range(len(CLASSES))])
    return split.images[order], split.labels[order]


def write_csv(path, splits, rows_before=(), rows_after=()):
    """fer2013.csv (emotion,pixels,Usage; the CSV's own emotion ids) from {Usage: Split}."""
    csv_ids = {name: i for i, name in enumerate(["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"])}
    lines = ["emotion,pixels,Usage", *rows_before]
    for usage, split in splits.items():
        images, labels = by_class(split)
        for img, lab in zip(images, labels):
            lines.append(f"{csv_ids[CLASSES[lab]]},{' '.join(map(str, img.ravel()))},{usage}")
    path.write_text("\n".join([*lines, *rows_after]) + "\n")
