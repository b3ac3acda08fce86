"""trainer.class_weight=balanced: Keras weighs each image's loss by n / (k * n_c)."""

import keras
import numpy as np
import pytest
from PIL import Image

from conftest import TINY
from transferlab import data
from transferlab.data.stats import class_weights
from transferlab.engine.train import fit
from transferlab.models.build import build_model

TRAIN = {"a": 12, "b": 4, "c": 6}


def imbalanced(root, k):
    rng = np.random.default_rng(k)
    for split in data.SPLITS:
        for cls in list(TRAIN)[:k]:
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(TRAIN[cls] if split == "train" else 2):
                Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(d / f"{i}.png")
    return root


class EpochLoss(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.loss = []

    def on_epoch_end(self, epoch, logs=None):
        self.loss.append(logs["loss"])


@pytest.mark.parametrize("k,feature_cache", [(2, "off"), (2, "on"),
                                             pytest.param(3, "off", marks=pytest.mark.slow)])
def test_balanced_class_weight_weighs_the_training_loss(compose, tmp_path, k, feature_cache):
    """The model answers the same constant for every image (zero kernel, a chosen bias) and
    barely moves (lr 1e-9), so each class's loss is known: the epoch loss Keras reports must
    be the class-weighted mean, not the plain one (binary labels of shape (1,) and one-hot;
    on images and on cached features)."""
    root = imbalanced(tmp_path / "imb", k)
    cfg = compose([*TINY, "dataset=folder", f"dataset.path={root}", "freeze=all", "lr=1e-9",
                   "optimizer=sgd", "trainer.class_weight=balanced",
                   f"runtime.feature_cache={feature_cache}"])
    info = data.scan(root)
    splits = data.load(info, 32, 8, 0)
    weights = class_weights(info)
    n = np.array([TRAIN[c] for c in info.class_names], float)
    assert weights == pytest.approx(dict(enumerate(n.sum() / (k * n))))
    model, base, _ = build_model(cfg, k)
    head = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)][-1]
    kernel, bias = head.get_weights()
    bias = np.array([2.0]) if k == 2 else np.array([2.0, 0.0, -1.0])
    head.set_weights([np.zeros_like(kernel), bias.astype("float32")])
    if k == 2:  # sigmoid: label 1 has p, label 0 has 1 - p
        p1 = 1 / (1 + np.exp(-2.0))
        per_class = -np.log(np.array([1 - p1, p1]))
    else:
        per_class = -np.log(np.exp(bias) / np.exp(bias).sum())
    w = np.array([weights[c] for c in range(k)])
    weighted = float((w * n * per_class).sum() / n.sum())
    plain = float((n * per_class).sum() / n.sum())
    seen = EpochLoss()
    result = fit(model, base, cfg, splits, block_regex=None, feature_dir=tmp_path / "fc",
                 class_weight=weights, callbacks=lambda phase: [seen])
    assert result.feature_cache.startswith("on" if feature_cache == "on" else "off")
    assert seen.loss[0] == pytest.approx(weighted, rel=2e-3)
    assert abs(weighted - plain) > 0.1  # the check could fail: weights change this loss
