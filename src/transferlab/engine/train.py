"""The fit loop of one job, plain Keras: phases, schedules, early stopping, resume.

One curve per job: epochs are numbered across phases (phase 1 = head only on
a frozen base, phase 2 = the chosen freezing strategy). ``EpochBackup``
(backup.py) keeps each phase's model and optimizer state on disk after every
epoch, so a killed job restarts from its last completed epoch. Logging is
not done here: the caller (the runner) hands in Keras callbacks per phase,
which run before the backup of each epoch is written.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import keras

from transferlab.engine.backup import EpochBackup, ResumableEarlyStopping
from transferlab.models import freeze
from transferlab.models.build import compile_model, param_counts


# On cached features a step is tiny (a head on 1,400 x 11,520 features: ~1 ms of compute)
# and Keras' per-step Python round trip dominated: 0.124 s per epoch with one step per
# call, 0.047 s with 44 (MobileNetV2@96 features, 2 cores). The weights come out
# bit-identical (checked for 1, 16, 32 and 44 steps per call; tests/test_speed_cuts.py).
FEATURE_STEPS_PER_EXECUTION = 32


class _FirstStep(keras.callbacks.Callback):
    """Times the first call of the train function (graph tracing included) of a phase:
    one step on images, up to ``FEATURE_STEPS_PER_EXECUTION`` on cached features."""

    def __init__(self):
        super().__init__()
        self.seconds: float | None = None
        self.at: float | None = None  # perf_counter() when the first step ended
        self._t0 = 0.0
        # Keras runs batch hooks synchronously, converting each step's logs to Python
        # floats (a device sync per step), unless every callback with one is async_safe.
        # This one only reads the clock, so Keras may call it from its thread pool.
        self.async_safe = True

    def on_train_begin(self, logs=None):
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        if self.seconds is None:
            self.at = time.perf_counter()
            self.seconds = self.at - self._t0


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
        # Per epoch as PyTorch's CosineAnnealingLR(T_max=epochs): the last epoch still
        # learns (t = span - 1); a span of epochs - 1 spent the last epoch at the floor (0).
        span = max(1, epochs - w)
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
    feature_cache: str = ""  # whether each phase trained on cached features, and why (not)
    # The last phase trained on cached features: its head model (the full model's own
    # layers after the cut) and the test split as features, for evaluate.test_scores.
    head: object = None
    test_features: object = None


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


def fit(model, base, cfg, splits, *, block_regex: str | None, backup_dir: Path | None = None,
        callbacks=None, feature_dir: Path | None = None,
        class_weight: dict[int, float] | None = None) -> FitResult:
    """Trains the model through its phase(s); resumable from ``backup_dir``.

    Each phase trains either the full model on images or, where
    ``runtime.feature_cache`` allows (see featcache.py), a head model that
    shares the full model's layers after the frozen cut, on cached features.
    Either way the full model ends up trained; ``FitResult.feature_cache``
    says which it was and why.

    Args:
        model, base: from ``models.build.build_model`` (compiled, strategy applied).
        cfg: the job config (``trainer``, ``freeze``, ``scheduler``, ``runtime``).
        splits: ``data.Splits``.
        block_regex: the backbone's block pattern (for re-applying the strategy).
        backup_dir: per-job folder for the per-epoch backups (kept until the job
            finishes, so a restart can find every phase's state); None: no backups.
        callbacks: ``callbacks(phase) -> list`` of Keras callbacks for that phase
            (e.g. the runner's per-epoch logger); they run before the backup.
        feature_dir: the frozen-feature cache folder (required unless
            ``runtime.feature_cache=off``).
        class_weight: Keras ``class_weight`` (label index -> loss weight), on
            images and cached features alike; None: every image weighs 1.

    Returns:
        A FitResult.

    Raises:
        FeatureCacheError: ``runtime.feature_cache=on`` where caching would
            change the result.
    """
    from transferlab.engine import featcache

    result = FitResult()
    t = cfg.trainer
    num_classes = splits.num_classes
    notes = []
    phases = _phases(cfg)
    for phase, lr, start, end, head_only in phases:
        # Only the last phase's features describe the final model (a later phase may train
        # layers an earlier phase had frozen before its cut).
        result.head = result.test_features = None
        if head_only:
            base.trainable = False
        elif phase == 2:
            freeze.apply(base, cfg.freeze, block_regex, random_init=cfg.backbone.weights is None)
        compile_model(model, cfg, num_classes, lr=lr, base=base)  # after any trainable change
        result.trainable.append(param_counts(model)[1])
        decision = featcache.decide(model, base, cfg, splits)
        if not decision.use and cfg.runtime.feature_cache == "on":
            raise featcache.FeatureCacheError(
                f"runtime.feature_cache=on, but cached features would change this job's result: "
                f"{decision.reason}. Fix: runtime.feature_cache=auto (caches only where the result "
                "stays the same) or off.")
        train_model = model
        if decision.use:  # the head model, sharing the full model's layers after the cut
            train_model = featcache.head_model(decision, model)
            # Never more than an epoch's steps: Keras' progress bar then showed "32/2".
            steps = t.steps_per_epoch or math.ceil(splits.counts["train"] / t.batch_size)
            compile_model(train_model, cfg, num_classes, lr=lr, base=decision.tail,
                          steps_per_execution=max(1, min(FEATURE_STEPS_PER_EXECUTION, steps)))
        timer = _FirstStep()
        es = t.early_stopping
        stopper = None
        if es.patience is not None and not head_only:
            stopper = ResumableEarlyStopping(monitor=es.monitor, patience=es.patience,
                                             restore_best_weights=True, verbose=1)
        backup = EpochBackup(backup_dir / f"phase{phase}", stopper) if backup_dir is not None else None
        resume_at = backup.restore(train_model) if backup is not None else 0
        if stopper is not None and backup is not None and backup.early_stopping:
            stopper.resume = backup.early_stopping  # best value, wait count, best weights
            if backup.early_stopping.get("stopped"):
                resume_at = end  # it had stopped early: the phase is over
        if resume_at >= end:
            # This phase had finished before the interruption (its last weights restored);
            # an early stop ends with the best epoch's weights, as fit would have left them.
            if stopper is not None and stopper.resume:
                if stopper.resume.get("best_weights") is not None:
                    train_model.set_weights(stopper.resume["best_weights"])
                result.best_epoch = int(stopper.resume["best_epoch"])
            continue
        t0 = time.perf_counter()
        if decision.use:
            prep = featcache.prepare(decision, model, cfg, splits, feature_dir)
            train_ds, val_ds, note = prep.train, prep.validation, prep.note
            result.feature_seconds += prep.seconds
            result.head, result.test_features = train_model, prep.test
        else:
            train_ds, val_ds, note = splits.train, splits.validation, f"off: {decision.reason}"
        notes.append(note if len(phases) == 1 else f"phase {phase}: {note}")
        result.feature_cache = "; ".join(notes)
        print(f"[transferlab] feature cache{'' if len(phases) == 1 else f' (phase {phase})'}: {note}")
        prebuild(train_model, train_ds)
        phase_callbacks = [
            timer,
            *(callbacks(phase) if callbacks else ()),  # before the backup: log, then save
            *([stopper] if stopper is not None else ()),  # its state of the epoch goes in the backup
            *([backup] if backup is not None else ()),
            keras.callbacks.LearningRateScheduler(
                lambda ep, _lr, lr=lr, start=start, end=end: lr_at(ep - start, lr, cfg.scheduler, end - start)),
        ]
        history = train_model.fit(train_ds, validation_data=val_ds,
                                  initial_epoch=max(start, resume_at),
                                  epochs=end, steps_per_epoch=t.steps_per_epoch,
                                  validation_steps=t.validation_steps, callbacks=phase_callbacks,
                                  verbose=cfg.runtime.verbose, class_weight=class_weight,
                                  shuffle=False)  # the tf.data pipeline shuffles, with the seed
        result.seconds += time.perf_counter() - t0
        ran = len(history.history.get("loss", []))
        per_epoch = t.steps_per_epoch * t.batch_size if t.steps_per_epoch else splits.counts["train"]
        result.images += ran * per_epoch
        if timer.seconds is not None and not result.first_step_seconds:
            result.first_step_seconds = timer.seconds
            result.first_step_at = timer.at
        if stopper is not None and stopper.best_epoch is not None:
            result.best_epoch = stopper.best_epoch  # absolute: fit numbers epochs from `start`
    return result
