"""Test-time augmentation: average the softmax over flipped and shifted views."""

from __future__ import annotations

import numpy as np


def make_views(images: np.ndarray, n_views: int, shift: int = 3) -> list[np.ndarray]:
    """Up to 10 views of (N, H, W) images: the original and shifted crops, each also flipped.

    Order: original, flip, then for each corner offset (+-shift, +-shift) the crop and its flip.
    """
    if not 1 <= n_views <= 10:
        raise ValueError(f"tta views must be 1..10, got {n_views}")
    h, w = images.shape[1:3]
    padded = np.pad(images, ((0, 0), (shift, shift), (shift, shift)), mode="edge")
    views = []
    for dy, dx in ((0, 0), (-shift, -shift), (-shift, shift), (shift, -shift), (shift, shift)):
        crop = padded[:, shift + dy : shift + dy + h, shift + dx : shift + dx + w]
        views += [crop, crop[:, :, ::-1]]
    return views[:n_views]


def view_probabilities(model, images: np.ndarray, n_views: int = 1, batch_size: int = 256) -> np.ndarray:
    """Class probabilities (n_views, N, classes) for each view of uint8 (N, H, W) images.

    One predict call over all views (each call has a fixed set-up cost); views are scaled per batch.
    """
    import tensorflow as tf

    views = np.concatenate(make_views(images, n_views))[..., None]
    ds = tf.data.Dataset.from_tensor_slices(views).batch(batch_size).map(lambda x: tf.cast(x, tf.float32) / 255.0)
    probs = np.asarray(model.predict(ds, verbose=0), dtype=np.float64)
    return probs.reshape(n_views, len(images), -1)


def predict_proba(model, images: np.ndarray, n_views: int = 1, batch_size: int = 256) -> np.ndarray:
    """Mean class probabilities over `n_views` views of uint8 (N, H, W) images."""
    return view_probabilities(model, images, n_views, batch_size).mean(axis=0)
