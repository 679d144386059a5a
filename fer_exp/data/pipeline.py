"""The tf.data input pipeline: uint8 arrays in, augmented float batches out."""

from __future__ import annotations

import numpy as np
import tensorflow as tf


def to_inputs(images) -> tf.Tensor:
    """uint8 (..., H, W) gray images -> float32 (..., H, W, 1) in [0, 1]: what every model takes."""
    return tf.cast(images, tf.float32)[..., tf.newaxis] / 255.0


def make_dataset(
    images: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    batch_size: int,
    augmenter=None,
    training: bool = False,
    seed: int | None = None,
    soft: np.ndarray | None = None,
    teacher=None,
) -> tf.data.Dataset:
    """Batches of ((B, H, W, 1) float32 in [0, 1], (B, num_classes) one-hot).

    Training sets are reshuffled each epoch (seeded) and augmented per batch. soft: (N, num_classes)
    teacher probabilities per image (distillation), which then follow the one-hot labels: (B, 2 x num_classes).
    teacher: instead of soft, a function of each augmented batch -> its (B, num_classes) probabilities,
    so that the teachers see the very views the student learns from.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    ds = tf.data.Dataset.from_tensor_slices((images, labels) if soft is None else (images, labels, soft))
    if training:
        ds = ds.shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)

    def prepare(x, y, *targets):
        x = to_inputs(x)
        if training and augmenter is not None:
            x = augmenter(x, training=True)
        if teacher is not None:
            targets = (tf.cast(teacher(x), tf.float32),)
        return x, tf.concat([tf.one_hot(y, num_classes), *targets], axis=-1) if targets else tf.one_hot(y, num_classes)

    # Deterministic order of batches; augmentation runs in parallel.
    return ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(tf.data.AUTOTUNE)
