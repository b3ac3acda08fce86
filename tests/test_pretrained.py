"""backbone.weights=run:<id> / run:latest:<experiment> / .keras: pretrain, then transfer.

One tiny source job (logged with tracking.log_model=true) is trained once per
session (``source`` below, also used by test_predict.py).
"""

import subprocess
import sys

import keras
import mlflow
import numpy as np
import pytest

from conftest import ROOT, TINY
from transferlab import data
from transferlab.data import synthetic
from transferlab.models import pretrained, registry, weights
from transferlab.runner import job, tracking
from transferlab.config import ConfigError
from transferlab.runner.validate import validate
from transferlab.models.build import build_model

_SOURCE: dict = {}
SOURCE_EXP = "pretrain_src"


def train_source(tmp_path_factory, compose) -> dict:
    """Trains the tiny source job once: mobilenetv3small @32, last 4 layers trained, model logged."""
    if not _SOURCE:
        root = tmp_path_factory.mktemp("source")
        cfg = compose([*TINY, "freeze=last4", "lr=1e-2", "tracking.log_model=true",
                       f"tracking.experiment={SOURCE_EXP}"], root=root)
        out = job.run(cfg)
        uri = f"sqlite:///{root}/mlruns/mlflow.db"
        _SOURCE.update(root=root, uri=uri, run_id=out["run_id"], cfg=cfg,
                       data=data.dataset_path(cfg))
    return _SOURCE


@pytest.fixture
def source(tmp_path_factory, compose):
    return train_source(tmp_path_factory, compose)


def _source_base(src):
    _, loc = pretrained.resolve(f"run:{src['run_id']}", src["uri"])
    return weights.base_of(pretrained.load_logged_model(src["uri"], loc))


def _images(src, n=8):
    from transferlab import data

    splits = data.load(data.scan(src["data"]), 32, n, 0)
    return np.asarray(next(iter(splits.test))[0])


def test_weights_from_a_run_round_trip(source, compose):
    """A job with weights=run:<id>, freeze=all starts from exactly the source run's base."""
    src_base = _source_base(source)
    cfg = compose([*TINY, "freeze=all", f"backbone.weights=run:{source['run_id']}", "seed=7"],
                  root=source["root"])
    validate(cfg)
    _, base, _ = build_model(cfg, 2, tracking.tracking_uri(cfg))
    assert base.name == src_base.name == "MobileNetV3Small"
    fresh = weights.build("mobilenetv3small", 32, None)
    differs = 0
    for a, b, f in zip(src_base.weights, base.weights, fresh.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
        differs += not np.array_equal(a.numpy(), f.numpy())
    assert differs > 10  # the source base is not just another random init
    x = registry.preprocess_fn("mobilenetv3small")(_images(source))
    np.testing.assert_allclose(np.asarray(src_base(x, training=False)),
                               np.asarray(base(x, training=False)), rtol=1e-5, atol=1e-5)
    # conv weights do not depend on the input size: the same run at 48 px
    big = weights.build("mobilenetv3small", 48, f"run:{source['run_id']}", source["uri"])
    assert big.input_shape == (None, 48, 48, 3)
    for a, b in zip(src_base.weights, big.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_run_latest_resolves_and_a_transfer_job_finishes(source, compose):
    run, loc = pretrained.resolve(f"run:latest:{SOURCE_EXP}", source["uri"], "mobilenetv3small")
    assert run.info.run_id == source["run_id"] and loc
    cfg = compose([*TINY, "freeze=all", f"backbone.weights=run:latest:{SOURCE_EXP}",
                   "dataset.classes=[ring,square]", "tracking.experiment=transfer"],
                  root=source["root"])
    out = job.run(cfg)
    c = mlflow.MlflowClient(source["uri"])
    r = c.get_run(out["run_id"])
    assert r.info.status == "FINISHED" and 0 <= r.data.metrics["test_acc"] <= 1
    assert r.data.params["backbone.weights"] == f"run:latest:{SOURCE_EXP}"
    assert "bn_calibrated" not in r.data.tags  # pretrained BN statistics are kept
    assert sorted(p.name for p in (source["root"] / "data" / "synthetic").iterdir()) == [
        "c2_n10_px32_seed0", "ring-square_n10_px32_seed0"]


def test_run_errors_are_clear(source, compose):
    uri, c = source["uri"], mlflow.MlflowClient(source["uri"])
    exp = c.get_experiment_by_name(SOURCE_EXP).experiment_id
    with pytest.raises(pretrained.PretrainedError, match=r"no MLflow run 0123abcd.*tracking.uri"):
        pretrained.resolve("run:0123abcd", uri)
    with pytest.raises(pretrained.PretrainedError, match=r"no MLflow experiment 'nope'.*pretrain_src"):
        pretrained.resolve("run:latest:nope", uri)
    # a FINISHED job run without a logged model
    bare = c.create_run(exp, tags={"transferlab.role": "job", "backbone": "mobilenetv3small"})
    c.set_terminated(bare.info.run_id, "FINISHED")
    with pytest.raises(pretrained.PretrainedError,
                       match=rf"run {bare.info.run_id} has no logged model.*tracking.log_model=true"):
        pretrained.resolve(f"run:{bare.info.run_id}", uri)
    other = c.create_experiment("no_models")
    c.set_terminated(c.create_run(other, tags={"transferlab.role": "job"}).info.run_id, "FINISHED")
    with pytest.raises(pretrained.PretrainedError, match="none with a logged model.*log_model=true"):
        pretrained.resolve("run:latest:no_models", uri)
    # run:latest: still finds the source, skipping the newer run without a model
    assert pretrained.resolve(f"run:latest:{SOURCE_EXP}", uri)[0].info.run_id == source["run_id"]
    # another backbone
    for spec in (f"run:{source['run_id']}", f"run:latest:{SOURCE_EXP}"):
        cfg = compose([*TINY, "backbone=mobilenetv2", f"backbone.weights={spec}"], root=source["root"])
        validate(cfg)  # syntax only: no MLflow, no TF
        with pytest.raises(pretrained.PretrainedError, match=r"mobilenetv3small.*backbone=mobilenetv3small"):
            build_model(cfg, 2, tracking.tracking_uri(cfg))


def test_keras_and_weights_files(tmp_path, source):
    # a saved transferlab classifier: its base is taken
    src_base = _source_base(source)
    _, loc = pretrained.resolve(f"run:{source['run_id']}", source["uri"])
    pretrained.load_logged_model(source["uri"], loc).save(tmp_path / "clf.keras")
    base = weights.build("mobilenetv3small", 32, str(tmp_path / "clf.keras"))
    for a, b in zip(src_base.weights, base.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # a plain application of another backbone, as .keras and as .weights.h5
    v2 = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(32, 32, 3))
    v2.save(tmp_path / "v2.keras")
    v2.save_weights(tmp_path / "v2.weights.h5")
    with pytest.raises(pretrained.PretrainedError, match=r"v2.keras holds a mobilenetv2 backbone, not "
                                                         r"mobilenetv3small.*backbone=mobilenetv2"):
        weights.build("mobilenetv3small", 32, str(tmp_path / "v2.keras"))
    with pytest.raises(pretrained.PretrainedError) as e:
        weights.build("mobilenetv3small", 32, str(tmp_path / "v2.weights.h5"))
    msg = str(e.value)
    assert "v2.weights.h5" in msg and "does not fit mobilenetv3small" in msg
    # what it was built as, that no ImageNet variant of it fits, and the fix
    assert "as built here, keras.applications.MobileNetV3Small(alpha=1.0, minimalistic=False, " \
           "include_top=False)" in msg and "fit none of mobilenetv3small's ImageNet variants" in msg
    assert "Fix: the weights of that model saved with .save_weights" in msg


def test_validate_checks_run_syntax_without_tensorflow(compose):
    for bad in ("run:", "run:latest:", "run:a/b"):
        with pytest.raises(ConfigError, match="run:<MLflow run id>.*run:latest:<MLflow experiment name>"):
            validate(compose(["backbone.weights=" + bad]))
    with pytest.raises(ConfigError, match="run:latest:<experiment>"):
        validate(compose(["backbone.weights=/no/such.weights.h5"]))
    code = ("import sys; sys.path.insert(0, 'tests'); from conftest import ROOT\n"
            "from hydra import compose, initialize_config_dir\n"
            "from transferlab.runner.validate import validate\n"
            "with initialize_config_dir(str(ROOT / 'conf'), version_base='1.3'):\n"
            "    validate(compose('config', overrides=['backbone.weights=run:latest:x']))\n"
            "    validate(compose('config', overrides=['backbone.weights=run:0a1b2c']))\n"
            "assert 'tensorflow' not in sys.modules and 'mlflow' not in sys.modules, 'imported'\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]


def test_synthetic_class_selection(tmp_path, compose):
    from PIL import Image

    picked = synthetic.generate(tmp_path / "p", classes=["stripes_h", "ring"], images_per_class=4, size=16)
    default = synthetic.generate(tmp_path / "d", 3, images_per_class=4, size=16)
    assert sorted(p.name for p in (picked / "train").iterdir()) == ["ring", "stripes_h"]
    same = np.asarray(Image.open(picked / "train/ring/ring_0.png"))
    np.testing.assert_array_equal(same, np.asarray(Image.open(default / "train/ring/ring_0.png")))
    with pytest.raises(ValueError, match="unknown: hexagon"):
        synthetic.generate(tmp_path / "x", classes=["ring", "hexagon"])
    cfg = compose(["dataset.classes=[stripes_h,ring]", "dataset.images_per_class=4",
                   "dataset.source_size=16"])
    assert data.dataset_path(cfg).name == "ring-stripes_h_n4_px16_seed0"
    assert data.dataset_path(compose(["dataset.images_per_class=4", "dataset.source_size=16"])).name \
        == "c2_n4_px16_seed0"
    with pytest.raises(ConfigError, match=r"dataset.classes.*\['ring', 'ring'\].*Fix"):
        data.dataset_path(compose(["dataset.classes=[ring,ring]"]))
