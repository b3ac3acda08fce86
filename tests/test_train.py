"""Fit loop: backups, schedules, two phases, discriminative rates, early stopping."""

import math

import keras

import mlflow
import numpy as np
import pytest
from omegaconf import OmegaConf

from conftest import TINY
from transferlab import data
from transferlab.engine import evaluate
from transferlab.runner import job
from transferlab.models.build import build_model
from transferlab.engine.backup import EpochBackup
from transferlab.engine.train import fit, lr_at


def _xy(n=16, size=32, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.uniform(0, 255, (n, size, size, 3)).astype("float32"),
            (np.arange(n) % 2).astype("float32").reshape(-1, 1))


def test_epoch_backup_restores_weights_and_optimizer_state(compose, tmp_path):
    cfg = compose(["backbone=mobilenetv3small", "backbone.weights=null", "image_size=32",
                   "freeze=last4", "optimizer=adam"])
    x, y = _xy()
    model, _, _ = build_model(cfg, 2)
    model.fit(x, y, epochs=2, batch_size=8, verbose=0, callbacks=[EpochBackup(tmp_path / "b")])
    again, _, _ = build_model(cfg, 2)
    assert EpochBackup(tmp_path / "b").restore(again) == 2
    assert int(again.optimizer.iterations.numpy()) == int(model.optimizer.iterations.numpy()) == 4
    for a, b in zip(model.weights, again.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["constant.h5", "epoch2.weights.h5", "state.json"]
    # The frozen base's weights are written once (constant.h5), each epoch's file holds the rest.
    import h5py

    with h5py.File(tmp_path / "b" / "constant.h5") as c, h5py.File(tmp_path / "b" / "epoch2.weights.h5") as e:
        constant, per_epoch = {int(k) for k in c.keys()}, {int(k) for k in e.keys()}
    base = model.get_layer("base").base
    # A random base trains as plain Keras: its trainable BatchNorm (conv_1_bn, one of the last
    # 4 layers) moves its moving statistics, so they are written every epoch.
    moving = [v for l in base.layers if isinstance(l, keras.layers.BatchNormalization) and l.trainable
              for v in l.non_trainable_weights]
    assert [l.name for l in base.layers[-4:] if l.trainable and l.weights] == ["conv_1", "conv_1_bn"]
    assert len(moving) == 2 and len(constant) == len(base.non_trainable_weights) - 2 > 0
    index = {id(v): i for i, v in enumerate(model.weights)}
    assert {index[id(v)] for v in moving} <= per_epoch
    assert constant.isdisjoint(per_epoch)
    assert constant | per_epoch == set(range(len(model.weights) + len(model.optimizer.variables)))


@pytest.mark.parametrize("sched,epoch,expected", [
    ({"name": "constant"}, 7, 1.0),
    ({"name": "step", "step_size": 2, "gamma": 0.5}, 5, 0.25),           # 5 // 2 = 2 halvings
    ({"name": "cosine", "min_lr_ratio": 0.0}, 0, 1.0),
    # the last of 10 epochs still learns (was 0: a wasted epoch), as CosineAnnealingLR(T_max=10)
    ({"name": "cosine", "min_lr_ratio": 0.0}, 9, 0.5 * (1 + math.cos(math.pi * 9 / 10))),
    ({"name": "cosine", "min_lr_ratio": 0.0}, 10, 0.0),                 # the floor, one past the end
    ({"name": "cosine", "min_lr_ratio": 0.1}, 10, 0.1),
    ({"name": "cosine", "min_lr_ratio": 0.0, "linear_warmup_epochs": 1}, 0, 0.5),
    ({"name": "cosine", "min_lr_ratio": 0.0, "linear_warmup_epochs": 1}, 5,
     0.5 * (1 + math.cos(math.pi * 4 / 9))),
])
def test_learning_rate_schedules(sched, epoch, expected):
    s = OmegaConf.create({"linear_warmup_epochs": 0, "step_size": 10, "gamma": 0.1,
                          "min_lr_ratio": 0.0, **sched})
    assert lr_at(epoch, 1.0, s, epochs=10) == pytest.approx(expected)


def test_discriminative_learning_rate_scales_base_updates(compose):
    """SGD without momentum: a base weight moves by lr*mult*grad, a head weight by lr*grad."""
    x, y = _xy(8)
    deltas = {}
    for mult in (1.0, 0.1):
        cfg = compose(["backbone=vgg16", "backbone.weights=null", "image_size=32", "freeze=none",
                       "optimizer=sgd", "optimizer.momentum=0.0", "lr=1e-3",
                       f"optimizer.backbone_lr_mult={mult}", "seed=3"])
        model, base, _ = build_model(cfg, 2)
        k_base, k_head = base.get_layer("block5_conv3").kernel, model.get_layer("predictions").kernel
        before = (k_base.numpy().copy(), k_head.numpy().copy())
        model.train_on_batch(x, y)
        deltas[mult] = (k_base.numpy() - before[0], k_head.numpy() - before[1])
    base_ratio = np.abs(deltas[0.1][0]).sum() / np.abs(deltas[1.0][0]).sum()
    head_ratio = np.abs(deltas[0.1][1]).sum() / np.abs(deltas[1.0][1]).sum()
    assert base_ratio == pytest.approx(0.1, rel=1e-3)
    assert head_ratio == pytest.approx(1.0, rel=1e-3)


def _store(tmp_path):
    return mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")


def test_two_phase_training_one_curve_no_param_rewritten(compose, tmp_path):
    cfg = compose([*TINY, "freeze=last4", "trainer.warmup_epochs=2", "trainer.epochs=2",
                   "trainer.warmup_lr=1e-3", "lr=1e-5"])
    out = job.run(cfg)  # an MLflow param rewritten would raise here
    c = _store(tmp_path)
    r = c.get_run(out["run_id"])
    for m in ("acc", "val_acc", "loss", "val_loss", "lr", "phase"):
        assert sorted(h.step for h in c.get_metric_history(r.info.run_id, m)) == [0, 1, 2, 3], m
    phase = {h.step: h.value for h in c.get_metric_history(r.info.run_id, "phase")}
    lr = {h.step: h.value for h in c.get_metric_history(r.info.run_id, "lr")}
    assert phase == {0: 1, 1: 1, 2: 2, 3: 2}
    assert lr[0] == pytest.approx(1e-3) and lr[3] == pytest.approx(1e-5)
    assert r.data.params["phase1.lr"] == "0.001" and r.data.params["phase2.freeze"] == "last4"
    head_only = 576 * 1 + 1  # MobileNetV3Small @32: 1x1x576 features -> Dense(1)
    assert r.data.metrics["phase1_params_trainable"] == head_only
    assert r.data.metrics["params_trainable"] > head_only


def test_early_stopping_restores_the_best_epoch(compose, tmp_path):
    """Validation = test images here, so the restored model's test loss must be the best val_loss."""
    cfg = compose([*TINY, "trainer.epochs=8", "freeze=none", "lr=0.05", "optimizer=sgd",
                   "trainer.early_stopping.patience=1"])
    info = data.scan(data.dataset_path(cfg))
    splits = data.load(info, 32, 8, cfg.seed)
    splits.validation = splits.test
    model, base, _ = build_model(cfg, 2)
    val = {}  # the engine is plain Keras: any callback sees each epoch's logs
    record = keras.callbacks.LambdaCallback(on_epoch_end=lambda e, logs: val.update({e: logs["val_loss"]}))
    res = fit(model, base, cfg, splits, block_regex=None, backup_dir=tmp_path / "backup",
              feature_dir=tmp_path / "features", callbacks=lambda phase: [record])
    best = min(val, key=val.get)
    assert res.best_epoch == best
    last = max(val)
    assert last > best  # it trained past the best epoch, so restoring mattered
    test_loss = model.evaluate(splits.test, verbose=0)[0]
    assert test_loss == pytest.approx(val[best], rel=1e-4)
    assert not np.isclose(test_loss, val[last])


@pytest.mark.parametrize("classes", [2, 3])
def test_test_scores_from_one_predict_match_keras_evaluate(compose, classes):
    """job.py scores the test split from its predictions: the same loss and accuracy as evaluate."""
    cfg = compose([*TINY, f"dataset.num_classes={classes}", "dataset.images_per_class=12"])
    splits = data.load(data.scan(data.dataset_path(cfg)), 32, 8, cfg.seed)
    model, _, _ = build_model(cfg, classes)
    model.fit(splits.train, epochs=1, verbose=0, shuffle=False)  # away from the initial, near-uniform outputs
    scores_ = model.evaluate(splits.test, verbose=0, return_dict=True)  # + balanced_acc since it is compiled in
    loss, acc = scores_["loss"], scores_["accuracy"]
    scores = evaluate.test_scores(model, splits)
    assert scores.loss == pytest.approx(loss, rel=1e-5)
    assert scores.acc == pytest.approx(acc, abs=1e-6)
    assert scores.probs.shape == (len(splits.test_paths), classes)
    np.testing.assert_array_equal(scores.pred, scores.probs.argmax(axis=1))


def test_mirrored_strategy_runs_on_the_cpu(compose, tmp_path):
    out = job.run(compose([*TINY, "runtime.strategy=mirrored", "freeze=last4"]))
    r = _store(tmp_path).get_run(out["run_id"])
    assert r.info.status == "FINISHED"
    assert r.data.tags["strategy"].startswith("MirroredStrategy (1 replicas)")
    assert 0 <= r.data.metrics["test_acc"] <= 1
