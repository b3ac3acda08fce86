"""Freezing strategies: which layers of the pretrained base are trained.

Every strategy reduces to one number, the index of the first trainable layer
in ``base.layers`` (everything before it is frozen), so they compose with the
BatchNorm policy and are reported the same way:

- ``all``: the whole base frozen (transfer learning).
- ``none``: the whole base trainable (full fine-tuning).
- ``last_n``: ``base.layers[:-n]`` frozen, exactly as the lecture's
  ``for layer in vgg.layers[:-4]: layer.trainable = False``.
- ``last_blocks``: the last ``n`` blocks trainable, blocks read off the Keras
  layer names (``block5_``, ``conv5_block3_``, ``block_16_`` ...).
- ``from_layer``: trainable from the named layer on.

The base is always *called* with ``training=False`` (see model.py), so
BatchNorm moving statistics never change whatever is trainable.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

STRATEGIES = ("all", "none", "last_n", "last_blocks", "from_layer")


class FreezeError(ValueError):
    """A freezing spec that does not fit the built base (unknown layer, ...)."""


@dataclass(frozen=True)
class FreezePlan:
    """Where the trainable part of the base starts and why."""

    first_trainable: int  # index into base.layers; len(layers) = all frozen
    first_layer_name: str | None
    description: str


def block_ids(layer_names: list[str], block_regex: str) -> list[str | None]:
    """Block id of each layer (None for layers outside any block)."""
    pattern = re.compile(block_regex)
    ids = []
    for name in layer_names:
        m = pattern.search(name)
        ids.append(m.group(1) if m else None)
    return ids


def plan(layer_names: list[str], strategy: str, n: int | None = None,
         layer: str | None = None, block_regex: str | None = None) -> FreezePlan:
    """Works out the first trainable layer of a base from its layer names.

    Args:
        layer_names: ``[l.name for l in base.layers]``, input layer included
            (that is how the lecture's ``vgg.layers[:-4]`` counts).
        strategy: one of ``STRATEGIES``.
        n: layer or block count for ``last_n`` / ``last_blocks``.
        layer: layer name for ``from_layer``.
        block_regex: regex whose first group is a layer's block id.

    Returns:
        A FreezePlan.

    Raises:
        FreezeError: when the spec does not fit these layers.
    """
    total = len(layer_names)
    if strategy == "all":
        start = total
    elif strategy == "none":
        start = 0
    elif strategy == "last_n":
        if n is None or not 0 <= n <= total:
            raise FreezeError(f"freeze.n={n} must be between 0 and the base's {total} layers.")
        start = total - n  # n=0 -> all frozen (layers[:-0] would freeze nothing)
    elif strategy == "last_blocks":
        if not block_regex:
            raise FreezeError("this backbone's layer names carry no blocks; use last_n or from_layer.")
        ids = block_ids(layer_names, block_regex)
        order = list(dict.fromkeys(i for i in ids if i is not None))
        if n is None or not 0 <= n <= len(order):
            raise FreezeError(
                f"freeze.n={n} blocks requested, the base has {len(order)} "
                f"({order[0]} ... {order[-1]}). Fix: freeze.n between 0 and {len(order)}."
            )
        start = total if n == 0 else ids.index(order[-n])
    elif strategy == "from_layer":
        if layer not in layer_names:
            close = difflib.get_close_matches(str(layer), layer_names, n=5, cutoff=0.5)
            raise FreezeError(
                f"freeze.layer={layer!r} is not a layer of the base. "
                f"Closest names: {', '.join(close) or '(none)'}; "
                f"the last layers are: {', '.join(layer_names[-5:])}."
            )
        start = layer_names.index(layer)
    else:
        raise FreezeError(f"Unknown freeze strategy {strategy!r}; allowed: {', '.join(STRATEGIES)}.")
    name = layer_names[start] if start < total else None
    desc = (f"{total - start} of {total} base layers trainable"
            + (f", from {name!r}" if name else " (base frozen)"))
    return FreezePlan(start, name, desc)


def plan_for(base, freeze_cfg, block_regex: str | None = None) -> FreezePlan:
    """``plan`` for a built base and a ``FreezeConf`` (strategy, n, layer)."""
    return plan([l.name for l in base.layers], freeze_cfg.strategy, freeze_cfg.n,
                freeze_cfg.layer, block_regex)


def apply(base, freeze_cfg, block_regex: str | None = None) -> FreezePlan:
    """Marks ``base``'s layers trainable or frozen according to ``freeze_cfg``.

    The caller must (re)compile the model afterwards: Keras reads
    ``trainable`` when it builds the train step.

    Args:
        base: the backbone ``keras.Model``.
        freeze_cfg: a ``FreezeConf`` (strategy, n, layer, bn).
        block_regex: the backbone's block pattern, for ``last_blocks``.

    Returns:
        The FreezePlan that was applied.
    """
    import keras

    p = plan_for(base, freeze_cfg, block_regex)
    if p.first_trainable >= len(base.layers):
        base.trainable = False
        return p
    base.trainable = True
    for i, l in enumerate(base.layers):
        frozen = i < p.first_trainable
        if freeze_cfg.bn == "frozen" and isinstance(l, keras.layers.BatchNormalization):
            frozen = True
        l.trainable = not frozen
    return p


def freeze_label(strategy: str, n=None, layer=None) -> str:
    """The name a strategy goes by in tags and reports (``last4`` = last_n n=4)."""
    if strategy == "last_n":
        return f"last{n}"
    if strategy == "last_blocks":
        return f"last{n}blocks"
    if strategy == "from_layer":
        return f"from:{layer}"
    return strategy
