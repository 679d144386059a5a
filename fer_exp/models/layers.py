"""Keras layers of ours: BatchNormalization on TensorFlow's fused kernel, the frozen patch-whitening
stem; and `portable`, the same model with Keras's own layers only and uncompiled (for processes without
fer_exp).
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers

# The name of the frozen stem layer that `whiten` sets (the airbench builder's stem=whiten)
WHITEN = "whiten"


@keras.saving.register_keras_serializable(package="fer_exp")
class FusedBatchNormalization(layers.BatchNormalization):
    """Keras's BatchNormalization (same weights, config and maths) computed by TensorFlow's fused kernel.

    Keras 3 computes batch norm from separate ops (moments in float32, then scale and shift), which on a
    CPU in bfloat16 costs more than the convolutions around it; tf.keras 2 had `fused=True` for this.
    FusedBatchNormV3 (oneDNN's on a CPU) does it in one op. NHWC 4-D inputs, axis -1 only. One difference:
    the moving variance is updated with the batch's unbiased variance (n / (n - 1) of Keras's).
    """

    def build(self, input_shape):
        if len(input_shape) != 4 or self.axis not in (-1, 3):
            raise ValueError(f"{type(self).__name__} takes NHWC images normalised on the last axis, got {input_shape}")
        super().build(input_shape)

    def call(self, inputs, training=None, mask=None):
        import tensorflow as tf

        gamma = self.gamma if self.scale else tf.ones_like(self.moving_mean)
        beta = self.beta if self.center else tf.zeros_like(self.moving_mean)
        common = dict(
            scale=gamma, offset=beta, mean=self.moving_mean, variance=self.moving_variance, epsilon=self.epsilon
        )
        if training and self.trainable:
            y, mean, variance, *_ = tf.compat.v1.nn.fused_batch_norm(
                inputs, **common, is_training=True, exponential_avg_factor=1.0 - self.momentum
            )
            self.moving_mean.assign(mean)
            self.moving_variance.assign(variance)
            return y
        return tf.compat.v1.nn.fused_batch_norm(inputs, **common, is_training=False)[0]


def batch_norm(kind: str, **kwargs) -> layers.BatchNormalization:
    """kind: keras (Keras's own layer) | fused (FusedBatchNormalization)."""
    if kind not in ("keras", "fused"):
        raise ValueError(f"model.batch_norm={kind!r}: use keras or fused")
    return (FusedBatchNormalization if kind == "fused" else layers.BatchNormalization)(**kwargs)


def portable(model: keras.Model) -> keras.Model:
    """What a process that never imports fer_exp can load (`mlflow models serve`): `model` with Keras's own
    BatchNormalization in place of FusedBatchNormalization, same weights, and uncompiled (a distilled
    model's loss is fer_exp's DistillationLoss). The model itself when it is uncompiled and has none."""

    def clone(layer):
        if isinstance(layer, FusedBatchNormalization):
            return layers.BatchNormalization.from_config(layer.get_config())
        return layer.__class__.from_config(layer.get_config())

    twin = model
    if any(isinstance(layer, FusedBatchNormalization) for layer in model.layers):
        twin = keras.models.clone_model(model, clone_function=clone)  # compiled as `model` is
        twin.set_weights(model.get_weights())
    return keras.Model(twin.input, twin.output, name=twin.name) if twin.compiled else twin  # same layers


def whitening_weights(images: np.ndarray, size: int, eps: float = 5e-4) -> np.ndarray:
    """A size x size convolution that whitens image patches (airbench's first layer): the eigenvectors of
    the patches' covariance, each scaled by 1 / sqrt(eigenvalue + eps), and their negatives (for a ReLU
    after it). images: (N, H, W) uint8. Returns the kernel, (size, size, 1, 2 size^2)."""
    x = images.astype(np.float32) / 255.0
    patches = np.lib.stride_tricks.sliding_window_view(x, (size, size), axis=(1, 2))
    patches = patches.reshape(-1, size * size)
    patches = patches[:: max(1, len(patches) // 1_000_000)]  # a million patches are plenty
    patches = patches - patches.mean(axis=0)
    eigenvalues, eigenvectors = np.linalg.eigh(np.cov(patches, rowvar=False))
    filters = eigenvectors.T / np.sqrt(eigenvalues + eps)[:, None]  # (size^2, size^2), one filter a row
    filters = np.concatenate([filters, -filters])
    kernel = filters.T.reshape(size, size, 1, 2 * size * size)
    return kernel.astype(np.float32)


def whiten(model: keras.Model, images: np.ndarray) -> bool:
    """Set the model's frozen WHITEN layer (if it has one) from the training `images`; True if it had."""
    try:
        layer = model.get_layer(WHITEN)
    except ValueError:
        return False
    size = layer.kernel.shape[0]
    layer.kernel.assign(whitening_weights(images, size)[..., : layer.kernel.shape[-1]])
    return True
