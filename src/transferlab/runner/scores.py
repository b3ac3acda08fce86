"""Test-split scores beyond accuracy, by scikit-learn: balanced accuracy, macro F1, AUC, top-5.

Accuracy alone misleads on imbalanced data (a model answering the majority
class scores its frequency), so every job logs these beside ``test_acc`` and
a per-class precision/recall/F1 table as an artifact. Inputs are the
engine's ``TestScores`` arrays; nothing here touches TensorFlow or MLflow.
"""

from __future__ import annotations

import csv
import io
import warnings

import numpy as np

TOP_K = 5  # test_top5_acc, logged for >= 10 classes


def test_metrics(true, pred, probs) -> dict[str, float]:
    """``test_balanced_acc``, ``test_macro_f1``, ``test_auc`` and (k >= 10) ``test_top5_acc``.

    Args:
        true, pred: class indices, shape (n,).
        probs: class probabilities, shape (n, k) (a binary model's sigmoid as [1 - p, p]).

    Returns:
        Metric name -> value in [0, 1]. Balanced accuracy is the mean recall over
        the classes present in ``true``; macro F1 averages over the classes in
        ``true`` or ``pred`` (scikit-learn's defaults). ``test_auc``: ROC-AUC of
        the positive class for k = 2, one-vs-rest macro average for k > 2 over the
        classes present in ``true``; left out when fewer than two classes are present
        (AUC is undefined then).
    """
    from sklearn import metrics as skm

    true, pred = np.asarray(true, dtype=int), np.asarray(pred, dtype=int)
    probs = np.asarray(probs, dtype=np.float64)
    if true.size == 0:
        return {}
    k = probs.shape[1]
    with warnings.catch_warnings():  # "y_pred contains classes not in y_true": expected here
        warnings.simplefilter("ignore", UserWarning)
        out = {"test_balanced_acc": float(skm.balanced_accuracy_score(true, pred)),
               "test_macro_f1": float(skm.f1_score(true, pred, average="macro", zero_division=0))}
    auc = _auc(true, probs)
    if auc is not None:
        out["test_auc"] = auc
    if k >= 10:
        out[f"test_top{TOP_K}_acc"] = float(skm.top_k_accuracy_score(
            true, probs, k=TOP_K, labels=np.arange(k)))
    return out


def _auc(true: np.ndarray, probs: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score

    present = np.unique(true)
    if present.size < 2:
        return None
    k = probs.shape[1]
    if k == 2:
        return float(roc_auc_score(true, probs[:, 1]))
    if present.size == k:
        probs = probs / probs.sum(axis=1, keepdims=True)  # float32 softmax: sums off by ~1e-7
        return float(roc_auc_score(true, probs, multi_class="ovr", average="macro"))
    # scikit-learn's one-vs-rest needs every class in y_true; average the classes present
    return float(np.mean([roc_auc_score(true == c, probs[:, c]) for c in present]))


def per_class_csv(true, pred, class_names: list[str]) -> str:
    """CSV text: ``index,class,precision,recall,f1,support`` per class (support = test images)."""
    from sklearn.metrics import precision_recall_fscore_support

    k = len(class_names)
    p, r, f, s = precision_recall_fscore_support(np.asarray(true, int), np.asarray(pred, int),
                                                 labels=np.arange(k), zero_division=0)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["index", "class", "precision", "recall", "f1", "support"])
    for i, name in enumerate(class_names):
        w.writerow([i, name, f"{p[i]:.6f}", f"{r[i]:.6f}", f"{f[i]:.6f}", int(s[i])])
    return buf.getvalue()
