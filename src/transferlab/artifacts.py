"""What a finished job leaves in its MLflow run besides metrics.

Test predictions (per image: true class, predicted class, probabilities),
curves drawn from the run's own metric history (so a resumed run shows all
its epochs), the confusion matrix, the resolved config, the model summary and,
opt-in, the model itself.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from transferlab import tracking


@dataclass
class TestScores:
    """The test split through the trained model, once: scores and per-image predictions."""

    loss: float
    acc: float
    probs: "np.ndarray"  # (images, classes): a binary model's sigmoid as [1 - p, p]  # noqa: F821
    true: "np.ndarray"  # class indices
    pred: "np.ndarray"


def test_scores(model, splits) -> TestScores:
    """Loss and accuracy on the test split, from ONE ``model.predict``.

    ``model.evaluate`` followed by ``model.predict`` (for the predictions
    file) traced the full model twice per job (1 s for MobileNetV3Small,
    more for bigger bases). The loss is the model's own compiled loss
    function (``keras.losses.get``, the same clipping) averaged over the
    images, as ``evaluate`` averages it; accuracy as Keras' ``accuracy``
    metric (threshold 0.5 for a sigmoid, argmax otherwise).
    """
    import keras
    import numpy as np

    out = np.asarray(model.predict(splits.test, verbose=0), dtype=np.float32)
    y = np.concatenate([np.asarray(y) for _, y in splits.test]).astype(np.float32)
    loss = float(np.mean(keras.ops.convert_to_numpy(keras.losses.get(model.loss)(y, out))))
    if splits.num_classes == 2:
        probs = np.concatenate([1.0 - out, out], axis=1)
        true = y[:, 0].astype(int)
        pred = (out[:, 0] > 0.5).astype(int)
    else:
        probs, true, pred = out, y.argmax(axis=1), out.argmax(axis=1)
    return TestScores(loss, float(np.mean(pred == true)), probs, true, pred)


def log_run_artifacts(cfg, model, splits, scores: TestScores, c, run_id: str, freeze_plan: str) -> dict:
    """Test predictions, curves, confusion matrix, config, summary (and the model)."""
    from transferlab import plots

    true, pred, probs = scores.true, scores.pred, scores.probs
    # Curves from the MLflow record, so a resumed run shows all its epochs.
    hist = history(c, run_id)
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        (t / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        (t / "classes.json").write_text(json.dumps(splits.class_names))
        lines: list[str] = []
        model.summary(print_fn=lambda s, **_: lines.append(s), expand_nested=False)
        (t / "model_summary.txt").write_text("\n".join(lines) + f"\n\nfreeze: {freeze_plan}\n")
        write_predictions(t / "test_predictions.csv", splits.test_paths, true, pred, probs)
        plots.curves(hist, t / "curves.png", title=tracking.run_name(cfg),
                     boundary=cfg.trainer.warmup_epochs or None)
        plots.confusion(true, pred, splits.class_names, t / "confusion_matrix.png")
        c.log_artifacts(run_id, str(t))
    return {"test_images": len(true)}


def history(c, run_id: str) -> dict[str, list[float]]:
    from transferlab.train import METRIC_NAMES

    out = {}
    for keras_name, name in METRIC_NAMES.items():
        points = sorted(c.get_metric_history(run_id, name), key=lambda m: m.step)
        out[keras_name] = [m.value for m in points]
    return out


def log_model(model, splits, uri: str, run_id: str) -> None:
    """The trained (best) model as an MLflow model with a signature (opt-in: it is large)."""
    import mlflow
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    example = np.asarray(next(iter(splits.test.take(1)))[0][:1])
    out = np.asarray(model.predict(example, verbose=0))
    signature = ModelSignature(  # not input_example=: mlflow 3.17's keras flavour crashes (mlflow#16183)
        inputs=Schema([TensorSpec(np.dtype("float32"), (-1, *example.shape[1:]), "image")]),
        outputs=Schema([TensorSpec(np.dtype("float32"), (-1, *out.shape[1:]))]))
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(run_id=run_id):  # closing the block ends the run; job.run sets its final status
        mlflow.keras.log_model(model, name="model", signature=signature)


def write_predictions(path: Path, paths, true, pred, probs) -> None:
    import csv

    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "true", "pred", "correct"] + [f"p_{k}" for k in range(probs.shape[1])])
        for p, t, q, row in zip(paths, true, pred, probs):
            w.writerow([p, int(t), int(q), int(t == q)] + [f"{v:.6f}" for v in row])
