"""The lecture's ImageDataGenerator augmentation as ONE Keras layer, one resampling per image.

ImageDataGenerator composes rotation, shift, shear and zoom into one affine
matrix and resamples each image once. Chaining Keras' RandomRotation,
RandomTranslation, RandomShear and RandomZoom resamples four times (and
blurs four times): measured 1.2x ImageDataGenerator's images/s at 224 px
against 3.5x for the single resampling (benchmarks/input_pipeline.py). So
``RandomAffine`` draws ImageDataGenerator's parameters per image, builds its
matrix (``affine_matrix``, the same product in the same order), folds the
horizontal flip into it, and applies it with ``keras.ops.image.affine_transform``
(bilinear, fill "nearest", as ImageDataGenerator's defaults).
"""

from __future__ import annotations

import math

import keras
from keras import ops

from transferlab.models.registry import preprocess_fn


# The augment config keys, ImageDataGenerator's meanings; all but the flip resample.
GEOMETRIC = ("rotation", "width_shift", "height_shift", "shear", "zoom")
PARAMS = (*GEOMETRIC, "horizontal_flip")


def _mat(rows):
    """A (batch, 3, 3) tensor from nested lists of (batch,) tensors."""
    return ops.stack([ops.stack(r, axis=-1) for r in rows], axis=-2)


def affine_matrix(theta, shift_x, shift_y, shear, zoom_x, zoom_y, flip, height: int, width: int):
    """ImageDataGenerator's transform for a batch, as ``affine_transform`` rows.

    Coordinates are (x = column, y = row). The matrix is ImageDataGenerator's
    ``rotation @ shift @ shear @ zoom`` about the image centre
    (``apply_affine_transform``), mapping an output pixel to the input point
    it samples; a horizontal flip of the result is applied first.

    Args:
        theta: rotation angles in degrees, shape (batch,).
        shift_x: horizontal shifts in pixels, (batch,).
        shift_y: vertical shifts in pixels, (batch,).
        shear: shear angles in degrees, (batch,).
        zoom_x: horizontal zoom factors (>1 shows less of the image), (batch,).
        zoom_y: vertical zoom factors, (batch,).
        flip: 1.0 where the image is flipped horizontally, else 0.0, (batch,).
        height: image height in pixels.
        width: image width in pixels.

    Returns:
        A float32 tensor (batch, 8): the projective rows
        ``[a0, a1, a2, b0, b1, b2, 0, 0]`` that ``keras.ops.image.affine_transform`` takes.
    """
    t, s = theta * (math.pi / 180), shear * (math.pi / 180)
    one, zero = ops.ones_like(theta), ops.zeros_like(theta)
    rot = _mat([[ops.cos(t), -ops.sin(t), zero], [ops.sin(t), ops.cos(t), zero], [zero, zero, one]])
    shift = _mat([[one, zero, shift_x], [zero, one, shift_y], [zero, zero, one]])
    shr = _mat([[one, -ops.sin(s), zero], [zero, ops.cos(s), zero], [zero, zero, one]])
    zoom = _mat([[zoom_x, zero, zero], [zero, zoom_y, zero], [zero, zero, one]])
    cx, cy = (width - 1) / 2, (height - 1) / 2
    offset = _mat([[one, zero, one * cx], [zero, one, one * cy], [zero, zero, one]])
    reset = _mat([[one, zero, -one * cx], [zero, one, -one * cy], [zero, zero, one]])
    sign = 1 - 2 * flip  # x -> (width - 1) - x where flipped
    mirror = _mat([[sign, zero, flip * (width - 1)], [zero, one, zero], [zero, zero, one]])
    m = offset @ rot @ shift @ shr @ zoom @ reset @ mirror
    return ops.concatenate([ops.reshape(m[:, :2, :], (-1, 6)), ops.zeros_like(m[:, 0, :2])], axis=-1)


@keras.saving.register_keras_serializable(package="transferlab")
class RandomAffine(keras.layers.Layer):
    """ImageDataGenerator's random geometric augmentation, active in training only.

    Parameters are drawn as ImageDataGenerator draws them: angle uniform in
    ``±rotation`` degrees, shifts uniform in ``±width_shift`` / ``±height_shift``
    of the width / height, shear uniform in ``±shear`` degrees (so the
    lecture's 0.2 is a tiny shear), x and y zoom independently uniform in
    ``[1 - zoom, 1 + zoom]``, flip with probability 0.5.

    Args:
        rotation: degrees (``rotation_range``).
        width_shift: fraction of the width (``width_shift_range``).
        height_shift: fraction of the height (``height_shift_range``).
        shear: degrees (``shear_range``).
        zoom: ``zoom_range`` as one float.
        horizontal_flip: flip half the images left-right.
        seed: seed of the layer's random stream (same seed, same augmented batches).
    """

    def __init__(self, rotation=0.0, width_shift=0.0, height_shift=0.0, shear=0.0, zoom=0.0,
                 horizontal_flip=False, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.params = dict(rotation=float(rotation), width_shift=float(width_shift),
                           height_shift=float(height_shift), shear=float(shear), zoom=float(zoom),
                           horizontal_flip=bool(horizontal_flip))
        self.seed = seed
        self.generator = keras.random.SeedGenerator(seed)
        self._geometric = any(self.params[k] for k in GEOMETRIC)

    def _uniform(self, batch, bound, centre=0.0):
        return keras.random.uniform((batch,), centre - bound, centre + bound, seed=self.generator)

    def call(self, images, training=None):
        if not training:
            return images
        batch = ops.shape(images)[0]
        p = self.params
        flip = (ops.cast(keras.random.uniform((batch,), seed=self.generator) < 0.5, "float32")
                if p["horizontal_flip"] else ops.zeros((batch,)))
        if not self._geometric:  # a flip alone needs no resampling
            return ops.where(ops.reshape(flip, (-1, 1, 1, 1)) > 0, ops.flip(images, axis=2), images)
        h, w = images.shape[1], images.shape[2]
        rows = affine_matrix(self._uniform(batch, p["rotation"]),
                             self._uniform(batch, p["width_shift"]) * w,
                             self._uniform(batch, p["height_shift"]) * h,
                             self._uniform(batch, p["shear"]),
                             self._uniform(batch, p["zoom"], 1.0), self._uniform(batch, p["zoom"], 1.0),
                             flip, h, w)
        return ops.image.affine_transform(images, rows, interpolation="bilinear", fill_mode="nearest")

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), **self.params, "seed": self.seed}


def augmentation(aug_cfg, seed: int, **kwargs):
    """The ``augment`` config group as a layer named ``augment``, or None when nothing is enabled.

    Args:
        aug_cfg: the ``augment`` config (ImageDataGenerator's parameter meanings).
        seed: the job's seed.
        **kwargs: passed to the layer (e.g. ``dtype``).

    Returns:
        A ``RandomAffine`` layer or None.
    """
    params = {k: aug_cfg[k] for k in PARAMS}
    if not any(params.values()):
        return None
    return RandomAffine(**params, seed=seed, name="augment", **kwargs)


@keras.saving.register_keras_serializable(package="transferlab")
class Preprocess(keras.layers.Layer):
    """Applies a backbone's ``preprocess_input``; serialisable by backbone name."""

    def __init__(self, backbone: str, **kwargs):
        super().__init__(**kwargs)
        self.backbone = backbone
        self._fn = preprocess_fn(backbone)

    def call(self, x):
        return self._fn(x)

    def get_config(self):
        return {**super().get_config(), "backbone": self.backbone}


class _Base(keras.layers.Layer):
    """A layer holding the backbone model (``.base``), serialised with it."""

    def __init__(self, base, **kwargs):
        super().__init__(**kwargs)
        self.base = base

    def compute_output_shape(self, input_shape):
        return self.base.compute_output_shape(input_shape)

    def get_config(self):
        return {**super().get_config(), "base": keras.saving.serialize_keras_object(self.base)}

    @classmethod
    def from_config(cls, config):
        config["base"] = keras.saving.deserialize_keras_object(config["base"])
        return cls(**config)


@keras.saving.register_keras_serializable(package="transferlab")
class InferenceMode(_Base):
    """Runs the wrapped base with ``training=False`` always, also inside ``fit``.

    ``base(x, training=False)`` in a functional model is not enough in Keras 3:
    when the outer model runs, ``Functional`` injects the caller's ``training``
    into every layer that takes it, overriding the recorded ``False``
    (keras/src/models/functional.py, ``operation_fn``; measured: BatchNorm
    moving statistics changed during ``fit``). This layer's ``call`` has no
    ``training`` argument, so nothing is injected, and it passes ``False`` on.
    The rule for a pretrained base (Keras' fine-tuning guide), and for any
    frozen base.
    """

    def call(self, x):
        return self.base(x, training=False)


@keras.saving.register_keras_serializable(package="transferlab")
class FollowsTraining(_Base):
    """Runs the wrapped base as plain Keras runs a network: ``training`` passes on.

    For a base initialised at random that trains (``freeze=none``, trainable
    blocks): inside ``fit`` its trainable BatchNorm layers normalise with the
    batch's statistics and move their moving statistics (and its dropout, e.g.
    EfficientNet's, is on), as ``keras.applications.X(weights=None)`` trained
    from scratch; layers left non-trainable stay in inference mode (Keras'
    BatchNormalization rule). Keras' advice to keep BatchNorm in inference mode
    is for a *pretrained* base, whose statistics are what transfers.
    """

    def call(self, x, training=None):
        return self.base(x, training=training)
