"""Why a weights file or a saved model does not fit a backbone: the variant its shapes belong to.

Keras' own message says which tensor's shape differs ("Shape mismatch in layer #0
(named conv1) ... (3, 3, 3, 32) ... (3, 3, 3, 8)"); the user needs the cause (8 filters in
conv1: ``alpha=0.25``) and the fix. ``variant_of_file`` tries the file on Keras' graph of
each ImageNet option combination of the application (``options.FAMILIES``), with and
without the top, the combination its file name spells first; ``variant_of_model`` compares a
saved model's weight shapes with those graphs. Both only run once a load has failed.
"""

from __future__ import annotations

import os
import re
import warnings

from transferlab.models import options
from transferlab.models.pretrained import PretrainedError
from transferlab.models.registry import spec


def _graph(name: str, size: int, include_top: bool, opts: dict):
    """Keras' graph of these options, random weights (nothing downloaded)."""
    import keras

    s = spec(name)
    size = size if not include_top or s.constructor.startswith("MobileNet") else s.default_size
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return getattr(keras.applications, s.constructor)(
            include_top=include_top, weights=None, input_shape=(size, size, 3), **opts)


def _candidates(name: str, opts: dict, include_top: bool, hint: str = ""):
    """(options, include_top) pairs to try: those whose Keras file name is ``hint`` first,
    then the same options with the other top, then Keras' other ImageNet combinations."""
    fam = options.FAMILIES.get(spec(name).constructor)
    combos = [dict(c) for c in fam.imagenet] if fam else [dict(opts)]
    pairs = [(dict(opts), not include_top)] + [(c, t) for t in (include_top, not include_top)
                                               for c in combos if c != opts]
    if fam:
        named = [(c, t) for c, t in pairs for size in fam.sizes
                 if options.imagenet_file(name, c, size, t) == hint]
        pairs = named[:1] + [p for p in pairs if p not in named[:1]]
    return pairs


def _describe(name: str, opts: dict, include_top: bool) -> str:
    args = ", ".join(f"{k}={v}" for k, v in opts.items())
    return (f"keras.applications.{spec(name).constructor}({args + ', ' if args else ''}"
            f"include_top={include_top})")


def _first_difference(model, want, where: str) -> str:
    """``conv1 has 8 filters in the file, 32 in the graph built here``: the first layer whose
    shapes differ (``where``: "the file", "the source")."""
    import keras

    for a, b in zip([l for l in model.layers if l.weights], [l for l in want.layers if l.weights]):
        sa, sb = [tuple(w.shape) for w in a.weights], [tuple(w.shape) for w in b.weights]
        if sa != sb:
            if isinstance(a, keras.layers.Conv2D) and not isinstance(a, keras.layers.DepthwiseConv2D):
                return f"{a.name} has {sa[0][-1]} filters in {where}, {sb[0][-1]} in the graph built here"
            return f"{a.name} has weights of shapes {sa} in {where}, {sb} in the graph built here"
    return (f"{where} has {sum(1 for l in model.layers if l.weights)} layers with weights, the graph "
            f"built here {sum(1 for l in want.layers if l.weights)}")


def _flags(name: str, opts: dict) -> str:
    """``--alpha 0.25 --minimalistic``: the options that are not Keras' defaults, as predict's flags."""
    out = []
    for k, v in opts.items():
        if v != options.takes(name)[k]:
            out.append(f"--{k.replace('_', '-')}" + ("" if isinstance(v, bool) else f" {v}"))
    return " ".join(out)


def _cause(name: str, size: int, opts: dict, include_top: bool, found: tuple, model,
           where: str) -> str:
    """The sentence naming the variant found, what differs, and the fix."""
    o, top = found
    parts = []
    if o != opts:
        changed = {k: v for k, v in o.items() if opts.get(k) != v}
        sets = " ".join(f"backbone.{k}={str(v).lower() if isinstance(v, bool) else v}"
                        for k, v in changed.items())
        parts.append(f"{_first_difference(model, _graph(name, size, top, opts), where)} "
                     f"({', '.join(f'{k} {v}' for k, v in changed.items())}). Fix: {sets} "
                     f"(transferlab predict: {_flags(name, o) or 'no option flags'})")
    if top != include_top:
        other = options.imagenet_file(name, o, size, include_top)
        keras_file = f" (Keras' {other})" if other else ""
        if top:
            parts.append("it holds the 1000-class ImageNet top (include_top=True), which a job's "
                         f"base has not. Fix: the file without the top{keras_file}, or classify "
                         f"with this one: transferlab predict --backbone {name} "
                         f"{_flags(name, o) + ' ' if _flags(name, o) else ''}--weights <this file>")
        else:
            parts.append("it has no ImageNet top (include_top=False), which transferlab predict "
                         f"needs. Fix: the file with the top{keras_file}")
    return f"its shapes are those of {_describe(name, o, top)}: " + "; ".join(parts)


def variant_of_file(name: str, path: str, size: int, opts: dict, include_top: bool) -> str | None:
    """The cause of a file not fitting, or None when no ImageNet variant of ``name`` takes it."""
    for o, top in _candidates(name, opts, include_top, os.path.basename(path)):
        model = _graph(name, size, top, o)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model.load_weights(path)
        except Exception:  # another variant's shapes: the next
            continue
        return _cause(name, size, opts, include_top, (o, top), model, "the file")
    return None


def variant_of_model(name: str, src, size: int, opts: dict, include_top: bool) -> str | None:
    """The cause of a saved model's weights not fitting (its shapes against each variant's)."""
    shapes = [[tuple(w.shape) for w in l.weights] for l in src.layers if l.weights]
    for o, top in _candidates(name, opts, include_top):
        model = _graph(name, size, top, o)
        if [[tuple(w.shape) for w in l.weights] for l in model.layers if l.weights] == shapes:
            return _cause(name, size, opts, include_top, (o, top), src, "the source")
    return None


def _one_line(err: Exception, limit: int = 400) -> str:
    """Keras' message on one line, without its glitches ("(named conv1)for", "layers.")."""
    text = re.sub(r"\)(?=[A-Za-z])", ") ", " ".join(str(err).split())).rstrip(". ")
    return text if len(text) <= limit else text[:limit] + " ..."


def built(name: str, opts: dict, include_top: bool) -> str:
    args = "".join(f"{k}={v}, " for k, v in opts.items())
    return f"keras.applications.{spec(name).constructor}({args}include_top={include_top})"


def file_mismatch(name: str, path: str, err: Exception, include_top: bool = False,
                  opts: dict | None = None, size: int | None = None) -> PretrainedError:
    """The error for a weights file that does not fit the backbone (Keras' ValueError): the
    variant of the application its shapes belong to (``diagnose``) and the fix, or what the
    file would have to be."""
    opts = options.resolve(name, opts)
    size = size or spec(name).default_size
    try:
        cause = variant_of_file(name, path, size, opts, include_top)
    except Exception:  # the diagnosis is a courtesy: Keras' own message stands without it
        cause = None
    head = f"Weights file {path} does not fit {name} as built here, {built(name, opts, include_top)}"
    if cause:
        return PretrainedError(f"{head}: {cause}. (Keras: {_one_line(err)}.)")
    return PretrainedError(
        f"{head}: {_one_line(err)}. Its shapes fit none of {name}'s ImageNet variants"
        f"{' (options ' + ', '.join(options.takes(name)) + ')' if options.takes(name) else ''}"
        ", with or without the top. Fix: the weights of that model saved with "
        ".save_weights('x.weights.h5') (or a Keras .h5 file of it; a full model saved by Keras: "
        "its .keras file), backbone.weights=imagenet|null, or backbone.weights=run:<id> for a "
        "backbone trained by an earlier job.")
