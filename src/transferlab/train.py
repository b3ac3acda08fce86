"""The fit loop of one job: phases, per-epoch MLflow logging, resume, schedules.

One curve per run: epochs are numbered across phases (phase 1 = head only on
a frozen base, phase 2 = the chosen freezing strategy), and every per-epoch
metric is logged with ``step = epoch``. ``EpochBackup`` (backup.py) keeps each phase's
model and optimizer state on disk after every epoch, so a killed job restarts
from its last completed epoch; the MLflow logger skips epochs already logged,
so no step is ever logged twice.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import keras
from mlflow.entities import Metric

from transferlab import freeze
from transferlab.backup import EpochBackup
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
        self.first_step_at: float | None = None  # perf_counter() when the first step ended
        self._t0 = self._epoch_t0 = 0.0
        # Keras runs batch hooks synchronously, converting each step's logs to Python
        # floats (a device sync per step), unless every callback with one is async_safe.
        # This one only reads the clock, so Keras may call it from its thread pool.
        self.async_safe = True

    def on_train_begin(self, logs=None):
        self._t0 = time.perf_counter()

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_t0 = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        if self.first_step is None:
            self.first_step_at = time.perf_counter()
            self.first_step = self.first_step_at - self._t0

    def on_epoch_end(self, epoch, logs=None):
        if epoch <= self.logged_until:
            return
        now = int(time.time() * 1000)
        values = {METRIC_NAMES[k]: float(v) for k, v in (logs or {}).items() if k in METRIC_NAMES}
        values["lr"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        values["phase"] = float(self.phase)
        values["epoch_seconds"] = time.perf_counter() - self._epoch_t0  # training + validation
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, epoch) for k, v in values.items()])


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

    seconds: float = 0.0  # fit time, feature extraction included
    images: int = 0
    first_step_seconds: float = 0.0
    first_step_at: float | None = None  # perf_counter() at the end of the first step
    feature_seconds: float = 0.0  # building or loading cached features
    trainable: list[int] = field(default_factory=list)  # trainable params per phase
    best_epoch: int | None = None  # early stopping's restored epoch


def _phases(cfg):
    """(phase number, learning rate, first epoch, end epoch, frozen-base?) per phase."""
    k, e = cfg.trainer.warmup_epochs, cfg.trainer.epochs
    if k <= 0:
        return [(1, cfg.lr, 0, e, False)]
    return [(1, cfg.trainer.warmup_lr, 0, k, True), (2, cfg.lr, k, k + e, False)]


def prebuild(model, dataset) -> None:
    """Creates the metric, loss and optimizer variables before ``fit`` traces its step.

    Keras 3 (TF backend, no distribution strategy) creates them lazily inside
    the first trace of the train step; ``tf.function`` then traces the whole
    step a second time, because variables were created during the first
    (tensorflow/python/eager/polymorphic_function/polymorphic_function.py,
    ``_initialize``). Building them beforehand, as Keras itself does under a
    distribution strategy, halves the Python-side tracing of every job's
    first step. Numerically a no-op: the same variables, the same initial values.
    """
    try:
        with model.distribute_strategy.scope():
            model._symbolic_build(data_batch=dataset.element_spec)  # noqa: SLF001
    except Exception as e:  # private API: never let it break a job, only cost the retrace
        print(f"[transferlab] note: could not pre-build the train step ({type(e).__name__}: {e})")


def _tag_switches(cfg, client, run_id: str) -> None:
    """Tags what the speed switches became on this machine, and the thread share."""
    import tensorflow as tf

    from transferlab.model import speed_switches

    tags = dict(speed_switches(cfg).tags)
    # Set through the API or, before TF started, through TF_NUM_*_THREADS (isolate.py).
    intra = (tf.config.threading.get_intra_op_parallelism_threads()
             or int(os.environ.get("TF_NUM_INTRAOP_THREADS", 0)))
    inter = (tf.config.threading.get_inter_op_parallelism_threads()
             or int(os.environ.get("TF_NUM_INTEROP_THREADS", 0)))
    why = os.environ.get("TRANSFERLAB_THREADS_WHY", "TensorFlow's default")
    tags["threads"] = f"intra-op {intra or 'all cores'}, inter-op {inter or 'default'} ({why})"
    for k, v in tags.items():
        client.set_tag(run_id, k, v)


def fit(model, base, cfg, splits, client, run_id: str, backup_dir: Path,
        block_regex: str | None, logged_until: int = -1) -> FitResult:
    """Trains the model through its phase(s); resumable from ``backup_dir``.

    Each phase trains either the full model on images or, where
    ``trainer.feature_cache`` allows (see featcache.py), a head model that
    shares the full model's layers after the frozen cut, on cached features.
    Either way the full model ends up trained; the tag ``feature_cache`` says
    which it was and why.

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
    from transferlab import featcache
    from transferlab.model import param_counts

    result = FitResult()
    t = cfg.trainer
    num_classes = splits.num_classes
    _tag_switches(cfg, client, run_id)
    notes = []
    phases = _phases(cfg)
    for phase, lr, start, end, head_only in phases:
        if head_only:
            base.trainable = False
        elif phase == 2:
            freeze.apply(base, cfg.freeze, block_regex)
        compile_model(model, cfg, num_classes, lr=lr, base=base)  # after any trainable change
        result.trainable.append(param_counts(model)[1])
        decision = featcache.decide(model, base, cfg, splits)
        if not decision.use and t.get("feature_cache") == "on":
            raise featcache.FeatureCacheError(
                f"trainer.feature_cache=on, but cached features would change this job's result: "
                f"{decision.reason}. Fix: trainer.feature_cache=auto (caches only where the result "
                "stays the same) or off.")
        train_model = model
        if decision.use:  # the head model, sharing the full model's layers after the cut
            train_model = featcache.head_model(decision, model)
            compile_model(train_model, cfg, num_classes, lr=lr, base=decision.tail)
        logger = MlflowEpochLogger(client, run_id, phase, logged_until)
        backup = EpochBackup(backup_dir / f"phase{phase}")
        resume_at = backup.restore(train_model)
        if resume_at >= end:
            continue  # this phase had finished before the interruption (its weights restored)
        t0 = time.perf_counter()
        if decision.use:
            prep = featcache.prepare(decision, model, cfg, splits)
            train_ds, val_ds, note = prep.train, prep.validation, prep.note
            result.feature_seconds += prep.seconds
        else:
            train_ds, val_ds, note = splits.train, splits.validation, f"off: {decision.reason}"
        notes.append(note if len(phases) == 1 else f"phase {phase}: {note}")
        client.set_tag(run_id, "feature_cache", "; ".join(notes)[:5000])
        print(f"[transferlab] feature cache{'' if len(phases) == 1 else f' (phase {phase})'}: {note}")
        prebuild(train_model, train_ds)
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
        history = train_model.fit(train_ds, validation_data=val_ds,
                                  initial_epoch=max(start, resume_at),
                                  epochs=end, steps_per_epoch=t.steps_per_epoch,
                                  validation_steps=t.validation_steps, callbacks=callbacks,
                                  verbose=t.verbose,
                                  shuffle=False)  # the tf.data pipeline shuffles, with the seed
        result.seconds += time.perf_counter() - t0
        ran = len(history.history.get("loss", []))
        per_epoch = t.steps_per_epoch * t.batch_size if t.steps_per_epoch else splits.counts["train"]
        result.images += ran * per_epoch
        if logger.first_step is not None and not result.first_step_seconds:
            result.first_step_seconds = logger.first_step
            result.first_step_at = logger.first_step_at
        if es.patience is not None and not head_only and stopper.best_epoch is not None:
            result.best_epoch = stopper.best_epoch  # absolute: fit numbers epochs from `start`
    if result.feature_seconds:
        client.log_metric(run_id, "feature_cache_seconds", result.feature_seconds)
    return result
