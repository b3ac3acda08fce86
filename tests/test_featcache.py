"""Frozen-feature caching: same result, reuse across jobs, corruption, where the cut goes."""

import json

import keras
import mlflow
import numpy as np
import pytest

from conftest import TINY
from transferlab import data
from transferlab.engine import featcache
from transferlab.runner import job
from transferlab.config import ConfigError
from transferlab.runner.validate import validate
from transferlab.models.build import build_model

EPOCHS = ["trainer.epochs=3", "tracking.skip_finished=false"]


def _run(compose, tmp_path, *overrides):
    """One in-process job; returns (metrics, tags, per-epoch history)."""
    # data.load's shuffle seeds depend on TF's global seed at the time it is
    # called (left by the previous job in this process); pin it so that two
    # jobs here see the same batch order, as two fresh processes would.
    keras.utils.set_random_seed(42)
    out = job.run(compose([*TINY, *EPOCHS, *overrides]))
    c = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    r = c.get_run(out["run_id"])
    assert r.info.status == "FINISHED"
    hist = {m: [h.value for h in sorted(c.get_metric_history(r.info.run_id, m), key=lambda h: h.step)]
            for m in ("loss", "val_loss", "acc", "val_acc")}
    return {**r.data.metrics, **out}, r.data.tags, hist


def _same(a, b):
    (ma, _, ha), (mb, _, hb) = a, b
    for k in ("test_acc", "test_loss"):
        assert ma[k] == pytest.approx(mb[k], rel=1e-5, abs=1e-6), k
    for k in ha:
        np.testing.assert_allclose(ha[k], hb[k], rtol=1e-5, atol=1e-6, err_msg=k)


def FEATURES(tmp_path):
    """The runner's default cache folder for a root of tmp_path."""
    return tmp_path / "mlruns" / "feature_cache"


def _entries(tmp_path):
    return sorted(p for p in FEATURES(tmp_path).iterdir() if p.is_dir())


def test_cached_features_give_the_same_result(compose, tmp_path):
    off = _run(compose, tmp_path, "runtime.feature_cache=off")
    on = _run(compose, tmp_path, "runtime.feature_cache=on")
    assert off[1]["feature_cache"] == "off: runtime.feature_cache=off"
    assert on[1]["feature_cache"].startswith("on: cut at the base's output")
    assert "built in" in on[1]["feature_cache"]
    _same(off, on)
    assert on[0]["feature_cache_seconds"] > 0 and "feature_cache_seconds" not in off[0]


def test_auto_refuses_with_augmentation_and_says_why(compose, tmp_path):
    _, tags, _ = _run(compose, tmp_path, "augment=flip", "trainer.epochs=1")
    assert tags["feature_cache"].startswith("off: augmentation (augment=flip) runs before the frozen")
    assert not (tmp_path / "mlruns" / "feature_cache").exists()
    with pytest.raises(ConfigError, match="feature_cache=on cannot be used with augment=flip"):
        validate(compose([*TINY, "augment=flip", "runtime.feature_cache=on"]))


def test_second_job_reuses_the_cache(compose, tmp_path, monkeypatch, capsys):
    calls = []
    real = featcache._extract
    monkeypatch.setattr(featcache, "_extract", lambda *a, **k: calls.append(1) or real(*a, **k))
    _run(compose, tmp_path, "lr=1e-4")
    _, tags, _ = _run(compose, tmp_path, "lr=1e-3")  # another job of the sweep, same base
    assert len(calls) == 1  # features computed once
    assert "reused" in tags["feature_cache"]
    assert "feature cache: on: cut at the base's output" in capsys.readouterr().out
    assert len(_entries(tmp_path)) == 2  # the base's output and its fine-tuning cut (featcut.py)


@pytest.mark.parametrize("damage", ["flip_bytes", "truncate", "stale_meta"])
def test_a_corrupt_or_stale_cache_is_detected_and_rebuilt(compose, tmp_path, damage):
    cfg = compose([*TINY])
    splits = data.load(data.scan(data.dataset_path(cfg)), 32, 8, cfg.seed)
    model, base, _ = build_model(cfg, 2)
    decision = featcache.decide(model, base, cfg, splits)
    assert "built in" in featcache.prepare(decision, model, cfg, splits, FEATURES(tmp_path)).note
    # The base's output's entry (beside it: its fine-tuning cut's, featcut.py).
    (entry,) = [e for e in _entries(tmp_path)
                if json.loads((e / "meta.json").read_text())["material"]["cut"] == "base output"]
    f = entry / "features.npy"
    good = np.load(f)
    raw = bytearray(f.read_bytes())
    if damage == "flip_bytes":  # data, not header: np.load still reads it
        raw[-16:] = bytes(255 - b for b in raw[-16:])
        f.write_bytes(bytes(raw))
    elif damage == "truncate":
        f.write_bytes(bytes(raw[: len(raw) // 2]))
    else:  # an entry whose recorded key material differs (e.g. written by another version)
        meta = json.loads((entry / "meta.json").read_text())
        meta["material"]["weights_sha256"] = "0" * 64
        (entry / "meta.json").write_text(json.dumps(meta))
    note = featcache.prepare(decision, model, cfg, splits, FEATURES(tmp_path)).note
    why = "stale" if damage == "stale_meta" else "corrupt"
    assert f"was {why}" in note and "rebuilt" in note, note
    np.testing.assert_array_equal(np.load(f), good)  # rebuilt, not the damaged values
    assert "reused" in featcache.prepare(decision, model, cfg, splits, FEATURES(tmp_path)).note


def test_vgg_last4_cuts_before_the_trainable_layers_with_the_same_result(compose, tmp_path):
    args = ("backbone=vgg16", "freeze=last4")
    off = _run(compose, tmp_path, *args, "runtime.feature_cache=off")
    on = _run(compose, tmp_path, *args)
    assert on[1]["feature_cache"].startswith("on: cut before 'block5_conv1', the first trainable layer")
    _same(off, on)
    assert on[0]["params_trainable"] == off[0]["params_trainable"]


def test_no_single_cut_inside_a_residual_block_is_refused_and_logged(compose, tmp_path, capsys):
    # MobileNetV3Small's last 6 layers start inside block 10, whose Add also reads block 9's output.
    _, tags, _ = _run(compose, tmp_path, "freeze=last_n", "freeze.n=6", "trainer.epochs=1")
    assert tags["feature_cache"].startswith(
        "off: no single cut before 'expanded_conv_10_project', the first trainable layer")
    assert "residual" in tags["feature_cache"]
    assert "feature cache: off: no single cut before 'expanded_conv_10_project'" in capsys.readouterr().out
    with pytest.raises(featcache.FeatureCacheError, match="no single cut"):
        job.run(compose([*TINY, "freeze=last_n", "freeze.n=6", "runtime.feature_cache=on",
                         "tracking.skip_finished=false"]))


@pytest.mark.parametrize("freeze,use,where", [
    (["freeze=last4"], False, "no single cut before 'conv5_block3_3_conv'"),  # mid residual block
    (["freeze=last_blocks", "freeze.n=1"], True, "cut before 'conv5_block3_1_conv'"),  # block boundary
])
def test_resnet_cuts_only_at_block_boundaries(compose, freeze, use, where):
    cfg = compose(["backbone=resnet50", "backbone.weights=null", "image_size=32", *freeze,
                   "dataset.images_per_class=4", "dataset.source_size=32"])
    splits = data.load(data.scan(data.dataset_path(cfg)), 32, 8, cfg.seed)
    model, base, _ = build_model(cfg, 2)
    d = featcache.decide(model, base, cfg, splits)
    assert d.use is use and d.reason.startswith(where), d.reason


def test_index_batches_and_pixel_lookup_give_the_same_feature_batches(compose):
    """data.load's pipelines are mapped to feature rows through their own shuffled index
    batches; any other pipeline through a fingerprint of each image. Both must give the
    same batches in the same order (two loads with the same seeds: the same shuffles)."""
    from transferlab.engine import featkeys

    cfg = compose([*TINY, "dataset.images_per_class=10"])
    info = data.scan(data.dataset_path(cfg))

    def load():
        keras.utils.set_random_seed(7)
        return data.load(info, 32, 4, seed=7)

    a, b = load(), load()
    fn = featkeys.keys_fn()
    sources = [featkeys.source(a.train), featkeys.source(a.validation), a.test]
    keys = featkeys.image_keys(sources, fn)
    imgs = np.concatenate([x.numpy() for s in sources for x, _ in s])  # all three are batched
    uniq, first = np.unique(keys, return_index=True)
    feats = imgs[first].mean(axis=(1, 2)).astype(np.float32)  # stand-in features: (images, 3)
    for ds in (b.train, b.validation, b.test):  # b: pipelines as another caller would build them
        del ds.index_batches
    fast, slow = featkeys.as_features(a, feats, uniq, keys, fn), featkeys.as_features(b, feats, uniq, keys, fn)
    assert all(getattr(ds, "index_batches", None) is not None for ds in (a.train, a.validation, a.test))
    for f, s in zip(fast, slow):
        fb, sb = list(f.as_numpy_iterator()), list(s.as_numpy_iterator())
        assert len(fb) == len(sb) > 0
        for (fx, fy), (sx, sy) in zip(fb, sb):
            np.testing.assert_array_equal(fx, sx)
            np.testing.assert_array_equal(fy, sy)
    first_epoch = np.concatenate([x for x, _ in fast[0].as_numpy_iterator()])
    second_epoch = np.concatenate([x for x, _ in fast[0].as_numpy_iterator()])
    assert not np.array_equal(first_epoch, second_epoch)  # reshuffled each epoch, as images are
    np.testing.assert_array_equal(np.sort(first_epoch[:, 0]), np.sort(second_epoch[:, 0]))


def test_random_base_fine_tuned_in_training_mode_caches_with_the_same_result(compose, tmp_path):
    """A random base that trains runs as plain Keras (its tail's BatchNorm on batch statistics
    in fit); the frozen prefix is still fixed, so the cache cuts there and the head model runs
    the tail in the same training mode: the same weights, moving statistics included."""
    from transferlab.engine.train import fit
    from transferlab.models import registry
    from transferlab.models.layers import FollowsTraining

    regex = registry.spec("mobilenetv3small").block_regex
    out = {}
    for mode in ("off", "on"):
        cfg = compose([*TINY, "freeze=last_blocks", "freeze.n=1", "trainer.epochs=2",
                       f"runtime.feature_cache={mode}"])
        keras.utils.set_random_seed(42)
        splits = data.load(data.scan(data.dataset_path(cfg)), 32, 8, cfg.seed)
        model, base, _ = build_model(cfg, 2)
        assert isinstance(model.get_layer("base"), FollowsTraining)
        res = fit(model, base, cfg, splits, block_regex=regex, feature_dir=FEATURES(tmp_path))
        out[mode] = (res.feature_cache, model.get_weights())
    assert out["on"][0].startswith("on: cut before 'expanded_conv_10"), out["on"][0]
    for a, b in zip(out["off"][1], out["on"][1]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
