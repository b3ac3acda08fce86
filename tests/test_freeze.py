"""Freezing strategies: exact trainable counts on VGG19 (the lecture's model)."""

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
