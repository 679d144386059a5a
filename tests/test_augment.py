"""The fused augmentation: one affine warp that does what the separate Keras layers did."""

import numpy as np
import pytest

from fer_exp.data import RandomAffine, build_augmenter


def faces(n=16):
    rng = np.random.default_rng(0)
    return rng.random((n, 48, 48, 1), dtype=np.float32)


def test_flip_only_gives_the_image_or_its_mirror_exactly():
    x = faces()
    y = np.asarray(RandomAffine(flip="horizontal", seed=1)(x, training=True))
    same = [np.allclose(a, b, atol=1e-5) for a, b in zip(y, x)]
    mirrored = [np.allclose(a, b[:, ::-1], atol=1e-5) for a, b in zip(y, x)]
    assert all(s or m for s, m in zip(same, mirrored)) and any(same) and any(mirrored)
    down = np.asarray(RandomAffine(flip="vertical", seed=1)(x, training=True))
    assert all(np.allclose(a, b, atol=1e-5) or np.allclose(a, b[::-1], atol=1e-5) for a, b in zip(down, x))


def test_shift_moves_content_by_at_most_the_fraction():
    x = np.zeros((32, 48, 48, 1), np.float32)
    x[:, 20:28, 20:28] = 1.0  # a bright square in the middle
    y = np.asarray(RandomAffine(shift=0.1, fill_mode="constant", seed=0)(x, training=True))
    centres = np.array([np.argwhere(img[..., 0] > 0.5).mean(axis=0) for img in y])
    offsets = centres - 23.5
    assert np.abs(offsets).max() <= 0.1 * 48 + 0.5 and np.abs(offsets).max() > 1  # moved, within 4.8 px


def test_inference_is_untouched_and_seeded_draws_repeat():
    x = faces()
    layer = RandomAffine(rotation=10, shift=0.1, shear=0.1, zoom=0.1, flip="horizontal", seed=3)
    np.testing.assert_array_equal(np.asarray(layer(x, training=False)), x)
    a = np.asarray(RandomAffine(rotation=10, zoom=0.1, seed=3)(x, training=True))
    b = np.asarray(RandomAffine(rotation=10, zoom=0.1, seed=3)(x, training=True))
    np.testing.assert_allclose(a, b)
    assert a.shape == x.shape and not np.allclose(a, x) and 0 <= a.min() and a.max() <= 1


def test_builder_and_bad_flip():
    assert build_augmenter() is None
    assert [type(layer).__name__ for layer in build_augmenter(rotation=10, erasing=0.5).layers] == [
        "RandomAffine",
        "RandomErasing",
    ]
    with pytest.raises(ValueError, match="augment.flip"):
        RandomAffine(flip="diagonal")
