"""The classifier: preprocessing inside, base in inference mode, heads, augmentation."""

import keras
import numpy as np

from transferlab.models.build import batchnorm_mode, build_model, calibrate_batchnorm


def _bn_stats(base):
    return [(l.name, l.moving_mean.numpy().copy(), l.moving_variance.numpy().copy())
            for l in base.layers if isinstance(l, keras.layers.BatchNormalization)]


def test_pretrained_base_keeps_batchnorm_statistics(compose, tmp_path):
    """A pretrained base (a weights file) under freeze=none with trainable BN: weights change,
    moving statistics do not (inference mode, the Keras fine-tuning guide's rule)."""
    from transferlab.models import weights

    x = np.random.default_rng(0).uniform(0, 255, (16, 32, 32, 3)).astype("float32")
    source = weights.build("mobilenetv2", 32, None)
    calibrate_batchnorm(source, "mobilenetv2", x)  # statistics under which features vary
    path = str(tmp_path / "mobilenetv2.weights.h5")
    source.save_weights(path)
    cfg = compose(["backbone=mobilenetv2", f"backbone.weights={path}", "image_size=32",
                   "freeze=none", "freeze.bn=trainable", "lr=1e-2"])
    model, base, plan = build_model(cfg, num_classes=2)
    assert batchnorm_mode(model).startswith("inference mode always")
    y = np.arange(16, dtype="float32").reshape(-1, 1) % 2
    before = _bn_stats(base)
    kernel = base.get_layer("Conv1").kernel.numpy().copy()
    gamma = base.get_layer("bn_Conv1").gamma.numpy().copy()
    model.fit(x, y, epochs=2, batch_size=8, verbose=0)
    assert not np.allclose(kernel, base.get_layer("Conv1").kernel.numpy())
    assert not np.allclose(gamma, base.get_layer("bn_Conv1").gamma.numpy())
    for (name, m0, v0), (_, m1, v1) in zip(before, _bn_stats(base)):
        np.testing.assert_array_equal(m0, m1, err_msg=name)
        np.testing.assert_array_equal(v0, v1, err_msg=name)


def test_random_base_trains_batchnorm_as_plain_keras(compose):
    """A random base that trains (freeze=none, freeze.bn=auto) trains exactly as the same
    network called the plain Keras way (``base(x)`` in a functional model): BatchNorm on
    batch statistics, moving statistics following; the same weights after fit."""
    from transferlab.models import weights
    from transferlab.models.layers import FollowsTraining, Preprocess

    cfg = compose(["backbone=mobilenetv3small", "backbone.weights=null", "image_size=32",
                   "freeze=none", "head=gap", "head.dropout=0", "lr=1e-2", "optimizer=sgd"])
    model, base, plan = build_model(cfg, num_classes=2)
    assert isinstance(model.get_layer("base"), FollowsTraining) and plan.bn == "trainable"
    assert batchnorm_mode(model).startswith("training mode in fit")
    plain_base = weights.build("mobilenetv3small", 32, None)
    plain_base.set_weights(base.get_weights())
    inp = keras.Input((32, 32, 3))
    h = keras.layers.GlobalAveragePooling2D()(plain_base(Preprocess("mobilenetv3small")(inp)))
    plain = keras.Model(inp, keras.layers.Dense(1, activation="sigmoid")(h))
    plain.layers[-1].set_weights(model.get_layer("predictions").get_weights())
    plain.compile(optimizer=keras.optimizers.SGD(1e-2, momentum=model.optimizer.momentum),
                  loss="binary_crossentropy")
    x = np.random.default_rng(0).uniform(0, 255, (16, 32, 32, 3)).astype("float32")
    y = np.arange(16, dtype="float32").reshape(-1, 1) % 2
    before = _bn_stats(base)
    for m in (model, plain):
        m.fit(x, y, epochs=2, batch_size=8, verbose=0, shuffle=False)
    moved = [name for (name, _, v0), (_, _, v1) in zip(before, _bn_stats(base))
             if not np.array_equal(v0, v1)]
    assert len(moved) == len(before) > 10  # every BatchNorm's moving variance followed
    for a, b in zip(base.get_weights() + model.get_layer("predictions").get_weights(),
                    plain_base.get_weights() + plain.layers[-1].get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_calibration_gives_a_random_base_usable_features(compose):
    cfg = compose(["backbone=mobilenetv3small", "backbone.weights=null", "image_size=32"])
    _, base, _ = build_model(cfg, num_classes=2)
    from transferlab.models.registry import preprocess_fn

    x = np.random.default_rng(1).uniform(0, 255, (32, 32, 32, 3)).astype("float32")
    feats = lambda: np.asarray(base(preprocess_fn("mobilenetv3small")(x), training=False))  # noqa: E731
    assert feats().std(axis=0).mean() < 1e-6  # untouched random BN: constant features
    assert calibrate_batchnorm(base, "mobilenetv3small", x) > 10
    assert feats().std(axis=0).mean() > 1e-2
    assert not any(l.trainable for l in base.layers)  # calibration restored the freeze


def test_model_takes_raw_pixels_and_heads_match_classes(compose):
    cfg = compose(["backbone=vgg16", "backbone.weights=null", "image_size=32", "head=gap"])
    model, _, _ = build_model(cfg, num_classes=3)
    names = [l.name for l in model.layers]
    assert names[:3] == ["image", "preprocess", "base"]
    assert model.get_layer("base").base.name == "vgg16"
    assert "head_gap" in names and "head_dropout" in names
    out = model.layers[-1]
    assert out.units == 3 and out.activation.__name__ == "softmax"
    assert model.loss == "categorical_crossentropy"
    model2, _, _ = build_model(compose(["backbone=vgg16", "backbone.weights=null",
                                        "image_size=32"]), num_classes=2)
    assert model2.layers[-1].units == 1 and model2.layers[-1].activation.__name__ == "sigmoid"
    assert model2.loss == "binary_crossentropy" and "head_flatten" in [l.name for l in model2.layers]


def test_saved_model_round_trip(compose, tmp_path):
    """The wrapper, preprocessing and augmentation layers serialise: a .keras file predicts the same."""
    model, _, _ = build_model(compose(["backbone=mobilenetv3small", "backbone.weights=null",
                                       "image_size=32", "augment=lecture"]), num_classes=3)
    x = np.random.default_rng(2).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    model.save(tmp_path / "m.keras")
    again = keras.models.load_model(tmp_path / "m.keras")
    assert again.get_layer("augment").get_config() == model.get_layer("augment").get_config()
    np.testing.assert_allclose(np.asarray(again.predict(x, verbose=0)),
                               np.asarray(model.predict(x, verbose=0)), rtol=1e-5, atol=1e-6)


def test_adamw_weight_decay_follows_the_backbone_lr_mult(compose):
    """Zero gradients leave AdamW only its decay: lr*mult*wd on a base weight, lr*wd on the head."""
    import tensorflow as tf

    lr, wd, mult = 0.1, 0.5, 0.2
    cfg = compose(["backbone=vgg16", "backbone.weights=null", "image_size=32", "freeze=none",
                   "optimizer=adamw", f"optimizer.weight_decay={wd}", f"lr={lr}",
                   f"optimizer.backbone_lr_mult={mult}"])
    model, base, _ = build_model(cfg, 2)
    opt = model.optimizer
    variables = model.trainable_variables
    opt.build(variables)
    k_base, k_head = base.get_layer("block5_conv3").kernel, model.get_layer("predictions").kernel
    before = (k_base.numpy().copy(), k_head.numpy().copy())
    # traced, as in fit's train step (the decay is read when the step is traced)
    tf.function(lambda: opt.apply_gradients([(tf.zeros_like(v), v) for v in variables]))()
    for k, old, step in ((k_base, before[0], lr * mult * wd), (k_head, before[1], lr * wd)):
        nonzero = np.abs(old) > 1e-6
        np.testing.assert_allclose(1 - k.numpy()[nonzero] / old[nonzero], step, rtol=1e-3)
