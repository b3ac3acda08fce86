"""A backbone built with the weights of another saved model (a run's or a ``.keras`` file's).

The source base is checked to be the same application (its Keras model
name, then every weight shape); the job's base is then built with
``weights=None`` at the job's input size and gets the source's weights
layer by layer (convolution weights do not depend on the input size),
BatchNorm statistics included. Finding the source is pretrained.py's part.
"""

from __future__ import annotations

import os

from transferlab.models.registry import spec
from transferlab.models.pretrained import PretrainedError, load_logged_model, parse, registry_name, resolve


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
    """Copies ``src``'s weights into ``dst`` layer by layer (layers with weights, in order).

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
    return len(dst_layers)


def _transfer(src, name: str, input_size: int, origin: str):
    from transferlab.models import weights

    _check_same(src, name, origin)
    dst = weights.build(name, input_size, None)
    n = copy_weights(src, dst, name, origin)
    print(f"[transferlab] {name} @{input_size}px: weights of {n} layers from {origin}")
    return dst


def from_run(name: str, input_size: int, weights: str, tracking_uri: str):
    """The job's base with the weights of the run a ``run:`` spec names."""
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
    return _transfer(base_of(model), name, input_size, origin)


def from_keras_file(name: str, input_size: int, path: str):
    """The job's base with the weights of a ``.keras`` full model (classifier or application)."""
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
    return _transfer(base_of(model), name, input_size, f"file {path}")


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
