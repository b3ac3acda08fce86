"""Freezing strategies: which layers of the pretrained base are trained.

Every strategy reduces to the index of the first trainable layer in
``base.layers`` (everything before it is frozen), so they compose with the
BatchNorm policy and are reported the same way:

- ``all``: the whole base frozen (transfer learning).
- ``none``: the whole base trainable (full fine-tuning).
- ``last_n``: ``base.layers[:-n]`` frozen, exactly as the lecture's
  ``for layer in vgg.layers[:-4]: layer.trainable = False``.
- ``last_blocks``: the last ``n`` blocks trainable. The Keras layer names
  label the blocks (``block5_``, ``conv5_block3_``, ``block_16_`` ...), but
  names alone miss the layers Keras auto-names inside a block
  (InceptionResNetV2's branch convolutions ``conv2d_199``..., NASNet's
  ``adjust_conv_projection_12`` and its ReLUs), which then stayed frozen. With
  a built base (``plan_for``) the boundary comes from the graph: a layer
  without a block name joins the trainable blocks when it reads from them
  (ops inside a block, the top layers after the last block) or when its
  outputs are read only by them; the walk back stops at the blocks' input,
  i.e. at a layer named for an earlier block or at a single-tensor cut (a
  layer whose output is the only tensor the rest of the base reads, such as
  a stage's input or Xception's block ``add``).
- ``from_layer``: trainable from the named layer on.

One exception to "everything after the first trainable layer": Keras lists
NASNet's layers by depth, so the adjust branch of a cell that follows a
reduction cell comes before some of that reduction cell's layers; those stay
frozen (``FreezePlan.frozen_after``) when the reduction cell is not one of the
trainable blocks.

A pretrained base is always *called* with ``training=False`` (``InferenceMode``),
so its BatchNorm moving statistics never change whatever is trainable; a random
base that trains runs as plain Keras runs it (``FollowsTraining``, build.py).
``apply`` judges the plan by the parameters it trains and refuses one that
trains none (freezeparams.py).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, replace

from transferlab.models import freezeparams

STRATEGIES = ("all", "none", "last_n", "last_blocks", "from_layer")


class FreezeError(ValueError):
    """A freezing spec that does not fit the built base (unknown layer, ...)."""


@dataclass(frozen=True)
class FreezePlan:
    """Where the trainable part of the base starts and why."""

    first_trainable: int  # index into base.layers; len(layers) = all frozen
    first_layer_name: str | None
    description: str
    frozen_after: frozenset[int] = frozenset()  # indices >= first_trainable that stay frozen
    # Set by ``apply`` on a built base: the base's trainable / all parameters, and the
    # BatchNorm policy that applied (``frozen`` or ``trainable``, ``freeze.bn=auto`` resolved).
    params_trainable: int | None = None
    params_total: int | None = None
    bn: str | None = None

    def trainable(self, index: int) -> bool:
        """Whether ``base.layers[index]`` is in the trainable part (BatchNorm policy aside)."""
        return index >= self.first_trainable and index not in self.frozen_after


def block_ids(layer_names: list[str], block_regex: str) -> list[str | None]:
    """Block id of each layer (None for layers outside any block)."""
    pattern = re.compile(block_regex)
    ids = []
    for name in layer_names:
        m = pattern.search(name)
        ids.append(m.group(1) if m else None)
    return ids


@dataclass(frozen=True)
class Graph:
    """The connectivity of a built base that ``last_blocks`` needs.

    Over ``base.operations`` (topological order; ``base.layers`` is the
    subsequence that are layers, the rest are ops such as ConvNeXt's residual
    ``add``), so no boundary is placed by looking through an op.
    """

    names: tuple[str, ...]  # every operation's name
    consumers: tuple[tuple[int, ...], ...]  # op index -> indices of the ops reading its outputs
    single_cut: tuple[bool, ...]  # its output is the only tensor of ops[:k+1] that ops[k+1:] read
    layer_ops: tuple[int, ...]  # op index of each entry of base.layers


def graph_of(base) -> Graph:
    """The ``Graph`` of a built functional base, in time linear in its size.

    The tensors crossing the cut before op ``i`` are those made by ``ops[:i]``
    and read by ``ops[i:]``; counting them for every ``i`` at once takes one
    pass over (producer, last reader) intervals.
    """
    ops = list(base.operations)
    pos = {id(op): k for k, op in enumerate(ops)}
    consumers = [set() for _ in ops]
    last = {}  # (producer op, output index) -> index of its last reader
    for k, op in enumerate(ops):
        for node in op._inbound_nodes:  # noqa: SLF001 (Keras keeps no public handle)
            for t in node.arguments.keras_tensors:
                h = t._keras_history  # noqa: SLF001
                src = pos.get(id(h.operation))
                if src is not None and src != k:
                    consumers[src].add(k)
                    key = (src, h.tensor_index)
                    last[key] = max(last.get(key, -1), k)
    for t in base.outputs:  # the base's outputs are read after its last op
        h = t._keras_history  # noqa: SLF001
        last[(pos[id(h.operation)], h.tensor_index)] = len(ops)
    diff = [0] * (len(ops) + 2)
    read = [0] * len(ops)  # outputs of each op that something reads
    for (src, _), end in last.items():
        diff[src + 1] += 1
        diff[end + 1] -= 1
        read[src] += 1
    live, acc = [], 0  # live[i]: tensors crossing the cut before op i
    for d in diff:
        acc += d
        live.append(acc)
    single = tuple(read[k] == 1 and live[k + 1] == 1 for k in range(len(ops)))
    return Graph(tuple(op.name for op in ops), tuple(tuple(sorted(c)) for c in consumers),
                 single, tuple(pos[id(l)] for l in base.layers))


def _blocks_on_graph(g: Graph, labels: list[str | None], wanted: set[str]):
    """The trainable part for the blocks ``wanted``, placed by the graph.

    The blocks' named layers, the unnamed layers that read from them (ops
    inside a block, the top layers after the last one) and the unnamed layers
    read only by the trainable part, up to the blocks' input (a named layer
    of an earlier block or a single-tensor cut).

    Returns:
        ``(first, frozen_after, joined)``: index into ``base.layers`` of the
        first trainable layer, the indices after it that stay frozen, and the
        names of the unnamed layers before the blocks' first named layer
        that joined them.
    """
    inside = [b in wanted for b in labels]
    for k, c in enumerate(g.consumers):  # forward: what reads the trainable part
        if inside[k]:
            for j in c:
                inside[j] = inside[j] or labels[j] is None
    s0 = inside.index(True)
    for k in range(len(labels) - 1, -1, -1):  # backward: readers come later, so are decided first
        c = g.consumers[k]
        if labels[k] is None and c and not g.single_cut[k] and all(inside[j] for j in c):
            inside[k] = True
    start = inside.index(True)
    first = next(i for i, k in enumerate(g.layer_ops) if k >= start)
    frozen_after = frozenset(i for i, k in enumerate(g.layer_ops) if k >= start and not inside[k])
    joined = [g.names[k] for k in g.layer_ops if k < s0 and inside[k]]
    return first, frozen_after, joined


def plan(layer_names: list[str], strategy: str, n: int | None = None,
         layer: str | None = None, block_regex: str | None = None,
         graph: Graph | None = None) -> FreezePlan:
    """Works out the first trainable layer of a base from its layer names (and graph).

    Args:
        layer_names: ``[l.name for l in base.layers]``, input layer included
            (that is how the lecture's ``vgg.layers[:-4]`` counts).
        strategy: one of ``STRATEGIES``.
        n: layer or block count for ``last_n`` / ``last_blocks``.
        layer: layer name for ``from_layer``.
        block_regex: regex whose first group is a layer's block id.
        graph: the base's ``Graph`` (``plan_for`` passes it): ``last_blocks``
            then places the block boundary by connectivity, not names alone.

    Returns:
        A FreezePlan.

    Raises:
        FreezeError: when the spec does not fit these layers.
    """
    total = len(layer_names)
    frozen_after, detail = frozenset(), ""
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
        ids = block_ids(list(graph.names) if graph else layer_names, block_regex)
        order = list(dict.fromkeys(i for i in ids if i is not None))
        if n is None or not 0 <= n <= len(order):
            raise FreezeError(
                f"freeze.n={n} blocks requested, the base has {len(order)} "
                f"({order[0]} ... {order[-1]}). Fix: freeze.n between 0 and {len(order)}."
            )
        if n == 0:
            start = total
        elif graph is not None:
            start, frozen_after, joined = _blocks_on_graph(graph, ids, set(order[len(order) - n:]))
            detail = (f"; {len(joined)} layer{'s' * (len(joined) != 1)} without a block name "
                      f"joined from the graph" + (f": {_some(joined)}" if joined else ""))
            if frozen_after:
                detail += (f"; {len(frozen_after)} layers of earlier blocks listed among them "
                           f"stay frozen: {_some([layer_names[i] for i in sorted(frozen_after)])}")
        else:
            start = ids.index(order[-n])
            detail = "; blocks from layer names only"
        if n:
            blocks = order[-1] if n == 1 else f"{order[-n]} ... {order[-1]}"
            detail = f" (last {n} of {len(order)} blocks: {blocks}{detail})"
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
    desc = (f"{total - start - len(frozen_after)} of {total} base layers trainable"
            + (f", from {name!r}" if name else " (base frozen)") + detail)
    return FreezePlan(start, name, desc, frozen_after)


def _some(names: list[str], k: int = 4) -> str:
    return ", ".join(names[:k]) + (f", ... ({len(names)} in all)" if len(names) > k else "")


def plan_for(base, freeze_cfg, block_regex: str | None = None) -> FreezePlan:
    """``plan`` for a built base and a ``FreezeConf`` (strategy, n, layer).

    ``last_blocks`` uses the base's graph for the block boundary.
    """
    g = graph_of(base) if freeze_cfg.strategy == "last_blocks" and block_regex else None
    return plan([l.name for l in base.layers], freeze_cfg.strategy, freeze_cfg.n,
                freeze_cfg.layer, block_regex, graph=g)


def apply(base, freeze_cfg, block_regex: str | None = None, *, random_init: bool = False,
          label: str | None = None) -> FreezePlan:
    """Marks ``base``'s layers trainable or frozen according to ``freeze_cfg``.

    The caller must (re)compile the model afterwards: Keras reads
    ``trainable`` when it builds the train step.

    Args:
        base: the backbone ``keras.Model``.
        freeze_cfg: a ``FreezeConf`` (strategy, n, layer, bn).
        block_regex: the backbone's block pattern, for ``last_blocks``.
        random_init: the base starts from random weights (``freeze.bn=auto``
            then trains its BatchNorm).
        label: the backbone's name in messages (default: the base's name).

    Returns:
        The FreezePlan that was applied, with the base's trainable parameters
        in ``params_trainable`` and its description.

    Raises:
        FreezeError: the strategy asks for part of the base to train, but that
            part holds no weight to train (e.g. MobileNetV2's last 2 layers,
            ``Conv_1_bn`` and ``out_relu``, under ``freeze.bn=frozen``); the
            message names the smallest fix.
    """
    import keras

    p = plan_for(base, freeze_cfg, block_regex)
    bn = freezeparams.bn_policy(freeze_cfg.bn, random_init)
    per_layer = freezeparams.per_layer(base)  # makes the whole base trainable first
    if p.first_trainable >= len(base.layers):
        base.trainable = False
    for i, l in enumerate(base.layers if base.trainable else ()):
        frozen = not p.trainable(i)
        if bn == "frozen" and isinstance(l, keras.layers.BatchNormalization):
            frozen = True
        l.trainable = not frozen
    trained, total = freezeparams.count(base.trainable_weights), freezeparams.count(base.weights)
    if not trained and freezeparams.intends_training(freeze_cfg):
        g = graph_of(base) if freeze_cfg.strategy == "last_blocks" and block_regex else None
        names = [l.name for l in base.layers]

        def replan(n):
            return plan(names, freeze_cfg.strategy, n, freeze_cfg.layer, block_regex, graph=g)

        base.trainable = False  # nothing half-applied stays behind
        raise FreezeError(freezeparams.refusal(base, freeze_cfg, p, per_layer, bn,
                                               label or base.name, replan))
    desc = (f"{p.description}; {trained:,} of {total:,} base parameters trainable"
            + (f" (BatchNorm {bn})" if trained and any(is_bn for _, is_bn in per_layer) else ""))
    return replace(p, description=desc, params_trainable=trained, params_total=total, bn=bn)


def freeze_label(strategy: str, n=None, layer=None) -> str:
    """The name a strategy goes by in tags and reports (``last4`` = last_n n=4)."""
    if strategy == "last_n":
        return f"last{n}"
    if strategy == "last_blocks":
        return f"last{n}blocks"
    if strategy == "from_layer":
        return f"from:{layer}"
    return strategy
