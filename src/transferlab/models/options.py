"""Keras applications' constructor options (``alpha``, ``depth_multiplier``, ``minimalistic``)
as data: which application takes which, Keras' defaults, the ImageNet files Keras has for them.

Pure Python (no TensorFlow) so a job's options are checked before TensorFlow loads.
Transcribed from Keras 3 (``keras/src/applications/``), checked against the installed
Keras by ``tests/test_options.py`` (every option combination Keras accepts with
``weights="imagenet"``, and the file name its download asks for at each size):

- ``mobilenet.py``: ``MobileNet(alpha=1.0, depth_multiplier=1)``; ImageNet weights for
  ``depth_multiplier=1`` and alpha 0.25, 0.50, 0.75, 1.0, one file per input size 128,
  160, 192, 224 (``mobilenet_<2_5|5_0|7_5|1_0>_<size>_tf[_no_top].h5``).
- ``mobilenet_v2.py``: ``MobileNetV2(alpha=1.0)``; alpha 0.35, 0.50, 0.75, 1.0, 1.3, 1.4 at
  96, 128, 160, 192, 224 px (``mobilenet_v2_weights_tf_dim_ordering_tf_kernels_<alpha>_<size>[_no_top].h5``).
- ``mobilenet_v3.py``: ``MobileNetV3Small/Large(alpha=1.0, minimalistic=False)``; alpha
  0.75 or 1.0, minimalistic only at 1.0, one file at 224 px
  (``weights_mobilenet_v3_<small|large>[_minimalistic]_224_<alpha>_float[_no_top_v2].h5``).

At a size with no file of its own Keras loads the 224 px file (MobileNet, V2: a warning
"Weights for input shape (224, 224) will be loaded as the default"; V3 the same);
these networks are fully convolutional, so those weights apply at any size
(``imagenet_file`` names the file that is loaded).
"""

from __future__ import annotations

from dataclasses import dataclass

from transferlab.models.registry import BACKBONES, spec

KEYS = ("alpha", "depth_multiplier", "minimalistic")  # the schema's backbone.<key>s


class OptionError(ValueError):
    """A constructor option the application does not take, or has no ImageNet weights for."""


@dataclass(frozen=True)
class Family:
    """The constructor options of one Keras application.

    Attributes:
        defaults: option -> Keras' default value.
        imagenet: the option combinations Keras has ImageNet weights for.
        sizes: input sizes (px) with an ImageNet file of their own.
        source: the Keras module that states them.
    """

    defaults: dict
    imagenet: tuple
    sizes: tuple
    source: str


_V3 = ({"alpha": 0.75, "minimalistic": False}, {"alpha": 1.0, "minimalistic": False},
       {"alpha": 1.0, "minimalistic": True})
FAMILIES = {
    "MobileNet": Family({"alpha": 1.0, "depth_multiplier": 1},
                        tuple({"alpha": a, "depth_multiplier": 1} for a in (0.25, 0.5, 0.75, 1.0)),
                        (128, 160, 192, 224), "keras/src/applications/mobilenet.py"),
    "MobileNetV2": Family({"alpha": 1.0}, tuple({"alpha": a} for a in (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)),
                          (96, 128, 160, 192, 224), "keras/src/applications/mobilenet_v2.py"),
    "MobileNetV3Small": Family({"alpha": 1.0, "minimalistic": False}, _V3, (224,),
                               "keras/src/applications/mobilenet_v3.py"),
    "MobileNetV3Large": Family({"alpha": 1.0, "minimalistic": False}, _V3, (224,),
                               "keras/src/applications/mobilenet_v3.py"),
}
# len(base.layers) without the top where an option changes it (minimalistic: no SE blocks,
# ReLU for hard-swish); alpha and depth_multiplier change widths only.
_MINIMALISTIC_LAYERS = {"MobileNetV3Small": 103, "MobileNetV3Large": 139}
_SHORT = {"alpha": "a", "depth_multiplier": "dm"}


def _ctor(name: str) -> str:
    return spec(name).constructor


def takes(name: str) -> dict:
    """Option -> Keras' default for the options registry entry ``name`` takes ({} for none)."""
    fam = FAMILIES.get(_ctor(name))
    return dict(fam.defaults) if fam else {}


def given(node) -> dict:
    """The option keys set (not None) in a ``backbone`` config node or mapping."""
    get = node.get if hasattr(node, "get") else (lambda k, d=None: getattr(node, k, d))
    return {k: get(k, None) for k in KEYS if get(k, None) is not None}


def _fmt(v) -> str:
    return ("true" if v else "false") if isinstance(v, bool) else str(v)


def appliers() -> dict:
    """Option -> the registry names that take it."""
    return {k: [n for n in BACKBONES if k in takes(n)] for k in KEYS}


def resolve(name: str, options=None) -> dict:
    """The options the application is built with: those given, Keras' defaults for the rest.

    Args:
        name: registry name, e.g. ``"mobilenet"``.
        options: option -> value (None: Keras' default); a ``backbone`` config node works too.

    Returns:
        Option -> value for every option ``name`` takes (``{}`` for an application with none),
        typed as Keras expects (alpha float, depth_multiplier int, minimalistic bool).

    Raises:
        OptionError: an option the application does not take (naming those it takes), a
            value of the wrong type or range.
    """
    opts = given(options) if options is not None else {}
    defaults = takes(name)
    extra = [k for k in opts if k not in defaults]
    if extra:
        k = extra[0]
        took = (f"takes backbone.{', backbone.'.join(defaults)}" if defaults
                else "takes no constructor options")
        users = ", ".join(appliers()[k])
        raise OptionError(f"backbone.{k}={_fmt(opts[k])}: {name} (keras.applications.{_ctor(name)}) "
                          f"{took}; {k} applies to {users}. Fix: drop backbone.{k}, or a backbone "
                          f"that takes it (backbone={appliers()[k][0]}).")
    out = dict(defaults)
    for k, v in opts.items():
        try:
            out[k] = {"alpha": float, "depth_multiplier": int, "minimalistic": bool}[k](v)
        except (TypeError, ValueError):
            raise OptionError(f"backbone.{k}={v!r}: not a number.") from None
        if isinstance(v, bool) != (k == "minimalistic") or (k == "depth_multiplier" and out[k] != v):
            raise OptionError(f"backbone.{k}={v!r}: {k} is "
                              + {"alpha": "a number (float)", "depth_multiplier": "a whole number",
                                 "minimalistic": "true or false"}[k] + ".")
    if out.get("alpha", 1.0) <= 0 or out.get("depth_multiplier", 1) < 1:
        raise OptionError(f"backbone.alpha must be > 0 and backbone.depth_multiplier >= 1, got "
                          f"{', '.join(f'{k}={_fmt(v)}' for k, v in out.items())}.")
    return out


def has_imagenet(name: str, opts: dict) -> bool:
    """Whether Keras has ImageNet weights for these (resolved) options."""
    fam = FAMILIES.get(_ctor(name))
    return fam is None or any(opts == combo for combo in fam.imagenet)


def combinations(name: str) -> str:
    """Keras' ImageNet option combinations and sizes of ``name``, as one sentence."""
    fam = FAMILIES[_ctor(name)]
    combos = "; ".join(", ".join(f"{k}={_fmt(v)}" for k, v in c.items()) for c in fam.imagenet)
    return (f"Keras has ImageNet weights of {_ctor(name)} for {combos}, each at "
            f"{', '.join(map(str, fam.sizes))} px ({fam.source}; at another size Keras loads "
            f"the {fam.sizes[-1]} px file)")


def check_imagenet(name: str, opts: dict) -> None:
    """Raises OptionError (with Keras' valid combinations) where ``weights=imagenet`` has no file."""
    if not has_imagenet(name, opts):
        got = ", ".join(f"backbone.{k}={_fmt(v)}" for k, v in opts.items())
        raise OptionError(f"backbone.weights=imagenet with {got}: {combinations(name)}. Fix: one of "
                          "those, or backbone.weights=null (random init) or a weights file of "
                          "your own for these options.")


def imagenet_size(name: str, size: int) -> int:
    """The input size of the ImageNet file Keras loads at ``size`` (its own, else 224)."""
    fam = FAMILIES.get(_ctor(name))
    return size if fam is None or size in fam.sizes else fam.sizes[-1]


def imagenet_file(name: str, opts: dict, size: int, include_top: bool = False) -> str | None:
    """The file name Keras' download asks for (``~/.keras/models/<it>``), None where this
    table does not know it (applications without options) or Keras has none."""
    c = _ctor(name)
    if c not in FAMILIES or not has_imagenet(name, opts):
        return None
    rows = imagenet_size(name, size)
    if c == "MobileNet":
        alpha = {1.0: "1_0", 0.75: "7_5", 0.5: "5_0", 0.25: "2_5"}[opts["alpha"]]
        return f"mobilenet_{alpha}_{rows}_tf{'' if include_top else '_no_top'}.h5"
    if c == "MobileNetV2":
        return (f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{float(opts['alpha'])}_{rows}"
                f"{'' if include_top else '_no_top'}.h5")
    kind = "small" if c == "MobileNetV3Small" else "large"
    model = f"{kind}{'_minimalistic' if opts['minimalistic'] else ''}_224_{opts['alpha']}_float"
    return f"weights_mobilenet_v3_{model}{'' if include_top else '_no_top_v2'}.h5"


def top_sizes(name: str) -> tuple | None:
    """The input sizes Keras builds ``name`` at with its ImageNet top (None: any size >= its
    minimum; MobileNetV3 pools before its top). Elsewhere Keras requires the size its weights
    were trained at (``imagenet_utils.obtain_input_shape``), the MobileNets each size they have."""
    c = _ctor(name)
    if c.startswith("MobileNetV3"):
        return None
    return FAMILIES[c].sizes if c in FAMILIES else (spec(name).default_size,)


def size_of_file(name: str, opts: dict, path: str) -> int | None:
    """The input size Keras' ImageNet file name ``path`` states for these options (with its
    top), e.g. 128 for ``mobilenet_2_5_128_tf.h5``; None for another name."""
    import os

    fam = FAMILIES.get(_ctor(name))
    base = os.path.basename(str(path))
    return next((s for s in (fam.sizes if fam else ()) if imagenet_file(name, opts, s, True) == base), None)


def label(name: str, opts: dict | None = None) -> str:
    """The backbone as runs, reports and bench name it: ``name`` plus each option that is not
    Keras' default (``mobilenet-a0.25``, ``mobilenet-dm2``, ``mobilenetv3small-min``)."""
    opts = resolve(name, opts)
    parts = [name]
    for k, v in opts.items():
        if v != takes(name)[k]:
            parts.append("min" if k == "minimalistic" and v else f"{_SHORT.get(k, k)}{_fmt(v)}")
    return "-".join(parts)


def num_layers(name: str, opts: dict | None = None) -> int:
    """``len(base.layers)`` without the top for these options (the registry's, else minimalistic's)."""
    opts = resolve(name, opts)
    if opts.get("minimalistic"):
        return _MINIMALISTIC_LAYERS[_ctor(name)]
    return spec(name).num_layers
