"""The fused augmentation layer: ImageDataGenerator's transform, one resampling, training only."""

import keras
import numpy as np
import pytest

from transferlab.models.layers import RandomAffine, affine_matrix, augmentation


def _image(size=32, seed=0):
    # Smooth content, so bilinear sampling differences stay tiny and comparisons are meaningful.
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    chans = [127 + 120 * np.sin(6 * xx + rng.uniform(0, 6)) * np.cos(4 * yy + rng.uniform(0, 6))
             for _ in range(3)]
    return np.stack(chans, axis=-1).astype("float32")


@pytest.mark.parametrize("params", [
    dict(theta=30.0, tx=3.0, ty=-2.0, shear=10.0, zx=1.1, zy=0.9, flip_horizontal=False),
    dict(theta=-25.0, tx=-4.0, ty=5.0, shear=-0.2, zx=0.85, zy=1.2, flip_horizontal=True),
])
def test_same_output_as_image_data_generator(params):
    """For the same drawn parameters, the layer's matrix reproduces ImageDataGenerator.apply_transform."""
    from keras.src.legacy.preprocessing.image import ImageDataGenerator

    x = _image()
    want = ImageDataGenerator(fill_mode="nearest").apply_transform(x.astype("float64"), params)
    b = lambda v: np.array([v], dtype="float32")  # noqa: E731
    rows = affine_matrix(b(params["theta"]), b(params["tx"]), b(params["ty"]), b(params["shear"]),
                         b(params["zx"]), b(params["zy"]), b(float(params["flip_horizontal"])), 32, 32)
    got = np.asarray(keras.ops.image.affine_transform(x[None], rows, interpolation="bilinear",
                                                      fill_mode="nearest"))[0]
    assert np.abs(got - want).max() < 1e-3, np.abs(got - want).max()  # measured ~1e-4 (float32 vs 64)
    assert np.abs(got - x).mean() > 5  # the transform did something


def test_training_only_seeded_and_within_lecture_ranges(compose):
    aug = augmentation(compose(["augment=lecture"]).augment, seed=0)
    assert isinstance(aug, RandomAffine) and aug.name == "augment"
    assert aug.params == dict(rotation=40.0, width_shift=0.2, height_shift=0.2, shear=0.2, zoom=0.2,
                              horizontal_flip=True)
    x = np.stack([_image(seed=i) for i in range(8)])
    np.testing.assert_array_equal(np.asarray(aug(x, training=False)), x)
    first = np.asarray(aug(x, training=True))
    assert np.abs(first - x).mean(axis=(1, 2, 3)).min() > 1  # every image moved
    again = augmentation(compose(["augment=lecture"]).augment, seed=0)
    np.testing.assert_allclose(np.asarray(again(x, training=True)), first, atol=1e-4)
    other = augmentation(compose(["augment=lecture"]).augment, seed=1)
    assert np.abs(np.asarray(other(x, training=True)) - first).mean() > 1
    assert augmentation(compose(["augment=none"]).augment, seed=0) is None


def test_flip_alone_mirrors_about_half_the_images(compose):
    aug = augmentation(compose(["augment=flip"]).augment, seed=3)
    x = np.stack([_image(seed=i) for i in range(32)])
    y = np.asarray(aug(x, training=True))
    same = [np.array_equal(a, b) for a, b in zip(y, x)]
    mirrored = [np.array_equal(a, b[:, ::-1]) for a, b in zip(y, x)]
    assert all(s or m for s, m in zip(same, mirrored))
    assert 4 <= sum(mirrored) <= 28
