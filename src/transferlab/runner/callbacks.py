"""The runner's Keras callbacks: what the engine's fit loop reports, into MLflow."""

from __future__ import annotations

import logging
import time

import keras
from mlflow.entities import Metric


class _PerJobTracing(logging.Filter):
    """Drops TensorFlow's "N out of the last N calls ... triggered tf.function retracing"
    for Keras' own train/test/predict steps.

    Every job builds a new model, so Keras traces its steps once per job (the cost
    is in ``first_step_seconds``). TensorFlow counts traces per Python code object,
    across models, so from the fifth job in a worker on it called each job's one
    trace "retracing" and printed a paragraph per job. Warnings about any other
    function still show.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not ("triggered tf.function retracing" in msg and any(
            f"make_{step}_function" in msg for step in ("train", "test", "predict")))


_tf_log = logging.getLogger("tensorflow")
if not any(isinstance(f, _PerJobTracing) for f in _tf_log.filters):
    _tf_log.addFilter(_PerJobTracing())

# Keras log names -> the names in the MLflow record (design.md).
METRIC_NAMES = {"accuracy": "acc", "val_accuracy": "val_acc", "loss": "loss", "val_loss": "val_loss",
                "balanced_accuracy": "balanced_acc", "val_balanced_accuracy": "val_balanced_acc"}


class MlflowEpochLogger(keras.callbacks.Callback):
    """Logs acc/val_acc/loss/val_loss, (val_)balanced_acc, the learning rate and the phase per epoch.

    Args:
        client: an ``mlflow.MlflowClient``.
        run_id: the job's run.
        phase: 1 or 2, logged as metric ``phase``.
        logged_until: the last epoch already in MLflow (-1: none); a resumed
            job that re-runs that epoch does not log it again.
    """

    def __init__(self, client, run_id: str, phase: int, logged_until: int = -1):
        super().__init__()
        self.client, self.run_id, self.phase, self.logged_until = client, run_id, phase, logged_until
        self._epoch_t0 = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_t0 = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if epoch <= self.logged_until:
            return
        now = int(time.time() * 1000)
        values = {METRIC_NAMES[k]: float(v) for k, v in (logs or {}).items() if k in METRIC_NAMES}
        values["lr"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        values["phase"] = float(self.phase)
        values["epoch_seconds"] = time.perf_counter() - self._epoch_t0  # training + validation
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, epoch) for k, v in values.items()])
