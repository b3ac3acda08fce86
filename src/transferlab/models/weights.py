"""One factory for a backbone's headless base, whatever the weights' source.

``build(name, size, weights)`` turns ``imagenet | None | <weights file> |
<.keras file> | run:<id> | run:latest:<experiment>`` into a base model.
"""

from __future__ import annotations

import os
import warnings

from transferlab.models.registry import WeightsUnavailable, spec


def build(name: str, input_size: int, weights: str | None = "imagenet",
          tracking_uri: str | None = None):
    """Builds the headless base of a Keras application.

    Args:
        name: registry name, e.g. ``"vgg19"``.
        input_size: square input side length in pixels.
        weights: ``"imagenet"`` (downloaded once into ``~/.keras/models``),
            ``None`` (random init), a path to a local weights file for the
            Keras constructor (``.h5`` / ``.weights.h5``), a ``.keras`` full
            model (a transferlab classifier or a plain application), or
            ``run:<run id>`` / ``run:latest:<experiment>``: the base trained by
            an earlier job (see ``transferlab.pretrained``).
        tracking_uri: the MLflow store ``run:`` specs are looked up in (the
            job's, ``tracking.tracking_uri(cfg)``); required for them only.

    Returns:
        The ``keras.Model`` built with ``include_top=False``.

    Raises:
        WeightsUnavailable: the ImageNet weights could not be fetched.
        PretrainedError: a ``run:`` spec or file cannot be used (unknown run,
            no logged model, another backbone, a file that does not fit).
    """
    import keras

    from transferlab.models import basecopy, pretrained

    how = pretrained.kind(weights)
    if how == "run":
        if not tracking_uri:
            raise ValueError(f"backbone.weights={weights}: building from a run needs tracking_uri")
        return basecopy.from_run(name, input_size, weights, tracking_uri)
    if how == "keras":
        return basecopy.from_keras_file(name, input_size, weights)
    s = spec(name)
    ctor = getattr(keras.applications, s.constructor)
    try:
        # Keras warns per skipped sub-layer before it raises on a file that does not fit:
        # noise then, so they are only passed on when the load succeeds.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            base = ctor(include_top=False, weights=weights, input_shape=(input_size, input_size, 3))
    except (ValueError, OSError) as e:  # a local file that does not fit, or is no HDF5 file
        if how != "file":
            raise
        raise basecopy.file_mismatch(name, weights, e) from e
    except Exception as e:  # Keras raises a bare Exception("URL fetch failure ...")
        if weights != "imagenet" or "fetch failure" not in str(e).lower():
            raise
        cache = os.path.join(os.environ.get("KERAS_HOME", os.path.expanduser("~/.keras")), "models")
        raise WeightsUnavailable(
            f"Could not download the ImageNet weights of {name} ({e}). "
            "This machine seems to have no internet access. Either: "
            "(1) train from random init with backbone.weights=null; "
            "(2) pass a local weights file: backbone.weights=/path/to/"
            f"{s.module}_weights_notop.h5 (a Keras no-top .h5 file); or "
            f"(3) copy the Keras weights file into {cache} on this machine "
            "(download it where the internet is reachable, e.g. by building the "
            "model there once)."
        ) from e
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return base
