"""What a finished job leaves in its MLflow run besides metrics.

Test predictions (per image: true class, predicted class, probabilities),
curves drawn from the run's own metric history (so a resumed run shows all
its epochs), the confusion matrix, the resolved config, the model summary and,
opt-in, the model itself.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from omegaconf import OmegaConf

from transferlab.engine.diskfull import DiskFull, is_full, writing
from transferlab.engine.evaluate import TestScores
from transferlab.runner import tracking


def log_run_artifacts(cfg, model, splits, scores: TestScores, c, run_id: str, freeze_plan: str) -> dict:
    """Test predictions, curves, confusion matrix, per-class scores, config, summary.

    Returns the final metrics it computed: ``test_images`` and the scores of
    ``runner/scores.py`` (``test_balanced_acc``, ``test_macro_f1``, ...).
    """
    from transferlab.runner import plots, scores as extra

    true, pred, probs = scores.true, scores.pred, scores.probs
    # Curves from the MLflow record, so a resumed run shows all its epochs.
    hist = history(c, run_id)
    with tempfile.TemporaryDirectory() as tmp, writing(tmp):  # a full /tmp: named, removed
        t = Path(tmp)
        (t / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        (t / "classes.json").write_text(json.dumps(splits.class_names))
        lines: list[str] = []
        model.summary(print_fn=lambda s, **_: lines.append(s), expand_nested=False)
        (t / "model_summary.txt").write_text("\n".join(lines) + f"\n\nfreeze: {freeze_plan}\n")
        write_predictions(t / "test_predictions.csv", splits.test_paths, true, pred, probs)
        (t / "per_class_metrics.csv").write_text(extra.per_class_csv(true, pred, splits.class_names),
                                                 encoding="utf-8")
        plots.curves(hist, t / "curves.png", title=tracking.run_name(cfg),
                     boundary=cfg.trainer.warmup_epochs or None)
        plots.confusion(true, pred, splits.class_names, t / "confusion_matrix.png")
        try:  # error gallery + Grad-CAM: need the model, so drawn here; never fail the job
            from transferlab.runner import gallery

            gallery.write(model, splits, true, pred, probs, t)
        except Exception as e:
            c.set_tag(run_id, "gallery", f"not drawn: {type(e).__name__}: {e}"[:500])
        log_files(c, run_id, t)
    from transferlab.runner import reference

    return {"test_images": len(true), **extra.test_metrics(true, pred, probs),
            **reference.for_job(cfg, splits, hist, scores.loss, c, run_id)}


def log_files(c, run_id: str, folder: Path) -> None:
    """``c.log_artifacts(run_id, folder)``; on a full disk, no half-copied file stays in the run.

    A local artifact store (the default, under ``mlruns/artifacts``) is copied
    into file by file; if the disk fills up, the files of this call are
    removed from the run again and ``DiskFull`` names the run's artifact folder.

    Raises:
        DiskFull: no space left in the artifact store.
    """
    try:
        c.log_artifacts(run_id, str(folder))
    except OSError as e:
        if not is_full(e):
            raise
        uri = c.get_run(run_id).info.artifact_uri
        files = [p for p in folder.rglob("*") if p.is_file()]
        dest = None
        if uri.startswith(("file:", "/")):
            from mlflow.utils.file_utils import local_file_uri_to_path

            dest = Path(local_file_uri_to_path(uri))
            for p in files:
                (dest / p.relative_to(folder)).unlink(missing_ok=True)
        raise DiskFull(dest or uri, sum(p.stat().st_size for p in files), e) from e


def history(c, run_id: str, mlflow_names: bool = False) -> dict[str, list[float]]:
    """Per-epoch loss/accuracy of a run from MLflow, keyed by Keras' names (or MLflow's)."""
    from transferlab.runner.callbacks import METRIC_NAMES

    out = {}
    for keras_name, name in METRIC_NAMES.items():
        points = sorted(c.get_metric_history(run_id, name), key=lambda m: m.step)
        out[name if mlflow_names else keras_name] = [m.value for m in points]
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
    # Named, not inferred: MLflow's inference loads the model in a subprocess (~8 s per job on
    # 2 cores) and, for these models, fails and falls back to keras alone anyway.
    import keras
    import tensorflow as tf

    requirements = [f"keras=={keras.__version__}", f"tensorflow=={tf.__version__}"]
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(run_id=run_id):  # closing the block ends the run; job.run sets its final status
        mlflow.keras.log_model(model, name="model", signature=signature, pip_requirements=requirements)


def write_predictions(path: Path, paths, true, pred, probs) -> None:
    import csv

    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "true", "pred", "correct"] + [f"p_{k}" for k in range(probs.shape[1])])
        for p, t, q, row in zip(paths, true, pred, probs):
            w.writerow([p, int(t), int(q), int(t == q)] + [f"{v:.6f}" for v in row])
