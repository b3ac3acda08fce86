"""A random base's BatchNorm calibration, computed once per process for the same inputs.

``models.build.calibrate_batchnorm`` (random init only) runs the whole base
once in training mode, eagerly, on 64 training images: 1-3 s per
MobileNetV2@96 job on 2 cores. The jobs of a sweep that differ only in
freezing or learning rate build the same random base (same seed) and
calibrate it on the same images (same data, same shuffle seed), so they
compute the same statistics again. Here the result is kept in the process,
keyed on everything it depends on (backbone, the base's weight values before
calibration, the images' bytes, the Keras version), and set back with
``set_weights``: the same values, bit for bit, as computing them again
(tests/test_speed_cuts.py checks).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import numpy as np

from transferlab.engine.featstore import weights_hash

_KEEP = 2  # bases kept (a 2.3 M-parameter MobileNetV2 is 9 MB); sweeps run jobs in config order
_DONE: OrderedDict[str, tuple[int, list]] = OrderedDict()


def _key(base, backbone: str, images) -> str:
    import keras

    x = np.ascontiguousarray(np.asarray(images))
    h = hashlib.sha256(f"{backbone}|keras {keras.__version__}|{weights_hash(base)}|{x.dtype}{x.shape}".encode())
    h.update(memoryview(x).cast("B"))
    return h.hexdigest()


def calibrate_once(base, backbone: str, images) -> tuple[int, bool]:
    """``calibrate_batchnorm(base, backbone, images)``, or its remembered result.

    Args:
        base: the randomly initialised backbone (calibrated in place).
        backbone: its registry name.
        images: a float32 batch ``(n, h, w, 3)`` of 0-255 training images.

    Returns:
        ``(BatchNorm layers calibrated, whether the result was reused)``.
    """
    from transferlab.models.build import calibrate_batchnorm

    key = _key(base, backbone, images)
    if key in _DONE:
        _DONE.move_to_end(key)
        n, weights = _DONE[key]
        base.set_weights(weights)
        return n, True
    n = calibrate_batchnorm(base, backbone, images)
    _DONE[key] = (n, [np.array(w, copy=True) for w in base.get_weights()])
    while len(_DONE) > _KEEP:
        _DONE.popitem(last=False)
    return n, False
