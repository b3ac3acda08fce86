"""What one real job logs beyond accuracy: scikit-learn scores, per-epoch balanced accuracy,
per-class scores, reference rows and the flag of a job stuck at the majority rate."""

import csv

import mlflow
import numpy as np
from PIL import Image
from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score

from conftest import TINY
from transferlab.report.flags import NEVER_BEAT


def _imbalanced(root):
    """20:1-like ok/defect folder. Validation and test images are one flat grey (a pixel
    apart, so no two files are equal): every model answers them all alike, so it can never
    beat the majority rate there, whatever it learnt on train."""
    rng = np.random.default_rng(3)
    for split, (n_ok, n_def) in (("train", (20, 4)), ("validation", (10, 1)), ("test", (20, 2))):
        for cls, n in (("ok", n_ok), ("defect", n_def)):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                if split == "train":
                    a = rng.normal(128, 30, (32, 32, 3))
                    if cls == "defect":
                        a[12:20, 12:20] += 80
                else:
                    a = np.full((32, 32, 3), 128.0)
                    a[i // 32, i % 32, 0] += 1 if cls == "ok" else 2  # distinct bytes
                Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(d / f"{cls}_{i}.png")


def test_job_logs_balanced_scores_references_and_the_majority_flag(tmp_path):
    import transferlab

    data = tmp_path / "imb"
    _imbalanced(data)
    tiny = [o for o in TINY if not o.startswith("dataset.")]
    result = transferlab.train([*tiny, "dataset=folder", f"dataset.path={data}", "trainer.epochs=2",
                                f"root_dir={tmp_path / 'root'}"])
    c = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'root'}/mlruns/mlflow.db")
    run = c.get_run(result.run_id)
    m = run.data.metrics
    with open(c.download_artifacts(result.run_id, "test_predictions.csv", str(tmp_path)),
              newline="") as fh:
        rows = list(csv.DictReader(fh))
    true = np.array([int(r["true"]) for r in rows])
    pred = np.array([int(r["pred"]) for r in rows])
    p1 = np.array([float(r["p_1"]) for r in rows])
    assert m["test_balanced_acc"] == balanced_accuracy_score(true, pred)
    assert m["test_macro_f1"] == f1_score(true, pred, average="macro", zero_division=0)
    assert abs(m["test_auc"] - roc_auc_score(true, p1)) < 1e-5     # probabilities: 6 decimals
    assert "test_top5_acc" not in m                                 # two classes
    # per epoch: val_balanced_acc beside val_acc; a constant answer has exactly 0.5
    vbal = c.get_metric_history(result.run_id, "val_balanced_acc")
    assert sorted(h.step for h in vbal) == [0, 1]
    assert all(abs(h.value - 0.5) < 1e-6 for h in vbal)
    with open(c.download_artifacts(result.run_id, "per_class_metrics.csv", str(tmp_path)),
              newline="") as fh:
        per_class = {r["class"]: r for r in csv.DictReader(fh)}
    assert {k: int(v["support"]) for k, v in per_class.items()} == {"defect": 2, "ok": 20}
    # references on the same split: the train majority ('ok') and a linear model
    assert m["ref_majority_val_acc"] == 10 / 11 and m["ref_majority_test_acc"] == 20 / 22
    assert m["ref_majority_val_balanced_acc"] == 0.5
    assert 0 <= m["ref_logreg_test_acc"] <= 1 and "ref_logreg_test_balanced_acc" in m
    # it never beat the majority rate on validation: flagged
    assert NEVER_BEAT in run.data.tags["flags"]
    # the error gallery and Grad-CAM need the model: drawn in the job
    assert "gallery" not in run.data.tags, run.data.tags.get("gallery")
    names = {a.path for a in c.list_artifacts(result.run_id)}
    assert {"error_gallery.png", "gradcam.png", "per_class_metrics.csv"} <= names
