"""A built-in, procedurally drawn FER-like data set: no download needed.

Each class has its own eyes, brows and mouth; every face gets a random pose,
scale, skin tone, background, brightness and noise, and the shape parameters
jitter, so neighbouring classes overlap a little. Deterministic per seed.
"""

from __future__ import annotations

import cv2
import numpy as np

from fer_exp.data.split import DataError, Split

CANVAS = 96  # drawn at 2x and downscaled, for smooth edges

# Per class: eye half-height, inner/outer brow offset (down is +), mouth shape
# ("curve" with bend > 0 smiling, "open" with half-width/half-height, "sneer"),
# and mouth half-width.
FEATURES = {
    "angry": dict(eye=2.5, brow=(6, -3), mouth="curve", bend=-1.5, width=9),
    "disgust": dict(eye=2.5, brow=(3, 0), mouth="sneer", bend=5, width=11),
    "fear": dict(eye=5.5, brow=(-6, -2), mouth="open", bend=4, width=11),
    "happy": dict(eye=3.5, brow=(0, 0), mouth="curve", bend=7, width=13),
    "neutral": dict(eye=3.5, brow=(0, 0), mouth="curve", bend=0, width=10),
    "sad": dict(eye=3.0, brow=(-5, 3), mouth="curve", bend=-6, width=11),
    "surprise": dict(eye=5.5, brow=(-7, -7), mouth="open", bend=9, width=7),
}


def _jitter(rng: np.random.Generator, value: float, rel: float = 0.25) -> float:
    return value * (1 + rng.uniform(-rel, rel))


def draw_face(kind: str, rng: np.random.Generator, size: int = 48) -> np.ndarray:
    """One random face of class `kind` as a (size, size) uint8 image."""
    f = FEATURES[kind]
    c = CANVAS
    # background: a random linear gradient
    yy, xx = np.mgrid[0:c, 0:c] / c
    bg = rng.uniform(30, 200) + rng.uniform(-60, 60) * xx + rng.uniform(-60, 60) * yy
    img = np.clip(bg, 0, 255).astype(np.float32)
    skin = float(rng.uniform(110, 230))
    dark = skin * rng.uniform(0.15, 0.4)
    cx, cy = c // 2, c // 2 + 2
    cv2.ellipse(
        img, (cx, cy), (int(_jitter(rng, 30, 0.1)), int(_jitter(rng, 38, 0.1))), 0, 0, 360, skin, -1, cv2.LINE_AA
    )
    # eyes and brows, mirrored
    eye_h = max(1.0, _jitter(rng, f["eye"]))
    inner, outer = (_jitter(rng, v, 0.3) + rng.normal(0, 0.8) for v in f["brow"])
    brow_y = cy - 18
    for side in (-1, 1):
        ex, ey = cx + side * 12, cy - 8
        cv2.ellipse(img, (ex, ey), (5, int(round(eye_h))), 0, 0, 360, dark, -1, cv2.LINE_AA)
        lift = rng.uniform(-1.5, 1.5) if kind == "disgust" and side == 1 else 0  # one-sided brow
        p1 = (cx + side * 5, int(brow_y + inner + lift))
        p2 = (cx + side * 19, int(brow_y + outer + lift))
        cv2.line(img, p1, p2, dark, 3, cv2.LINE_AA)
    # mouth
    mx, my, w, bend = cx, cy + 17, _jitter(rng, f["width"]), _jitter(rng, f["bend"])
    if f["mouth"] == "open":
        cv2.ellipse(img, (mx, my), (int(w), max(2, int(bend))), 0, 0, 360, dark, -1, cv2.LINE_AA)
    else:
        xs = np.linspace(-w, w, 15)
        if f["mouth"] == "sneer":  # raised on one side, a nose wrinkle above
            ys = -bend * (xs + w) / (2 * w) + 0.8 * np.sin(xs / w * np.pi)
            cv2.line(img, (cx - 4, cy + 4), (cx + 4, cy + 5), dark, 1, cv2.LINE_AA)
        else:
            ys = -bend * (xs / w) ** 2  # corners up when smiling (image y points down)
        pts = np.stack([mx + xs, my + ys], axis=1).round().astype(np.int32)
        cv2.polylines(img, [pts], False, dark, 3 if f["mouth"] != "curve" or abs(bend) > 1 else 4, cv2.LINE_AA)
    # pose, scale, shift
    m = cv2.getRotationMatrix2D((cx, cy), rng.uniform(-15, 15), rng.uniform(0.85, 1.15))
    m[:, 2] += rng.uniform(-5, 5, 2)
    img = cv2.warpAffine(img, m, (c, c), borderMode=cv2.BORDER_REFLECT)
    # brightness, contrast, blur, noise
    img = (img - 128) * rng.uniform(0.6, 1.3) + 128 + rng.uniform(-30, 30)
    img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
    if rng.random() < 0.5:
        img = cv2.GaussianBlur(img, (3, 3), rng.uniform(0.3, 1.0))
    img += rng.normal(0, rng.uniform(2, 12), img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_faces(n_per_class: int, classes: list[str], size: int = 48, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, size, size) uint8, labels (N,) int64 indexing `classes`): `n_per_class` faces of each class, shuffled."""
    unknown = [c for c in classes if c not in FEATURES]
    if unknown:
        raise ValueError(f"data=synthetic draws only {sorted(FEATURES)}; data.classes has {unknown}")
    if n_per_class < 1:
        raise ValueError(f"data.train_per_class / data.val_per_class must be >= 1, got {n_per_class}")
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(classes)), n_per_class)
    rng.shuffle(labels)
    images = np.stack([draw_face(classes[k], rng, size) for k in labels])
    return images, labels.astype(np.int64)


def synthetic_split(n_per_class: int, classes: list[str], size: int = 48, seed: int = 0) -> Split:
    """`n_per_class` drawn faces of each class as a Split."""
    try:
        images, labels = make_faces(n_per_class, classes, size, seed)
    except ValueError as e:
        raise DataError(str(e)) from None
    return Split(images, labels, digest=synthetic_digest(n_per_class, size, seed))


def synthetic_digest(n_per_class: int, size: int, seed: int) -> str:
    return f"synthetic-n{n_per_class}-s{size}-seed{seed}"
