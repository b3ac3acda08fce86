"""The weights of another saved model (a run's, a ``.keras`` file's) copied into Keras' graph of
the job's backbone and options (``weights.build``'s ``run:`` and ``.keras`` routes)."""

from __future__ import annotations

import json
import os

from transferlab.models import options as option_table
from transferlab.models.construct import construct, finalize_states
from transferlab.models.diagnose import built
from transferlab.models.pretrained import (PretrainedError, load_logged_model, parse, registry_name,
                                          resolve)
from transferlab.models.registry import spec


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


def _transfer(src, name: str, input_size: int, origin: str, include_top: bool, opts: dict):
    import keras

    _check_same(src, name, origin)
    dst = construct(name, input_size, include_top, None, opts)
    have, want = _graph(dst), _graph(src)
    if want[:len(have)] != have and option_table.has_imagenet(name, opts):
        # A base built by Keras without its ImageNet graph (an EfficientNet trained from
        # weights=None before transferlab built every base that way): its weights belong to
        # that graph, so the copy takes it, or it would compute another function.
        plain = getattr(keras.applications, spec(name).constructor)(
            include_top=include_top, weights=None, input_shape=(input_size, input_size, 3), **opts)
        if want[:len(g := _graph(plain))] == g:
            print(f"[transferlab] {origin}: its {name} was built without Keras' ImageNet graph; "
                  "the copy keeps its graph")
            dst = plain
    try:
        n = copy_weights(src, dst, name, origin)
    except PretrainedError as e:
        from transferlab.models import diagnose

        cause = diagnose.variant_of_model(name, src, input_size, opts, include_top)
        if cause is None:
            raise
        raise PretrainedError(f"{origin} does not fit {name} as built here, "
                              f"{built(name, opts, include_top)}: {cause}.") from e
    print(f"[transferlab] {option_table.label(name, opts)} @{input_size}px: weights of {n} layers "
          f"from {origin}")
    return dst


def from_run(name: str, input_size: int, weights: str, tracking_uri: str, include_top: bool,
              opts: dict):
    """The base with the weights of the run a ``run:`` spec names."""
    label = option_table.label(name, opts)
    run, loc = resolve(weights, tracking_uri, backbone=name, label=label)
    run_id = run.info.run_id
    origin = f"run {run_id}" + (f" ({weights})" if parse(weights)[0] == "latest" else "")
    tagged = run.data.tags.get("backbone")
    if tagged and tagged != name:  # fail before downloading anything
        raise PretrainedError(
            f"backbone.weights={weights}: {origin} trained {tagged}, this job uses {name}. "
            f"Weights only carry over between the same backbone. Fix: backbone={tagged}, or "
            f"a run that trained {name}.")
    # A job run before options existed built Keras' defaults: its label is the name.
    trained = run.data.tags.get("backbone_label", tagged)
    if tagged and trained != label:
        p = run.data.params
        fix = " ".join(f"backbone.{k}={p[f'backbone.{k}']}" for k in opts
                       if p.get(f"backbone.{k}") not in (None, "None", str(opts[k])))
        raise PretrainedError(
            f"backbone.weights={weights}: {origin} trained {trained}, this job builds {label} "
            f"({built(name, opts, include_top)}): other constructor options, other weight "
            f"shapes. Fix: {fix or 'the options of that run'}, or a run that trained {label}.")
    model = load_logged_model(tracking_uri, loc)
    return _transfer(base_of(model), name, input_size, origin, include_top, opts)


def from_keras_file(name: str, input_size: int, path: str, include_top: bool, opts: dict):
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
    return _transfer(base_of(model), name, input_size, f"file {path}", include_top, opts)
