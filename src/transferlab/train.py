"""The fit loop of one job: phases, per-epoch MLflow logging, resume, schedules.

One curve per run: epochs are numbered across phases (phase 1 = head only on
a frozen base, phase 2 = the chosen freezing strategy), and every per-epoch
metric is logged with ``step = epoch``. ``EpochBackup`` keeps each phase's
model and optimizer state on disk after every epoch, so a killed job restarts
from its last completed epoch; the MLflow logger skips epochs already logged,
so no step is ever logged twice.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import keras
from mlflow.entities import Metric

from transferlab import freeze
from transferlab.model import compile_model

# Keras log names -> the names in the MLflow record (design.md).
METRIC_NAMES = {"accuracy": "acc", "val_accuracy": "val_acc", "loss": "loss", "val_loss": "val_loss"}


class MlflowEpochLogger(keras.callbacks.Callback):
    """Logs acc/val_acc/loss/val_loss, the learning rate and the phase per epoch.

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
        self.first_step: float | None = None
        self._t0 = 0.0

    def on_train_begin(self, logs=None):
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        if self.first_step is None:
            self.first_step = time.perf_counter() - self._t0

    def on_epoch_end(self, epoch, logs=None):
        if epoch <= self.logged_until:
            return
        now = int(time.time() * 1000)
        values = {METRIC_NAMES[k]: float(v) for k, v in (logs or {}).items() if k in METRIC_NAMES}
        values["lr"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        values["phase"] = float(self.phase)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, epoch) for k, v in values.items()])


class EpochBackup(keras.callbacks.Callback):
    """Model + optimizer state after every epoch, written atomically.

    Like ``keras.callbacks.BackupAndRestore``, but a kill -9 in the middle of
    a save cannot leave an unreadable backup: Keras' callback overwrites its
    ``.weights.h5`` in place, and the resume test here caught a truncated
    file ("truncated file: eof = 96") after such a kill. Weights go to a new
    file per epoch, then ``state.json`` is replaced atomically to point at it.
    """

    def __init__(self, folder: Path):
        super().__init__()
        self.folder = folder

    def restore(self, model) -> int:
        """Loads the last saved state into ``model``; returns the epoch to resume at (0: none)."""
        state_file = self.folder / "state.json"
        if not state_file.exists():
            return 0
        state = json.loads(state_file.read_text())
        model.optimizer.build(model.trainable_variables)  # optimizer variables must exist
        model.load_weights(self.folder / state["weights"])
        return int(state["epoch"])

    def on_epoch_end(self, epoch, logs=None):
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"epoch{epoch + 1}.weights.h5"
        tmp = self.folder / f"tmp-{name}"
        self.model.save_weights(tmp)
        os.replace(tmp, self.folder / name)
        state_tmp = self.folder / "state.json.tmp"
        state_tmp.write_text(json.dumps({"epoch": epoch + 1, "weights": name}))
        os.replace(state_tmp, self.folder / "state.json")
        for old in self.folder.glob("*.weights.h5"):
            if old.name != name:
                old.unlink()


def lr_at(epoch: int, base_lr: float, sched, epochs: int) -> float:
    """The learning rate of an epoch (0-based, within a phase) under ``scheduler``.

    Linear warm-up over ``sched.linear_warmup_epochs`` from ``base_lr / (w+1)``,
    then ``constant``, ``cosine`` (to ``min_lr_ratio * base_lr``) or ``step``
    (times ``gamma`` every ``step_size`` epochs).
    """
    w = sched.linear_warmup_epochs
    if epoch < w:
        return base_lr * (epoch + 1) / (w + 1)
    t = epoch - w
    if sched.name == "cosine":
        span = max(1, epochs - w - 1)
        floor = sched.min_lr_ratio * base_lr
        return floor + (base_lr - floor) * 0.5 * (1 + math.cos(math.pi * min(t, span) / span))
    if sched.name == "step":
        return base_lr * sched.gamma ** (t // sched.step_size)
    return base_lr


@dataclass
class FitResult:
    """What the phases did, for the run's final metrics."""

    seconds: float = 0.0
    images: int = 0
    first_step_seconds: float = 0.0
    trainable: list[int] = field(default_factory=list)  # trainable params per phase
    best_epoch: int | None = None  # early stopping's restored epoch


def _phases(cfg):
    """(phase number, learning rate, first epoch, end epoch, frozen-base?) per phase."""
    k, e = cfg.trainer.warmup_epochs, cfg.trainer.epochs
    if k <= 0:
        return [(1, cfg.lr, 0, e, False)]
    return [(1, cfg.trainer.warmup_lr, 0, k, True), (2, cfg.lr, k, k + e, False)]


def fit(model, base, cfg, splits, client, run_id: str, backup_dir: Path,
        block_regex: str | None, logged_until: int = -1) -> FitResult:
    """Trains the model through its phase(s); resumable from ``backup_dir``.

    Args:
        model, base: from ``model.build_model`` (compiled, strategy applied).
        cfg: the job config.
        splits: ``data.Splits``.
        client, run_id: where per-epoch metrics go.
        backup_dir: per-job folder for BackupAndRestore (kept until the job
            finishes, so a restart can find every phase's state).
        block_regex: the backbone's block pattern (for re-applying the strategy).
        logged_until: last epoch already logged for this run (resume).

    Returns:
        A FitResult.
    """
    from transferlab.model import param_counts

    result = FitResult()
    t = cfg.trainer
    num_classes = splits.num_classes
    for phase, lr, start, end, head_only in _phases(cfg):
        if head_only:
            base.trainable = False
        elif phase == 2:
            freeze.apply(base, cfg.freeze, block_regex)
        compile_model(model, cfg, num_classes, lr=lr, base=base)  # after any trainable change
        result.trainable.append(param_counts(model)[1])
        logger = MlflowEpochLogger(client, run_id, phase, logged_until)
        backup = EpochBackup(backup_dir / f"phase{phase}")
        resume_at = backup.restore(model)
        if resume_at >= end:
            continue  # this phase had finished before the interruption
        callbacks = [
            logger,  # first: a step is logged before its backup is written
            backup,
            keras.callbacks.LearningRateScheduler(
                lambda ep, _lr, lr=lr, start=start, end=end: lr_at(ep - start, lr, cfg.scheduler, end - start)),
        ]
        es = t.early_stopping
        if es.patience is not None and not head_only:
            stopper = keras.callbacks.EarlyStopping(monitor=es.monitor, patience=es.patience,
                                                    restore_best_weights=True, verbose=1)
            callbacks.append(stopper)
        t0 = time.perf_counter()
        history = model.fit(splits.train, validation_data=splits.validation,
                            initial_epoch=max(start, resume_at),
                            epochs=end, steps_per_epoch=t.steps_per_epoch,
                            validation_steps=t.validation_steps, callbacks=callbacks, verbose=t.verbose,
                            shuffle=False)  # the tf.data pipeline shuffles, with the seed
        result.seconds += time.perf_counter() - t0
        ran = len(history.history.get("loss", []))
        per_epoch = t.steps_per_epoch * t.batch_size if t.steps_per_epoch else splits.counts["train"]
        result.images += ran * per_epoch
        if logger.first_step is not None and not result.first_step_seconds:
            result.first_step_seconds = logger.first_step
        if es.patience is not None and not head_only and stopper.best_epoch is not None:
            result.best_epoch = stopper.best_epoch  # absolute: fit numbers epochs from `start`
    return result


def clear_backup(backup_dir: Path) -> None:
    """Removes a finished job's backups."""
    shutil.rmtree(backup_dir, ignore_errors=True)
