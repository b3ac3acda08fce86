"""Freezing strategies: exact trainable counts on VGG19 (the lecture's model), whole blocks on every family."""

from types import SimpleNamespace

import pytest

from transferlab.models.freeze import FreezeError, plan

VGG19_LAYERS = (["input_layer"]
                + [f"block{b}_{k}" for b, n in ((1, 2), (2, 2), (3, 4), (4, 4), (5, 4))
                   for k in [f"conv{i}" for i in range(1, n + 1)] + ["pool"]])
CONV = 3 * 3 * 512 * 512 + 512  # one block5 conv: 2,359,808 params
HEAD = 7 * 7 * 512 + 1          # Flatten (25,088) -> Dense(1): 25,089


def test_plan_counts_layers_as_the_lecture_does():
    assert len(VGG19_LAYERS) == 22
    p = plan(VGG19_LAYERS, "last_n", n=4)
    # vgg.layers[:-4] frozen -> block5_conv2, conv3, conv4, pool trainable
    assert VGG19_LAYERS[p.first_trainable:] == ["block5_conv2", "block5_conv3", "block5_conv4", "block5_pool"]


@pytest.mark.parametrize("strategy,kw,first", [
    ("all", {}, None),
    ("none", {}, "input_layer"),
    ("last_n", {"n": 0}, None),          # n=0 freezes all (layers[:-0] would freeze none)
    ("last_blocks", {"n": 1}, "block5_conv1"),
    ("last_blocks", {"n": 2}, "block4_conv1"),
    ("from_layer", {"layer": "block5_conv3"}, "block5_conv3"),
])
def test_plan_first_trainable_layer(strategy, kw, first):
    p = plan(VGG19_LAYERS, strategy, block_regex=r"^(block\d+)_", **kw)
    assert p.first_layer_name == first


def test_unknown_layer_suggests_close_names():
    with pytest.raises(FreezeError) as e:
        plan(VGG19_LAYERS, "from_layer", layer="block5_conv9")
    assert "block5_conv9" in str(e.value) and "block5_conv1" in str(e.value)


def test_too_many_blocks_names_the_count():
    with pytest.raises(FreezeError) as e:
        plan(VGG19_LAYERS, "last_blocks", n=6, block_regex=r"^(block\d+)_")
    assert "5" in str(e.value) and "freeze.n=6" in str(e.value)


@pytest.mark.parametrize("overrides,trainable", [
    (["freeze=all"], HEAD),
    (["freeze=last4"], 3 * CONV + HEAD),
    (["freeze=last_blocks", "freeze.n=1"], 4 * CONV + HEAD),
    (["freeze=from_layer", "freeze.layer=block5_conv3"], 2 * CONV + HEAD),
    (["freeze=none"], 20_049_473),
])
def test_vgg19_trainable_counts_are_exact(compose, overrides, trainable):
    from transferlab.models.build import build_model, param_counts

    cfg = compose(["backbone=vgg19", "backbone.weights=null", *overrides])
    model, base, _ = build_model(cfg, num_classes=2)
    total, n_trainable = param_counts(model)
    assert total == 20_049_473  # the lecture's VGG19 @224 + Flatten + Dense(1)
    assert n_trainable == trainable
    assert n_trainable == sum(int(w.numpy().size) for w in model.trainable_weights)


def test_batchnorm_policy_on_resnet50(compose):
    import keras

    from transferlab.models.build import build_model

    for bn, expect in (("frozen", False), ("trainable", True)):
        cfg = compose(["backbone=resnet50", "backbone.weights=null", "image_size=32",
                       "freeze=last_blocks", "freeze.n=1", f"freeze.bn={bn}"])
        _, base, p = build_model(cfg, num_classes=3)
        tail = base.layers[p.first_trainable:]
        assert p.first_layer_name == "conv5_block3_1_conv"
        bns = [l for l in tail if isinstance(l, keras.layers.BatchNormalization)]
        convs = [l for l in tail if isinstance(l, keras.layers.Conv2D)]
        assert bns and convs and all(l.trainable for l in convs)
        assert all(l.trainable == expect for l in bns)
        assert not any(l.trainable for l in base.layers[: p.first_trainable])


# -- last_blocks on the real graphs of every family with blocks ---------------
#
# Checked against the built graph, independently of freeze.graph_of: a layer
# with weights whose outputs are read only by the trainable part (directly or
# through layers that are) belongs to the trainable blocks, unless it is named
# as an earlier block's or its output is the one tensor everything after it
# depends on (the block's input: every other layer is its ancestor or its
# descendant); no layer named as an earlier block's may be trainable; and the
# frozen part reads nothing from the trainable part (so it is a prefix the
# feature cache can cut off).

FAMILIES = {  # family -> (one small representative in the fast suite, the others)
    "vgg": ("vgg16", ["vgg19"]),
    "xception": ("xception", []),
    "resnet": ("resnet50", ["resnet101", "resnet152"]),
    "resnet_v2": ("resnet50v2", ["resnet101v2", "resnet152v2"]),
    "densenet": ("densenet121", ["densenet169", "densenet201"]),
    "mobilenet": ("mobilenet", []),
    "mobilenet_v2": ("mobilenetv2", []),
    "mobilenet_v3": ("mobilenetv3small", ["mobilenetv3large"]),
    "efficientnet": ("efficientnetb0", [f"efficientnetb{i}" for i in range(1, 8)]),
    "efficientnet_v2": ("efficientnetv2b0", ["efficientnetv2b1", "efficientnetv2b2",
                                             "efficientnetv2b3", "efficientnetv2s",
                                             "efficientnetv2m", "efficientnetv2l"]),
    "inception_resnet_v2": ("inceptionresnetv2", []),
    "nasnet": ("nasnetmobile", ["nasnetlarge"]),
    "convnext": ("convnexttiny", ["convnextsmall", "convnextbase", "convnextlarge",
                                  "convnextxlarge"]),
}
_BASES = {}
_REUSED = ("inceptionresnetv2", "nasnetmobile")  # kept for the tests naming them


def _base(name):
    """(base, layer readers, single-tensor-cut flags), built once per test session."""
    if name not in _BASES:
        import keras

        from transferlab.models import weights

        keras.backend.clear_session()  # deterministic auto-names (conv2d_199 ...)
        size = 75 if name.startswith(("inception", "xception")) else 32
        base = weights.build(name, size, weights=None)
        for other in [b for b in _BASES if b not in _REUSED]:  # few bases alive at a time
            del _BASES[other]
        _BASES[name] = (base, *_reader_graph(base))
    return _BASES[name]


def _reader_graph(base):
    """Per layer: the layers reading its output (through ops such as ``add``) and whether
    its output is a single-tensor cut (every other layer is an ancestor or a descendant)."""
    ops = base.operations
    pos = {id(o): k for k, o in enumerate(ops)}
    readers = [set() for _ in ops]
    for k, op in enumerate(ops):
        for node in op._inbound_nodes:
            for t in node.arguments.keras_tensors:
                readers[pos[id(t._keras_history.operation)]].add(k)
    layer_of = {pos[id(l)]: i for i, l in enumerate(base.layers)}

    def layers_reading(k):
        out = set()
        for r in readers[k]:
            out |= {layer_of[r]} if r in layer_of else layers_reading(r)
        return out

    reads = [sorted(layers_reading(pos[id(l)])) for l in base.layers]
    n = len(reads)
    anc, desc = [0] * n, [0] * n
    for i in range(n):
        for r in reads[i]:
            anc[r] |= anc[i] | (1 << i)
    for i in range(n - 1, -1, -1):
        for r in reads[i]:
            desc[i] |= desc[r] | (1 << r)
    full = (1 << n) - 1
    return reads, [(anc[i] | desc[i] | (1 << i)) == full for i in range(n)]


def _check_last_blocks(name, n, bn="frozen"):
    import keras

    from transferlab.models import freeze, registry

    base, reads, cut = _base(name)
    regex = registry.spec(name).block_regex
    p = freeze.apply(base, SimpleNamespace(strategy="last_blocks", n=n, layer=None, bn=bn), regex)
    layers = base.layers
    ids = freeze.block_ids([l.name for l in layers], regex)
    order = list(dict.fromkeys(i for i in ids if i is not None))
    earlier = set(order[:-n])
    region = {i for i in range(len(layers)) if p.trainable(i)}
    assert region and all(p.trainable(i) for i, b in enumerate(ids) if b in order[-n:])
    # the trainable blocks' own layers, and every layer that feeds only them
    belongs = set(region)
    for i in range(len(layers) - 1, -1, -1):
        if ids[i] not in earlier and not cut[i] and reads[i] and set(reads[i]) <= belongs:
            belongs.add(i)
    missed = [layers[i].name for i in sorted(belongs - region) if layers[i].weights]
    assert not missed, f"{name} last {n} blocks: frozen although they feed only those blocks"
    wrong = [layers[i].name for i in sorted(region) if ids[i] in earlier]
    assert not wrong, f"{name} last {n} blocks: layers of earlier blocks trainable"
    leak = [layers[r].name for i in region for r in reads[i] if r not in region]
    assert not leak, f"{name}: frozen layers reading the trainable part"
    for i, l in enumerate(layers):  # the flags apply() set
        is_bn = isinstance(l, keras.layers.BatchNormalization)
        assert l.trainable == (i in region and not (is_bn and bn == "frozen")), l.name
    return base, p


def _weights_in(base, region, bn):
    """Parameters the layers ``region`` (indices) would train under ``bn``, read from Keras."""
    import keras

    base.trainable = True
    for layer in base.layers:  # each one: Keras leaves a layer frozen by an earlier plan frozen
        layer.trainable = True
    return sum(int(w.numpy().size) for i in region for w in base.layers[i].trainable_weights
               if not (bn == "frozen" and isinstance(base.layers[i], keras.layers.BatchNormalization)))


def _check_params_judged(name):
    """Every strategy, both BatchNorm policies: a plan is refused exactly when the layers it
    would train hold no weight to train; the fix it names is the smallest that trains some;
    an accepted plan's count is the base's trainable weights."""
    from transferlab.models import freeze, registry

    base = _base(name)[0]
    spec = registry.spec(name)
    n_layers = len(base.layers)
    last = max(i for i in range(n_layers) if _weights_in(base, [i], "frozen"))
    specs = [("last_n", n, None) for n in (1, 2, 3, n_layers - last)]
    specs += [("from_layer", None, base.layers[-1].name), ("from_layer", None, base.layers[last].name),
              ("none", None, None), ("all", None, None), ("last_n", 0, None)]
    specs += [("last_blocks", 1, None)] if spec.block_regex else []
    for bn in ("frozen", "trainable"):
        for strategy, n, layer in specs:
            cfg = SimpleNamespace(strategy=strategy, n=n, layer=layer, bn=bn)
            p = freeze.plan_for(base, cfg, spec.block_regex)
            expect = _weights_in(base, [i for i in range(n_layers) if p.trainable(i)], bn)
            try:
                applied = freeze.apply(base, cfg, spec.block_regex, label=spec.constructor)
            except FreezeError as e:
                assert expect == 0 and strategy != "all" and n != 0, (name, cfg)
                msg = str(e)
                assert msg.startswith(spec.constructor) and f"freeze.bn={bn}" in msg, msg
                if strategy == "last_n":
                    fix = int(msg.split("use freeze.n=")[1].split()[0].rstrip("."))
                    assert _weights_in(base, range(n_layers - fix, n_layers), bn) > 0, msg
                    assert _weights_in(base, range(n_layers - fix + 1, n_layers), bn) == 0, msg
                    if "or freeze.bn=trainable" in msg:
                        assert _weights_in(base, range(n_layers - n, n_layers), "trainable"), msg
                elif strategy == "from_layer":
                    assert f"freeze.layer={base.layers[last].name}" in msg or bn == "trainable", msg
                continue
            assert expect == applied.params_trainable == sum(
                int(w.numpy().size) for w in base.trainable_weights), (name, cfg)
            assert f"{expect:,} of {applied.params_total:,} base parameters trainable" in applied.description
            assert expect > 0 or strategy == "all" or n == 0, (name, cfg)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_last_blocks_takes_whole_blocks(family):
    """Also every strategy judged by the parameters it trains (``_check_params_judged``), on
    the same built base of each family."""
    name = FAMILIES[family][0]
    for n in (1, 2):
        _check_last_blocks(name, n)
    _check_params_judged(name)


def test_inception_v3_judged_by_parameters():
    """InceptionV3: the one family without block names (last_n and from_layer only)."""
    _check_params_judged("inceptionv3")


def test_mobilenetv2_last2_refused_with_the_fix(compose, tmp_path):
    """Issue 19, defect 6: MobileNetV2 last_n n=2 under freeze.bn=frozen trains nothing."""
    from transferlab.models.build import build_model
    from transferlab.runner import job

    from conftest import TINY

    over = [*TINY, "backbone=mobilenetv2", "freeze=last_n", "freeze.n=2"]
    with pytest.raises(FreezeError) as e:
        build_model(compose([*over, "freeze.bn=frozen"]), num_classes=2)
    assert str(e.value) == ("MobileNetV2 last 2 layers are Conv_1_bn and out_relu: no weights to "
                            "train with freeze.bn=frozen; use freeze.n=3 or freeze.bn=trainable.")
    with pytest.raises(FreezeError, match="use freeze.n=3 or freeze.bn=trainable"):
        job.run(compose([*over, "freeze.bn=frozen"]))  # refused before a run exists
    assert not (tmp_path / "mlruns" / "mlflow.db").exists() or not _job_runs(tmp_path)
    # A random base trains its BatchNorm by default (freeze.bn=auto): Conv_1_bn's scale/offset.
    _, _, p = build_model(compose(over), num_classes=2)
    assert p.bn == "trainable" and p.params_trainable == 2 * 1280
    assert p.description.startswith("2 of 154 base layers trainable, from 'Conv_1_bn'; 2,560 of ")


def _job_runs(root):
    import mlflow

    c = mlflow.MlflowClient(f"sqlite:///{root}/mlruns/mlflow.db")
    return [r for e in c.search_experiments() for r in c.search_runs([e.experiment_id])
            if r.data.tags.get("transferlab.role") == "job"]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(b for _, more in FAMILIES.values() for b in more))
def test_last_blocks_takes_whole_blocks_large(name):
    for n in (1, 2):
        _check_last_blocks(name, n)


def test_family_table_covers_every_backbone_with_blocks():
    from transferlab.models.registry import BACKBONES

    covered = {b for first, more in FAMILIES.values() for b in [first, *more]}
    assert covered == {b for b, s in BACKBONES.items() if s.block_regex}


def test_inception_resnet_v2_last_block_includes_its_unnamed_branches():
    """block8_10's branch convolutions are auto-named (conv2d_199 ...); names alone froze them."""
    import keras

    base, p = _check_last_blocks("inceptionresnetv2", 1, bn="trainable")
    names = [l.name for l in base.layers]
    between = base.layers[names.index("block8_9_ac") + 1:names.index("block8_10_mixed")]
    branch_convs = [l for l in between if isinstance(l, keras.layers.Conv2D)]
    assert len(branch_convs) == 4 and all(l.trainable for l in branch_convs)
    assert all(not l.name.startswith("block8_10") for l in branch_convs)
    assert not base.get_layer("block8_9_conv").trainable
    assert "12 layers without a block name joined from the graph" in p.description
    assert p.description.startswith("18 of 780 base layers trainable")


def test_nasnet_last_cells_include_their_adjust_projection():
    """adjust_conv_projection_12 carries cell 11's output into cell 12; names alone froze it."""
    base, p = _check_last_blocks("nasnetmobile", 1, bn="trainable")
    assert base.get_layer("adjust_conv_projection_12").trainable
    assert not base.get_layer("adjust_conv_projection_11").trainable
    assert not base.get_layer("normal_concat_11").trainable
    assert "adjust_conv_projection_12" in p.description
    base, p = _check_last_blocks("nasnetmobile", 2)
    assert base.get_layer("adjust_conv_projection_11").trainable


def test_nasnet_cell_after_a_reduction_keeps_the_reduction_frozen():
    """Cell 9 reads cell 8's output past reduction cell reduce_8; Keras lists its adjust layers
    before some of reduce_8's, so the trainable part is not a plain suffix of base.layers."""
    base, p = _check_last_blocks("nasnetmobile", 4, bn="trainable")
    assert base.get_layer("adjust_conv_1_9").trainable and base.get_layer("adjust_conv_2_9").trainable
    names = [l.name for l in base.layers]
    assert names.index("reduction_concat_reduce_8") in p.frozen_after
    assert p.first_trainable < min(p.frozen_after)
    assert not any(l.trainable for l in base.layers if l.name.endswith("reduce_8"))


def test_every_block_of_a_base_is_counted():
    """MobileNetV2's first block is named expanded_conv_*, not block_0_: with the names alone it
    was no block, so freeze=last_blocks freeze.n=16 left it frozen under a 'whole base' reading."""
    from transferlab.models import freeze as fz
    from transferlab.models import registry, weights

    expected = {"mobilenetv2": 17, "mobilenet": 13, "vgg16": 5, "resnet50": 16}
    for name, n in expected.items():
        base = weights.build(name, 32, None)
        ids = fz.block_ids([l.name for l in base.layers], registry.spec(name).block_regex)
        assert len({i for i in ids if i}) == n, name
