"""The selection metric: which validation number ranks runs and configurations.

Ranking on the test split would make the winner's test score an optimistic
estimate (it was chosen for being high), so only validation metrics are
accepted. A run's score is the metric's value for the model the job ends
with: the restored best epoch when early stopping restored one (metric
``best_epoch``), otherwise the last epoch — the same value ``runner/job.py``
returns as ``val_acc``.
"""

from __future__ import annotations

import math

from transferlab.config.schema import SELECTION_METRICS
from transferlab.report.collect import ReportError, RunRecord

DEFAULT_METRIC = "val_acc"
KNOWN = SELECTION_METRICS


def check_metric(metric: str | None) -> str:
    """The metric to rank by (default ``val_acc``).

    Raises:
        ReportError: ``metric`` is not a validation metric (``val_...``).
    """
    metric = (metric or DEFAULT_METRIC).strip()
    if not metric.startswith("val_"):
        raise ReportError(
            f"--metric {metric}: ranking on anything but validation data makes the chosen "
            "configuration's test score optimistic. Use a validation metric: "
            f"{', '.join(KNOWN)} (report.metric=... for a sweep's own report).")
    return metric


def higher_is_better(metric: str) -> bool:
    """Losses are minimised, everything else (accuracies, F1, AUC) maximised."""
    return not metric.endswith("loss")


def rank_key(score: float | None, metric: str) -> float:
    """Ascending sort key: the best score first, missing or NaN scores last."""
    if score is None or math.isnan(score):
        return math.inf
    return -score if higher_is_better(metric) else score


def run_score(rec: RunRecord, metric: str) -> float | None:
    """``metric`` of the model ``rec`` ended with, or None when the run never logged it."""
    hist = rec.history.get(metric) or []
    if not hist:
        value = rec.metrics.get(metric)
        return None if value is None or math.isnan(value) else float(value)
    best_epoch = rec.metrics.get("best_epoch")
    if best_epoch is not None:
        by_step = dict(hist)
        if int(best_epoch) in by_step:
            return by_step[int(best_epoch)]
    return hist[-1][1]
