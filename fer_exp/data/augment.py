"""Training-time augmentation as Keras layers (Keras 3 has no ImageDataGenerator)."""

from __future__ import annotations

import math

import keras
from keras import ops


class RandomAffine(keras.layers.Layer):
    """Flips, rotation, shift, shear and zoom as one affine warp per image.

    One resampling per batch instead of one per Keras layer (RandomRotation,
    RandomTranslation, ...): about 4x cheaper, which matters on a 2-core CPU where the
    input pipeline shares the cores with the training step. Ranges as the Keras layers:
    rotation in degrees, shift/shear/zoom as fractions, each drawn uniformly per image.
    """

    def __init__(
        self, rotation=0.0, shift=0.0, shear=0.0, zoom=0.0, flip=None, fill_mode="nearest", seed=None, **kwargs
    ):
        super().__init__(**kwargs)
        if flip not in (None, "horizontal", "vertical", "horizontal_and_vertical"):
            raise ValueError(f"augment.flip={flip!r}: use horizontal, vertical, horizontal_and_vertical or null")
        self.rotation, self.shift, self.shear, self.zoom = math.radians(rotation), shift, shear, zoom
        self.flip_x, self.flip_y = (
            flip in ("horizontal", "horizontal_and_vertical"),
            flip in ("vertical", "horizontal_and_vertical"),
        )
        self.fill_mode = fill_mode
        self.generator = keras.random.SeedGenerator(seed)

    def _uniform(self, n, limit):
        return keras.random.uniform((n,), -limit, limit, seed=self.generator) if limit else ops.zeros((n,))

    def _sign(self, n, on):
        return ops.where(keras.random.uniform((n,), seed=self.generator) < 0.5, -1.0, 1.0) if on else ops.ones((n,))

    def call(self, images, training=True):
        if not training:
            return images
        n, h, w = ops.shape(images)[0], images.shape[1], images.shape[2]
        angle = self._uniform(n, self.rotation)
        cos, sin = ops.cos(angle), ops.sin(angle)
        shx, shy = self._uniform(n, self.shear), self._uniform(n, self.shear)
        sx = self._sign(n, self.flip_x) * (1.0 + self._uniform(n, self.zoom))
        sy = self._sign(n, self.flip_y) * (1.0 + self._uniform(n, self.zoom))
        tx, ty = self._uniform(n, self.shift) * w, self._uniform(n, self.shift) * h
        # output pixel -> input pixel: flip/zoom . shear . rotation about the centre, then shift
        a0, a1 = sx * (cos + shx * sin), sx * (shx * cos - sin)
        b0, b1 = sy * (sin + shy * cos), sy * (cos - shy * sin)
        cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
        zeros = ops.zeros((n,))
        transform = ops.stack(
            [a0, a1, cx + tx - a0 * cx - a1 * cy, b0, b1, cy + ty - b0 * cx - b1 * cy, zeros, zeros], axis=1
        )
        return ops.image.affine_transform(images, transform, interpolation="bilinear", fill_mode=self.fill_mode)


def build_augmenter(
    rotation: float = 0.0,
    shift: float = 0.0,
    shear: float = 0.0,
    zoom: float = 0.0,
    flip: str | None = None,
    fill_mode: str = "nearest",
    erasing: float = 0.0,
    seed: int | None = None,
) -> keras.Sequential | None:
    """A Sequential of random layers, or None when every setting is off.

    rotation is in degrees; shift, shear and zoom are fractions of the image size,
    as in ImageDataGenerator; flip is horizontal, vertical or horizontal_and_vertical;
    erasing is the probability of blanking a random rectangle (random erasing).
    """
    layers = []
    if flip or rotation or shift or shear or zoom:
        layers.append(RandomAffine(rotation, shift, shear, zoom, flip, fill_mode, seed=seed))
    if erasing:
        layers.append(keras.layers.RandomErasing(factor=erasing, value_range=(0.0, 1.0), seed=seed))
    return keras.Sequential(layers, name="augment") if layers else None
