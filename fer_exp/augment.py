"""Training-time augmentation as Keras layers (Keras 3 has no ImageDataGenerator)."""

from __future__ import annotations

import keras


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
    if flip:
        layers.append(keras.layers.RandomFlip(flip, seed=seed))
    if rotation:
        layers.append(keras.layers.RandomRotation(rotation / 360.0, fill_mode=fill_mode, seed=seed))
    if shift:
        layers.append(keras.layers.RandomTranslation(shift, shift, fill_mode=fill_mode, seed=seed))
    if shear:
        layers.append(keras.layers.RandomShear(x_factor=shear, y_factor=shear, fill_mode=fill_mode, seed=seed))
    if zoom:
        layers.append(keras.layers.RandomZoom(zoom, zoom, fill_mode=fill_mode, seed=seed))
    if erasing:
        layers.append(keras.layers.RandomErasing(factor=erasing, value_range=(0.0, 1.0), seed=seed))
    return keras.Sequential(layers, name="augment") if layers else None
