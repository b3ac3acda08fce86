"""Weights files a test writes itself, and Keras' own ImageNet path serving them (the oracle).

Used by tests/test_weights_routes.py and benchmarks/weights_routes.py; nothing
here goes through transferlab's resolver.
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from unittest import mock

import keras
import numpy as np

# ImageNet-like statistics for the adapt-style Normalization of EfficientNetB0-B7 (a route
# that keeps the build-time mean 0 / variance 1 is caught).
MEAN = [0.485, 0.456, 0.406]
VARIANCE = [0.229, 0.224, 0.225]


def ctor(name: str):
    from transferlab.models.registry import spec

    return getattr(keras.applications, spec(name).constructor)


def perturb(model, seed: int = 0):
    """Non-trivial statistics in place: every BatchNormalization's moving mean/variance and
    gamma/beta drawn at random, every Normalization with variables set to ImageNet-like mean
    and variance. Returns ``model``."""
    rng = np.random.default_rng(seed)
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.BatchNormalization):
            for v in layer.weights:
                shape = tuple(v.shape)
                if v.name == "moving_variance":
                    v.assign(rng.uniform(0.5, 1.5, shape).astype("float32"))
                elif v.name == "gamma":
                    v.assign(rng.uniform(0.7, 1.3, shape).astype("float32"))
                else:  # beta, moving_mean
                    v.assign(rng.normal(0.0, 0.1, shape).astype("float32"))
        elif isinstance(layer, keras.layers.Normalization) and layer.input_mean is None:
            layer.adapt_mean.assign(np.array(MEAN, "float32"))
            layer.adapt_variance.assign(np.array(VARIANCE, "float32"))
            layer.finalize_state()
    return model


def perturbed(name: str, size: int, include_top: bool = False, seed: int = 0, **opts):
    """``perturb(keras.applications.<X>(weights=None, **opts))`` (opts: Keras' constructor
    options, e.g. ``alpha=0.25``)."""
    return perturb(ctor(name)(include_top=include_top, weights=None, input_shape=(size, size, 3),
                              **opts), seed)


def write_weights(name: str, size: int, path, include_top: bool = False, legacy: bool = False,
                  **opts) -> str:
    """Saves ``perturbed(...)``'s weights: ``.weights.h5``, or the legacy ``.h5`` layout of
    Keras' own ImageNet files (``legacy=True``)."""
    model = perturbed(name, size, include_top, **opts)
    path = str(path)
    if legacy:
        import h5py

        from keras.src.legacy.saving import legacy_h5_format

        with h5py.File(path, "w") as f:
            legacy_h5_format.save_weights_to_hdf5_group(f, model)
    else:
        model.save_weights(path)
    return path


def keras_imagenet(name: str, size: int, path, include_top: bool = False, asked: list | None = None,
                   **opts):
    """What ``keras.applications.<X>(weights="imagenet", **opts)`` builds when its download
    (``file_utils.get_file``) returns ``path``: Keras' own ImageNet graph and loader.
    ``path=None``: that graph, nothing loaded (random init). ``asked`` gets the file names
    Keras' download was asked for."""
    from keras.src.utils import file_utils

    def get_file(*args, **kwargs):
        if asked is not None:
            asked.append(kwargs.get("fname", args[0] if args else None))
        return str(path)

    with contextlib.ExitStack() as stack:
        stack.enter_context(warnings.catch_warnings())  # MobileNet(V2/V3) off 224 px: "weights for 224"
        warnings.simplefilter("ignore", UserWarning)
        stack.enter_context(mock.patch.object(file_utils, "get_file", get_file))
        if path is None:
            stack.enter_context(mock.patch.object(keras.Model, "load_weights", lambda *a, **k: None))
        return ctor(name)(include_top=include_top, weights="imagenet", input_shape=(size, size, 3),
                          **opts)


def imagenet_source(name: str, size: int, path, include_top: bool = False, **opts):
    """Keras' ImageNet graph with ``perturb``'s weights, saved to ``path``: the model Keras'
    ImageNet path builds when served that file, with one build less (for the fast suite)."""
    model = perturb(keras_imagenet(name, size, None, include_top, **opts))
    model.save_weights(str(path))
    return model


def batch(name: str, size: int, n: int = 2, seed: int = 1) -> np.ndarray:
    """``n`` random 0-255 images through the backbone's own ``preprocess_input``."""
    from transferlab.models.registry import preprocess_fn

    x = np.random.default_rng(seed).uniform(0, 255, (n, size, size, 3)).astype("float32")
    return np.asarray(preprocess_fn(name)(x))


def max_diff(a, b, x) -> tuple[float, float]:
    """(max abs difference, max abs difference / max |a|) of two models' outputs on ``x``."""
    ya = np.asarray(a(x, training=False), dtype=np.float64)
    yb = np.asarray(b(x, training=False), dtype=np.float64)
    d = float(np.max(np.abs(ya - yb)))
    return d, d / max(float(np.max(np.abs(ya))), 1e-30)


def _nameless(obj):
    if isinstance(obj, dict):
        return {k: _nameless(v) for k, v in obj.items() if k != "name"}
    if isinstance(obj, (list, tuple)):
        return [_nameless(v) for v in obj]
    return obj


def graph(model) -> list:
    """Each layer's class and config, auto-numbered names aside (at any depth): what the
    model computes apart from its weights."""
    import json

    return [(type(l).__name__, json.dumps(_nameless(l.get_config()), sort_keys=True, default=str))
            for l in model.layers]


def log_classifier(base, name: str, uri: str, label: str | None = None) -> str:
    """An MLflow run (tagged as a transferlab job of ``name``, variant ``label``, e.g.
    ``mobilenet-a0.25``; default ``name``) whose logged model ``model`` is a classifier with
    ``base`` as its ``base`` layer, as a job logs it; returns its run id."""
    import mlflow

    from transferlab.models.layers import InferenceMode

    inp = keras.Input(base.input_shape[1:], name="image")
    y = keras.layers.GlobalAveragePooling2D()(InferenceMode(base, name="base")(inp))
    clf = keras.Model(inp, keras.layers.Dense(2, activation="softmax", name="predictions")(y))
    mlflow.set_tracking_uri(uri)
    c = mlflow.MlflowClient(uri)
    exp = c.get_experiment_by_name("weights_routes")
    exp_id = exp.experiment_id if exp else c.create_experiment(  # artifacts beside the store, not ./mlruns
        "weights_routes", artifact_location=str(Path(uri.removeprefix("sqlite:///")).parent / "artifacts"))
    tags = {"transferlab.role": "job", "backbone": name, "backbone_label": label or name}
    with mlflow.start_run(experiment_id=exp_id, tags=tags) as run:
        # pip_requirements: skips MLflow's requirement inference (seconds per model)
        mlflow.keras.log_model(clf, name="model", pip_requirements=["keras"])
    return run.info.run_id
