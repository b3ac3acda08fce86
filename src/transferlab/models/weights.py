"""The one resolver of a backbone's base, whatever the weights' source.

``build(name, size, weights)`` turns ``imagenet | None | <weights file> |
<.keras file> | run:<id> | run:latest:<experiment>`` into a base with the
graph Keras builds for its ImageNet weights, then loads or copies the
weights, then lets every layer that derives state from its variables
(``finalize_state``) recompute it.

Why one graph: a Keras application constructor does not build the same graph
for ``weights="imagenet"`` as for ``None`` or a file path. EfficientNetB0-B7
insert ``Rescaling(1/sqrt(stddev))`` after their ``Normalization`` only for
``"imagenet"`` (keras/src/applications/efficientnet.py, tensorflow#49930), so
ImageNet weights passed as a file used to see inputs off by sqrt(std) per
channel. Every route therefore calls the constructor with
``weights="imagenet"`` while Keras' download function is patched to hand it
the local file (or nothing, for a random init): whatever Keras' ImageNet
path does to the graph, now or in a later version, every route gets it.

Why ``finalize_state``: ``Normalization`` computes the mean and variance it
applies from its variables when built and in ``finalize_state``; Keras'
loaders call it (``load_own_variables``, the legacy .h5 loader), but
``set_weights``, which copies a run's or a ``.keras`` file's weights, does not.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import warnings

from transferlab.models.pretrained import (PretrainedError, kind, load_logged_model, parse, registry_name,
                                          resolve)
from transferlab.models.registry import WeightsUnavailable, spec

_LOCK = threading.RLock()
_NOTHING = "<transferlab: random init, nothing to load>"  # the path a weights=None build is served


def build(name: str, input_size: int, weights: str | None = "imagenet",
          tracking_uri: str | None = None, include_top: bool = False):
    """Builds a Keras application (headless by default) with Keras' ImageNet graph.

    Args:
        name: registry name, e.g. ``"vgg19"``.
        input_size: square input side length in pixels (the backbone's
            ``default_size`` with ``include_top=True``).
        weights: ``"imagenet"`` (downloaded once into ``~/.keras/models``),
            ``None`` (random init), a local weights file (``.h5`` /
            ``.weights.h5``), a ``.keras`` full model (a transferlab classifier
            or a plain application), or ``run:<run id>`` /
            ``run:latest:<experiment>``: the base trained by an earlier job.
        tracking_uri: the MLflow store ``run:`` specs are looked up in; required for them only.
        include_top: with the ImageNet head (``transferlab predict``).

    Returns:
        The ``keras.Model``.

    Raises:
        WeightsUnavailable: the ImageNet weights could not be fetched.
        PretrainedError: a ``run:`` spec or file cannot be used (unknown run,
            no logged model, another backbone, a file that does not fit).
    """
    how = kind(weights)
    if how == "run":
        if not tracking_uri:
            raise ValueError(f"backbone.weights={weights}: building from a run needs tracking_uri")
        base = _from_run(name, input_size, weights, tracking_uri, include_top)
    elif how == "keras":
        base = _from_keras_file(name, input_size, weights, include_top)
    else:
        if how == "file" and not os.path.isfile(weights):
            raise PretrainedError(f"backbone.weights={weights!r}: no such file.")
        base = _construct(name, input_size, include_top, weights)
    finalize_states(base)
    return base


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


def _construct(name: str, size: int, include_top: bool, weights: str | None):
    """``keras.applications.<X>(weights="imagenet")``, its file downloaded (``"imagenet"``),
    the local file ``weights``, or none (``None``: random init)."""
    import keras

    s = spec(name)
    ctor = getattr(keras.applications, s.constructor)
    args = dict(include_top=include_top, weights="imagenet", input_shape=(size, size, 3))
    # Keras warns per skipped sub-layer before it raises on a file that does not fit:
    # noise then, so they are only passed on when the load succeeds.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            if weights == "imagenet":
                base = ctor(**args)
            else:
                with _serve(weights) as asked:
                    base = ctor(**args)
                if not asked:  # the file would silently not be loaded
                    raise RuntimeError(f"keras.applications.{s.constructor}(weights='imagenet') asked "
                                       "for no weights file: transferlab cannot serve it one.")
        except (ValueError, OSError) as e:  # a local file that does not fit, or is no HDF5 file
            if weights in (None, "imagenet"):
                raise
            raise file_mismatch(name, weights, e, include_top) from e
        except Exception as e:  # Keras raises a bare Exception("URL fetch failure ...")
            if weights != "imagenet" or "fetch failure" not in str(e).lower():
                raise
            raise _unavailable(name, e) from e
    for w in caught:  # MobileNet(V2) off 128-224 px: "weights for (224, 224) will be loaded"
        if weights == "imagenet" or "loaded as the default" not in str(w.message):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return base


def _unavailable(name: str, err: Exception) -> WeightsUnavailable:
    s = spec(name)
    cache = os.path.join(os.environ.get("KERAS_HOME", os.path.expanduser("~/.keras")), "models")
    return WeightsUnavailable(
        f"Could not download the ImageNet weights of {name} ({err}). "
        "This machine seems to have no internet access. Either: "
        "(1) train from random init with backbone.weights=null; "
        "(2) pass a local weights file: backbone.weights=/path/to/"
        f"{s.module}_weights_notop.h5 (a Keras no-top .h5 file); or "
        f"(3) copy the Keras weights file into {cache} on this machine "
        "(download it where the internet is reachable, e.g. by building the "
        "model there once).")


def _one_line(err: Exception, limit: int = 400) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[:limit] + " ..."


def file_mismatch(name: str, path: str, err: Exception, include_top: bool = False) -> PretrainedError:
    """The error for a weights file that does not fit the backbone (Keras' ValueError)."""
    s = spec(name)
    top = "with its ImageNet top (include_top=True)" if include_top else "without its top (include_top=False)"
    fix = (f"Fix: a file saved from keras.applications.{s.constructor}(include_top={include_top}, "
           "...) with .save_weights('x.weights.h5') (or a Keras .h5 weights file of that model")
    fix += (")." if include_top else
            "; for a classifier saved by Keras use its .keras file), backbone.weights=imagenet|null, "
            "or backbone.weights=run:<id> for a backbone trained by an earlier job.")
    return PretrainedError(f"Weights file {path} does not fit {name} ({s.constructor} {top}): "
                           f"{_one_line(err)}. {fix}")


# -- the weights of another saved model (a run's, a .keras file's) -----------------------------


def base_of(model):
    """The Keras application inside a transferlab classifier (its ``base`` layer), or
    ``model`` itself when it is a plain application."""
    try:
        layer = model.get_layer("base")
    except ValueError:
        return model
    return getattr(layer, "base", layer)


def _check_same(src, name: str, origin: str) -> None:
    got = registry_name(src.name)
    if got != name:
        what = f"a {got} backbone" if got else f"a Keras model named {src.name!r}"
        fix = f"backbone={got}" if got else "a model saved from that backbone"
        raise PretrainedError(
            f"{origin} holds {what}, not {name}. Weights only carry over between the same "
            f"backbone. Fix: {fix}, or weights from a {name} run/file.")


def copy_weights(src, dst, name: str, origin: str) -> int:
    """Copies ``src``'s weights into ``dst`` layer by layer (layers with weights, in order),
    then ``finalize_states(dst)``.

    Extra trailing layers of ``src`` (an ImageNet top of a plain application
    saved with ``include_top=True``) are ignored.

    Returns:
        The number of layers copied.

    Raises:
        PretrainedError: a layer's weight shapes differ.
    """
    src_layers = [l for l in src.layers if l.weights]
    dst_layers = [l for l in dst.layers if l.weights]
    problem = None
    if len(src_layers) < len(dst_layers):
        problem = f"it has {len(src_layers)} layers with weights, {name} needs {len(dst_layers)}"
    else:
        for s, d in zip(src_layers, dst_layers):
            ss = [tuple(w.shape) for w in s.weights]
            ds = [tuple(w.shape) for w in d.weights]
            if ss != ds:
                problem = f"layer {s.name!r} has weights of shapes {ss}, {name}'s {d.name!r} needs {ds}"
                break
    if problem:
        raise PretrainedError(f"{origin} does not fit {name}: {problem}. Fix: weights saved "
                              f"from a {name} base (same Keras application and options).")
    for s, d in zip(src_layers, dst_layers):
        d.set_weights(s.get_weights())
    finalize_states(dst)  # set_weights leaves Normalization on the statistics of its build
    return len(dst_layers)


def _graph(model) -> list:
    """What a model computes apart from its weights: layer classes and configs (names, freezing,
    dtype policy and the input size aside: ZeroPadding2D pads by the parity of the size)."""
    import keras

    return [(type(l).__name__, json.dumps({k: v for k, v in l.get_config().items()
                                           if k not in ("name", "trainable", "dtype", "padding")},
                                          sort_keys=True, default=str))
            for l in model.layers if not isinstance(l, keras.layers.InputLayer)]


def _transfer(src, name: str, input_size: int, origin: str, include_top: bool):
    import keras

    _check_same(src, name, origin)
    dst = _construct(name, input_size, include_top, None)
    have, want = _graph(dst), _graph(src)
    if want[:len(have)] != have:
        # A base built by Keras without its ImageNet graph (an EfficientNet trained from
        # weights=None before transferlab built every base that way): its weights belong to
        # that graph, so the copy takes it, or it would compute another function.
        plain = getattr(keras.applications, spec(name).constructor)(
            include_top=include_top, weights=None, input_shape=(input_size, input_size, 3))
        if want[:len(g := _graph(plain))] == g:
            print(f"[transferlab] {origin}: its {name} was built without Keras' ImageNet graph; "
                  "the copy keeps its graph")
            dst = plain
    n = copy_weights(src, dst, name, origin)
    print(f"[transferlab] {name} @{input_size}px: weights of {n} layers from {origin}")
    return dst


def _from_run(name: str, input_size: int, weights: str, tracking_uri: str, include_top: bool):
    """The base with the weights of the run a ``run:`` spec names."""
    run, loc = resolve(weights, tracking_uri, backbone=name)
    run_id = run.info.run_id
    origin = f"run {run_id}" + (f" ({weights})" if parse(weights)[0] == "latest" else "")
    tagged = run.data.tags.get("backbone")
    if tagged and tagged != name:  # fail before downloading anything
        raise PretrainedError(
            f"backbone.weights={weights}: {origin} trained {tagged}, this job uses {name}. "
            f"Weights only carry over between the same backbone. Fix: backbone={tagged}, or "
            f"a run that trained {name}.")
    model = load_logged_model(tracking_uri, loc)
    return _transfer(base_of(model), name, input_size, origin, include_top)


def _from_keras_file(name: str, input_size: int, path: str, include_top: bool):
    """The base with the weights of a ``.keras`` full model (classifier or application)."""
    import keras

    import transferlab.models.layers  # noqa: F401  custom layers of a saved classifier

    if not os.path.isfile(path):
        raise PretrainedError(f"backbone.weights={path!r}: no such file.")
    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as e:
        raise PretrainedError(
            f"backbone.weights={path!r} cannot be loaded as a Keras model ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:300] if str(e) else ''}). A .keras file must be a full "
            "model saved with model.save('x.keras'); for weights only use a .weights.h5 file."
        ) from e
    return _transfer(base_of(model), name, input_size, f"file {path}", include_top)
