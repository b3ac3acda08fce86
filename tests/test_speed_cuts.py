"""Per-job cost cuts of the sweep benchmark (benchmarks/sweep_vs_keras.py) keep every number.

The test split scored by the trained head from cached features gives the
full model's predictions; a job's latency measured once per architecture and
process; both recorded as such in the run.
"""

import csv

import keras
import mlflow
import numpy as np
import pytest

from conftest import TINY
from transferlab import data
from transferlab.engine import evaluate, latency
from transferlab.engine.train import fit
from transferlab.models import registry
from transferlab.models.build import build_model
from transferlab.runner import job


@pytest.mark.parametrize("freeze,cut", [("all", "cut at the base's output"),
                                        ("last_blocks", "cut before 'expanded_conv_10")])
def test_test_split_from_cached_features_equals_the_full_model(compose, tmp_path, freeze, cut):
    extra = ["freeze.n=1"] if freeze == "last_blocks" else []
    cfg = compose([*TINY, f"freeze={freeze}", *extra, "trainer.epochs=2"])
    keras.utils.set_random_seed(42)
    splits = data.load(data.scan(data.dataset_path(cfg)), 32, 8, cfg.seed)
    model, base, _ = build_model(cfg, 2)
    res = fit(model, base, cfg, splits, block_regex=registry.spec("mobilenetv3small").block_regex, feature_dir=tmp_path / "f")
    assert res.feature_cache.startswith(f"on: {cut}"), res.feature_cache
    assert res.head is not None and res.test_features is not None
    full = evaluate.test_scores(model, splits)
    feats = evaluate.test_scores(model, splits, res.head, res.test_features)
    np.testing.assert_array_equal(feats.true, full.true)
    np.testing.assert_array_equal(feats.pred, full.pred)
    np.testing.assert_allclose(feats.probs, full.probs, rtol=1e-5, atol=1e-6)
    assert feats.acc == full.acc
    assert feats.loss == pytest.approx(full.loss, rel=1e-5, abs=1e-6)
    assert len(feats.true) == len(splits.test_paths)


@pytest.mark.parametrize("freeze", ["all", "last_blocks"])
def test_several_steps_per_call_on_cached_features_change_no_weight(compose, tmp_path, monkeypatch, freeze):
    """FEATURE_STEPS_PER_EXECUTION only saves Python round trips: the trained weights and
    the per-epoch logs are those of one step per call, bit for bit (12 train images at batch
    4: 3 steps per epoch, so 2 steps per call also leaves a remainder call)."""
    from transferlab.engine import train

    extra = ["freeze.n=1"] if freeze == "last_blocks" else []
    cfg = compose([*TINY, f"freeze={freeze}", *extra, "trainer.epochs=2", "trainer.batch_size=4"])
    out = {}
    for spe in (1, 2, train.FEATURE_STEPS_PER_EXECUTION):
        monkeypatch.setattr(train, "FEATURE_STEPS_PER_EXECUTION", spe)
        keras.utils.set_random_seed(42)
        splits = data.load(data.scan(data.dataset_path(cfg)), 32, 4, cfg.seed)
        assert splits.counts["train"] == 12
        model, base, _ = build_model(cfg, 2)
        logs = []
        res = fit(model, base, cfg, splits, block_regex=registry.spec("mobilenetv3small").block_regex,
                  feature_dir=tmp_path / "f", callbacks=lambda phase: [
                      keras.callbacks.LambdaCallback(on_epoch_end=lambda e, lg: logs.append(dict(lg)))])
        assert res.feature_cache.startswith("on:"), res.feature_cache
        assert res.head.steps_per_execution == min(spe, 3)  # at most an epoch's steps
        out[spe] = (model.get_weights(), logs)
    for spe in out:
        assert all(np.array_equal(a, b) for a, b in zip(out[1][0], out[spe][0])), spe
        assert out[spe][1] == out[1][1], spe


def _job(compose, tmp_path, *overrides):
    keras.utils.set_random_seed(42)
    out = job.run(compose([*TINY, "trainer.epochs=2", "tracking.skip_finished=false", *overrides]))
    c = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    r = c.get_run(out["run_id"])
    with open(c.download_artifacts(r.info.run_id, "test_predictions.csv", str(tmp_path / r.info.run_id))) as f:
        rows = list(csv.reader(f))
    return r, rows


@pytest.mark.slow  # two whole jobs (~30 s on 2 cores); the engine-level test above is the fast check
def test_a_job_scored_from_features_logs_the_same_test_numbers_and_predictions(compose, tmp_path):
    off, rows_off = _job(compose, tmp_path, "runtime.feature_cache=off")
    on, rows_on = _job(compose, tmp_path, "runtime.feature_cache=auto")
    assert off.data.tags["test_scored_on"] == "images (the full model)"
    assert on.data.tags["test_scored_on"].startswith("cached features")
    assert on.data.metrics["test_acc"] == off.data.metrics["test_acc"]
    assert on.data.metrics["test_loss"] == pytest.approx(off.data.metrics["test_loss"], rel=1e-5, abs=1e-6)
    assert [r[:4] for r in rows_on] == [r[:4] for r in rows_off]  # path, true, pred, correct
    np.testing.assert_allclose(np.array([r[4:] for r in rows_on[1:]], float),
                               np.array([r[4:] for r in rows_off[1:]], float), atol=2e-6)
    for k in ("test_seconds", "latency_seconds", "artifacts_seconds"):  # the benchmark's phases
        assert on.data.metrics[k] > 0, k


def _tiny(units, trainable=True):
    inp = keras.Input((8, 8, 3), name="img")
    x = keras.layers.Conv2D(units, 3, name="conv")(inp)
    layer = keras.layers.Dense(1, name="out")
    layer.trainable = trainable
    return keras.Model(inp, layer(keras.layers.Flatten(name="flat")(x)), name="tiny")


def test_latency_is_measured_once_per_architecture(monkeypatch):
    calls = []
    real = latency.inference_metrics
    monkeypatch.setattr(latency, "inference_metrics", lambda m, r, s: calls.append(m) or real(m, r, s))
    monkeypatch.setattr(latency, "_MEASURED", {})
    keras.backend.clear_session()
    a = _tiny(4)
    m1, how1 = latency.inference_metrics_once(a, 1, 1)
    b = _tiny(4, trainable=False)  # another job: other weights and trainable flags, same graph
    b.set_weights([w + 1 for w in a.get_weights()])
    m2, how2 = latency.inference_metrics_once(b, 1, 1)
    assert how1 == "measured" and how2.startswith("reused: same architecture measured at")
    assert m2 == m1 and len(calls) == 1
    _, how3 = latency.inference_metrics_once(_tiny(8), 1, 1)  # another graph: measured
    _, how4 = latency.inference_metrics_once(a, 2, 1)  # other repetitions: measured
    assert how3 == how4 == "measured" and len(calls) == 3


def test_batchnorm_calibration_is_reused_bit_for_bit(monkeypatch):
    from transferlab.engine import warmstart
    from transferlab.models import build, weights

    monkeypatch.setattr(warmstart, "_DONE", type(warmstart._DONE)())
    calls = []
    real = build.calibrate_batchnorm
    monkeypatch.setattr(build, "calibrate_batchnorm", lambda *a: calls.append(1) or real(*a))
    x = np.random.default_rng(0).uniform(0, 255, (8, 32, 32, 3)).astype("float32")

    def base():
        keras.backend.clear_session()
        keras.utils.set_random_seed(42)
        return weights.build("mobilenetv3small", 32, weights=None)

    computed = base()
    n, reused = warmstart.calibrate_once(computed, "mobilenetv3small", x)
    again = base()  # the next job: same seed, same images
    assert warmstart.calibrate_once(again, "mobilenetv3small", x) == (n, True)
    assert len(calls) == 1 and n > 10 and not reused
    fresh = base()
    real(fresh, "mobilenetv3small", x)  # what computing it again gives
    for a, b in zip(again.weights, fresh.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # Other images (or other initial weights): computed, not reused.
    assert warmstart.calibrate_once(base(), "mobilenetv3small", x[::-1].copy())[1] is False
    assert len(calls) == 2


def _prepared(compose, tmp_path, freeze, folder):
    from transferlab.engine import featcache
    from transferlab.models.build import calibrate_batchnorm

    cfg = compose([*TINY, f"freeze={freeze}"])
    keras.backend.clear_session()
    keras.utils.set_random_seed(42)
    splits = data.load(data.scan(data.dataset_path(cfg)), 32, 8, cfg.seed)
    model, base, _ = build_model(cfg, 2)
    calibrate_batchnorm(base, "mobilenetv3small", next(iter(splits.train))[0])  # real features, as a job
    d = featcache.decide(model, base, cfg, splits)
    prep = featcache.prepare(d, model, cfg, splits, folder)
    feats = np.concatenate([np.asarray(x) for x, _ in prep.test])  # the cached features, test split
    return d, prep, feats


@pytest.mark.slow  # four feature extractions (~20 s); test_featcache's reuse test counts the entries fast
def test_freeze_all_saves_the_fine_tuning_cut_that_last4_then_reuses(compose, tmp_path, monkeypatch):
    from transferlab.engine import featcache

    calls = []
    real = featcache._extract
    monkeypatch.setattr(featcache, "_extract", lambda *a, **k: calls.append(1) or real(*a, **k))
    shared = tmp_path / "shared"
    d_all, p_all, f_all = _prepared(compose, tmp_path, "all", shared)
    assert d_all.cut_name == "base output" and "through the cut before conv_1" in p_all.note, p_all.note
    assert len([p for p in shared.iterdir() if p.is_dir()]) == 2  # the output's entry and the cut's
    d_l4, p_l4, f_l4 = _prepared(compose, tmp_path, "last4", shared)
    assert d_l4.cut_name == "before conv_1" and "reused" in p_l4.note, p_l4.note
    assert len(calls) == 1  # the images went through the frozen layers once for both jobs
    # What each job would have computed alone, from images: the same features.
    _, _, alone_l4 = _prepared(compose, tmp_path, "last4", tmp_path / "alone_l4")
    np.testing.assert_array_equal(f_l4, alone_l4)  # the same function on the same images
    monkeypatch.setattr(featcache.featcut, "fine_tuning_cut", lambda base: None)  # the direct route
    _, _, alone_all = _prepared(compose, tmp_path, "all", tmp_path / "alone_all")
    np.testing.assert_allclose(f_all, alone_all, rtol=1e-5, atol=1e-6)
    assert np.std(alone_all) > 1e-3  # calibrated: features that say something
