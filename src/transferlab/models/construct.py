"""Keras' ImageNet graph of an application, with its weights from anywhere (``weights.build``'s
file, random-init and ImageNet routes), and ``finalize_states`` (see ``models/weights.py``)."""

from __future__ import annotations

import contextlib
import os
import threading
import warnings

from transferlab.models import options as option_table
from transferlab.models.diagnose import file_mismatch
from transferlab.models.registry import WeightsUnavailable, spec

_LOCK = threading.RLock()
_NOTHING = "<transferlab: random init, nothing to load>"  # the path a weights=None build is served


def finalize_states(model) -> int:
    """Calls ``finalize_state()`` on every built layer that has one, nested layers included.

    Returns:
        How many layers had one.
    """
    layers = [l for l in model._flatten_layers(include_self=True, recursive=True)
              if callable(getattr(l, "finalize_state", None)) and l.built]
    for l in layers:
        l.finalize_state()
    return len(layers)


# -- Keras' ImageNet graph, with the weights from anywhere -------------------------------------


@contextlib.contextmanager
def _serve(path: str | None):
    """Keras' download hands this thread ``path`` (None: the load is skipped) instead of fetching.

    The application modules call ``file_utils.get_file(...)`` and then
    ``model.load_weights(<what it returned>)``; both are patched for the
    duration only, and only for the calling thread (others get the real
    functions). Yields the list of file names Keras asked for.
    """
    from keras.src.models.model import Model
    from keras.src.utils import file_utils

    me, asked = threading.get_ident(), []
    real_get, real_load = file_utils.get_file, Model.load_weights

    def get_file(*args, **kwargs):
        if threading.get_ident() != me:
            return real_get(*args, **kwargs)
        asked.append(kwargs.get("fname", args[0] if args else None))
        return path or _NOTHING

    def load_weights(self, filepath, *args, **kwargs):
        if filepath == _NOTHING and threading.get_ident() == me:
            return None
        return real_load(self, filepath, *args, **kwargs)

    with _LOCK:
        file_utils.get_file, Model.load_weights = get_file, load_weights
        try:
            yield asked
        finally:
            file_utils.get_file, Model.load_weights = real_get, real_load


def construct(name: str, size: int, include_top: bool, weights: str | None, opts: dict):
    """``keras.applications.<X>(weights="imagenet", **opts)``, its file downloaded
    (``"imagenet"``), the local file ``weights``, or none (``None``: random init). Options
    with no ImageNet file (``alpha=0.3``) have no ImageNet graph: Keras' ``weights=None``
    graph then, the file loaded into it as Keras loads a path."""
    import keras

    s = spec(name)
    ctor = getattr(keras.applications, s.constructor)
    args = dict(include_top=include_top, input_shape=(size, size, 3), **opts)
    imagenet_graph = option_table.has_imagenet(name, opts)
    if weights == "imagenet":
        option_table.check_imagenet(name, opts)
    # Keras warns per skipped sub-layer before it raises on a file that does not fit:
    # noise then, so they are only passed on when the load succeeds.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            if weights == "imagenet":
                base = ctor(weights="imagenet", **args)
            elif not imagenet_graph:
                base = ctor(weights=None, **args)
                if weights is not None:
                    base.load_weights(weights)
            else:
                with _serve(weights) as asked:
                    base = ctor(weights="imagenet", **args)
                if not asked:  # the file would silently not be loaded
                    raise RuntimeError(f"keras.applications.{s.constructor}(weights='imagenet') asked "
                                       "for no weights file: transferlab cannot serve it one.")
        except (ValueError, OSError) as e:  # a local file that does not fit, or is no HDF5 file
            if weights in (None, "imagenet"):
                raise
            raise file_mismatch(name, weights, e, include_top, opts, size) from e
        except Exception as e:  # Keras raises a bare Exception("URL fetch failure ...")
            if weights != "imagenet" or "fetch failure" not in str(e).lower():
                raise
            raise _unavailable(name, e, size, include_top, opts) from e
    for w in caught:  # MobileNet(V2) off 128-224 px: "weights for (224, 224) will be loaded"
        if weights == "imagenet" or "loaded as the default" not in str(w.message):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return base


def keras_cache() -> str:
    """The folder Keras' download looks in first (``$KERAS_HOME/models``, else ``~/.keras/models``)."""
    return os.path.join(os.environ.get("KERAS_HOME", os.path.expanduser("~/.keras")), "models")


def _unavailable(name: str, err: Exception, size: int, include_top: bool,
                 opts: dict) -> WeightsUnavailable:
    s = spec(name)
    file = option_table.imagenet_file(name, opts, size, include_top)
    top = "with its top" if include_top else "no-top"
    return WeightsUnavailable(
        f"Could not download the ImageNet weights of {option_table.label(name, opts)} ({err}). "
        "This machine seems to have no internet access. Either: "
        "(1) train from random init with backbone.weights=null; "
        f"(2) pass a local weights file: backbone.weights=/path/to/"
        f"{file or s.module + '_weights_notop.h5'} (a Keras {top} .h5 file); or "
        f"(3) copy the Keras weights file into {keras_cache()} on this machine"
        + (f" as {file}" if file else "") + " (download it where the internet is reachable, "
        "e.g. by building the model there once).")
