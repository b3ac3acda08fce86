"""Scoring the test split: one ``predict``, the model's own loss, per-image predictions."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TestScores:
    """The test split through the trained model, once: scores and per-image predictions."""

    loss: float
    acc: float
    probs: "np.ndarray"  # (images, classes): a binary model's sigmoid as [1 - p, p]  # noqa: F821
    true: "np.ndarray"  # class indices
    pred: "np.ndarray"


def test_scores(model, splits, head=None, test_features=None) -> TestScores:
    """Loss and accuracy on the test split, from ONE ``model.predict``.

    With ``head`` and ``test_features`` (``FitResult.head`` / ``.test_features``
    of a job whose last phase trained on cached features) the test split is
    scored by the head model on the cached outputs of the frozen layers: the
    same layer objects and weights as ``model`` after the cut, so the same
    predictions (float round-off aside) without running the frozen base again
    or tracing the full model (measured: 2.5-6 s per MobileNetV2@96 job).

    ``model.evaluate`` followed by ``model.predict`` (for the predictions
    file) traced the full model twice per job (1 s for MobileNetV3Small,
    more for bigger bases). The loss is the model's own compiled loss
    function (``keras.losses.get``, the same clipping) averaged over the
    images, as ``evaluate`` averages it; accuracy as Keras' ``accuracy``
    metric (threshold 0.5 for a sigmoid, argmax otherwise).
    """
    import keras
    import numpy as np

    scorer, test = (head, test_features) if head is not None and test_features is not None \
        else (model, splits.test)
    out = np.asarray(scorer.predict(test, verbose=0), dtype=np.float32)
    y = np.concatenate([np.asarray(y) for _, y in splits.test]).astype(np.float32)
    loss = float(np.mean(keras.ops.convert_to_numpy(keras.losses.get(scorer.loss)(y, out))))
    if splits.num_classes == 2:
        probs = np.concatenate([1.0 - out, out], axis=1)
        true = y[:, 0].astype(int)
        pred = (out[:, 0] > 0.5).astype(int)
    else:
        probs, true, pred = out, y.argmax(axis=1), out.argmax(axis=1)
    return TestScores(loss, float(np.mean(pred == true)), probs, true, pred)
