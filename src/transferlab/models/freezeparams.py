"""A freeze plan judged by the parameters it trains, not by its layer count.

``freeze.plan`` counts layers, as the lecture's ``vgg.layers[:-4]`` does; a
layer count says nothing about what trains. MobileNetV2's last two layers are
``Conv_1_bn`` and ``out_relu``: with ``freeze.bn=frozen`` they hold no weight
the optimizer may change, so ``freeze=last_n freeze.n=2`` would train the
head alone under a fine-tuning label (and the report would compare it with
``freeze=all`` as if fine-tuning had not helped). ``check`` refuses such a
plan before training and names the smallest change that trains something.

The BatchNorm policy (``freeze.bn``) is resolved here too: ``auto`` keeps a
pretrained base's BatchNorm frozen (Keras' fine-tuning advice) and trains a
random base's, as plain Keras trains a network from scratch.
"""

from __future__ import annotations

import math

BN_POLICIES = ("auto", "frozen", "trainable")


def bn_policy(bn: str, random_init: bool) -> str:
    """The BatchNorm policy that applies: ``frozen`` or ``trainable``.

    Args:
        bn: ``freeze.bn`` as configured (``auto``, ``frozen``, ``trainable``).
        random_init: whether the base starts from random weights (``backbone.weights=null``).
    """
    if bn == "auto":
        return "trainable" if random_init else "frozen"
    return bn


def count(variables) -> int:
    """The number of scalars in ``variables`` (parameters)."""
    return sum(math.prod(v.shape) for v in variables)


def per_layer(base) -> list[tuple[int, bool]]:
    """``(trainable parameters, is BatchNorm)`` of each of ``base.layers`` once made trainable.

    Makes every layer trainable (the caller sets the plan's flags afterwards): a
    frozen layer lists no trainable weights, whatever it would train. Each layer
    is set, not only the base: Keras' ``base.trainable = True`` on a base that is
    already trainable leaves a layer frozen by an earlier plan frozen (measured
    on ConvNeXt's LayerScale).
    """
    import keras

    base.trainable = True
    for l in base.layers:
        l.trainable = True
    return [(count(l.trainable_weights), isinstance(l, keras.layers.BatchNormalization))
            for l in base.layers]


def intends_training(freeze_cfg) -> bool:
    """Whether the strategy asks for part of the base to train (``all`` and ``n=0`` do not)."""
    s = freeze_cfg.strategy
    return s in ("none", "from_layer") or (s in ("last_n", "last_blocks") and bool(freeze_cfg.n))


def _names(names: list[str], k: int = 4) -> str:
    if len(names) == 1:
        return names[0]
    if len(names) <= k:
        return ", ".join(names[:-1]) + " and " + names[-1]
    return ", ".join(names[:k]) + f", ... {names[-1]} ({len(names)} layers)"


def _trains(params: list[tuple[int, bool]], indices, bn: str) -> int:
    return sum(params[i][0] for i in indices if not (params[i][1] and bn == "frozen"))


def refusal(base, freeze_cfg, plan, params, bn: str, label: str, replan) -> str:
    """The message for a plan that trains no parameter of the base, with the fix.

    Args:
        base: the built base (its layer names).
        freeze_cfg: the ``FreezeConf`` (strategy, n, layer).
        plan: the ``FreezePlan`` that trains nothing.
        params: ``per_layer(base)``.
        bn: the BatchNorm policy that applied (``frozen`` or ``trainable``).
        label: the backbone as users know it (``MobileNetV2``).
        replan: ``replan(n) -> FreezePlan`` for the same strategy with another ``n``.
    """
    names = [l.name for l in base.layers]
    chosen = [i for i in range(len(names)) if plan.trainable(i)]
    bn_helps = bn == "frozen" and _trains(params, chosen, "trainable") > 0
    alt = " or freeze.bn=trainable" if bn_helps else ""
    s = freeze_cfg.strategy
    what = f"no weights to train with freeze.bn={bn}"
    if s in ("last_n", "last_blocks"):
        fix = "freeze=none"
        limit = len(names) if s == "last_n" else 10 ** 6
        for n in range(freeze_cfg.n + 1, limit + 1):
            try:
                p = replan(n)
            except ValueError:  # FreezeError: more blocks than the base has
                break
            if _trains(params, [i for i in range(len(names)) if p.trainable(i)], bn):
                fix = f"freeze.n={n}"
                break
        unit = "layer" if s == "last_n" else "block"
        verb = "is" if s == "last_n" else "holds"
        if freeze_cfg.n != 1:
            unit, verb = f"{freeze_cfg.n} {unit}s", "are" if s == "last_n" else "hold"
        return (f"{label} last {unit} {verb} {_names([names[i] for i in chosen])}: "
                f"{what}; use {fix}{alt}.")
    if s == "from_layer":
        with_weights = [i for i in range(len(names)) if _trains(params, [i], bn)]
        fix = f"freeze.layer={names[with_weights[-1]]}" if with_weights else "freeze=all"
        return (f"{label} layers from {freeze_cfg.layer} on ({_names([names[i] for i in chosen])}): "
                f"{what}; use {fix} (the last layer with weights){alt}.")
    return f"{label} has {what}; use {alt[4:] or 'freeze=all'}."
