"""The registry covers every keras.applications model and each entry builds."""

import inspect

import keras
import numpy as np
import pytest

from transferlab.models import registry, weights
from transferlab.models.registry import BACKBONES, WeightsUnavailable

LECTURE_TABLE = ["xception", "vgg16", "vgg19", "resnet50", "resnet50v2", "resnet101",
                 "resnet101v2", "resnet152", "resnet152v2", "inceptionv3", "inceptionresnetv2",
                 "mobilenet", "mobilenetv2", "densenet121", "densenet169", "densenet201",
                 "nasnetmobile"]
# Over ~1.5 s to build on 2 cores each: built (and run) by test_weights_routes' slow
# test_every_backbone_file_route_and_graph, which builds every entry anyway.
LARGE = {n for n, s in BACKBONES.items() if s.num_layers > 400 or n.startswith("convnext")
         and n != "convnexttiny"}


def installed_applications():
    return sorted(n for n, f in vars(keras.applications).items()
                  if n[:1].isupper() and callable(f) and not inspect.ismodule(f))


def test_every_installed_application_has_an_entry():
    names = installed_applications()
    assert len(names) >= 40
    missing = [n for n in names if n.lower() not in BACKBONES]
    assert not missing, f"keras.applications models without a registry entry: {missing}"
    assert {s.constructor for s in BACKBONES.values()} == set(names)


def test_the_lecture_table_and_the_newer_families_are_there():
    for n in LECTURE_TABLE + ["nasnetlarge", "mobilenetv3small", "mobilenetv3large",
                              "efficientnetb7", "efficientnetv2s", "convnexttiny"]:
        assert n in BACKBONES


def _build_and_check(name):
    s = BACKBONES[name]
    size = max(s.min_size, 32)
    base = weights.build(name, size, weights=None)
    assert len(base.layers) == s.num_layers, name
    x = np.full((1, size, size, 3), 127.0, "float32")
    y = base(registry.preprocess_fn(name)(x), training=False)
    assert y.shape[0] == 1 and y.shape[-1] > 0
    keras.backend.clear_session()


@pytest.mark.parametrize("name", sorted(set(BACKBONES) - LARGE))
def test_entry_builds_at_its_minimum_size(name):
    _build_and_check(name)


@pytest.mark.parametrize("name,below", [("vgg19", 31), ("inceptionv3", 74), ("xception", 70)])
def test_min_size_matches_keras(name, below):
    assert BACKBONES[name].min_size == below + 1
    with pytest.raises(ValueError):
        weights.build(name, below, weights=None)


def test_preprocess_is_the_backbones_own():
    x = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    vgg = np.asarray(registry.preprocess_fn("vgg19")(x.copy()))
    # caffe mode: RGB->BGR and ImageNet mean subtraction, no scaling
    np.testing.assert_allclose(vgg[..., 0], x[..., 2] - 103.939, rtol=1e-5)
    mnv2 = np.asarray(registry.preprocess_fn("mobilenetv2")(x.copy()))
    np.testing.assert_allclose(mnv2, x / 127.5 - 1, rtol=1e-5)  # tf mode: [-1, 1]
    # EfficientNet rescales inside the model: its preprocess_input is the identity
    np.testing.assert_array_equal(np.asarray(registry.preprocess_fn("efficientnetb0")(x)), x)


def test_missing_download_ends_in_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    try:
        weights.build("mobilenetv3small", 32, weights="imagenet")
    except WeightsUnavailable as e:
        msg = str(e)
        assert "backbone.weights=null" in msg and str(tmp_path) in msg
    else:
        pytest.skip("the weights downloaded: this machine is online")


def test_local_weights_file_is_loaded(tmp_path):
    """backbone.weights=<file>: the weights a test wrote come back."""
    src = weights.build("mobilenetv3small", 32, weights=None)
    path = str(tmp_path / "mnv3s.weights.h5")
    src.save_weights(path)
    again = weights.build("mobilenetv3small", 32, weights=path)
    for a, b in zip(src.weights, again.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_backbone_yaml_comments_state_the_registry_figures():
    """conf/backbone/<name>.yaml's first line states what the registry holds."""
    import re

    from conftest import ROOT

    for name, s in BACKBONES.items():
        line = (ROOT / "conf" / "backbone" / f"{name}.yaml").read_text().splitlines()[0]
        m = re.search(r"keras\.applications\.(\w+): default input (\d+) px, minimum (\d+) px, "
                      r"(\d+) layers without top", line)
        assert m, line
        assert (m[1], int(m[2]), int(m[3]), int(m[4])) == (
            s.constructor, s.default_size, s.min_size, s.num_layers), name
