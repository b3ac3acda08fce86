"""A job's training as the runner drives it: engine calls in, MLflow record out.

The order that makes a job's numbers a function of its config and seed alone:
a fresh Keras session, then the seed, then the data pipelines (their shuffle
is seeded), then the model. Before, the shuffle was built before the seed was
set, so a job's batches depended on what had run earlier in the same worker.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from transferlab import data
from transferlab.models.freeze import freeze_label
from transferlab.models.registry import input_size
from transferlab.runner import tracking


@dataclass
class Trained:
    """What ``train_and_log`` hands back: the final metrics, the model, its history."""

    metrics: dict
    model: object
    history: dict  # MLflow metric name -> per-epoch values (resumed epochs included)


def seed_everything(seed: int) -> None:
    """A fresh Keras session, then Python's, NumPy's, TensorFlow's and Keras' seeds.

    ``clear_session`` drops Keras' global seed generator and TF's op-seed
    counter too, so this comes first; everything random in a job (shuffle
    order, initial head weights, dropout, augmentation) is created after it.
    """
    import keras

    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)


def train_and_log(cfg: DictConfig, info, c, run_id: str, backup_dir: Path,
                  logged_until: int) -> Trained:
    """Loads the data, builds, trains and scores one job, logging to ``run_id``."""
    from mlflow.entities import Metric

    from transferlab.engine import latency, train
    from transferlab.engine.evaluate import test_scores
    from transferlab.models import registry
    from transferlab.engine.warmstart import calibrate_once
    from transferlab.models.build import batchnorm_mode, build_model, param_counts, speed_switches
    from transferlab.runner import artifacts
    from transferlab.runner.callbacks import MlflowEpochLogger

    size = input_size(cfg)
    seed_everything(cfg.seed)
    t0 = time.perf_counter()
    splits = data.load(info, size, cfg.trainer.batch_size, cfg.seed,
                       repeat_train=cfg.trainer.steps_per_epoch is not None,
                       memory_budget_mb=cfg.runtime.get("memory_budget_mb"),  # isolate.dispatch
                       progress=bool(cfg.runtime.verbose))
    c.set_tag(run_id, "image_store", splits.storage)
    t_data = time.perf_counter() - t0
    t0 = time.perf_counter()
    strategy = distribution(cfg.runtime.strategy)
    c.set_tag(run_id, "strategy", f"{type(strategy).__name__} ({strategy.num_replicas_in_sync} replicas)")
    _tag_runtime(speed_switches(cfg).tags, c, run_id)
    uri = tracking.tracking_uri(cfg)
    with strategy.scope():  # model, optimizer and every (re)compile live in the strategy
        model, base, plan = build_model(cfg, splits.num_classes, uri)
        if cfg.backbone.weights is None:  # random init: give BatchNorm real statistics
            images = next(iter(splits.train.unbatch().batch(64).take(1)))[0]
            n_bn, reused = calibrate_once(base, cfg.backbone.name, images)
            c.set_tag(run_id, "bn_calibrated", f"{n_bn} BatchNorm layers from {len(images)} train images"
                      + (" (the same statistics as an earlier job of this process: reused)" if reused else ""))
        t_build = time.perf_counter() - t0
        total, trainable = param_counts(model)
        label = freeze_label(cfg.freeze.strategy, cfg.freeze.n, cfg.freeze.layer)
        print(f"[transferlab] {cfg.backbone.name} @{size}px, freeze={label}: {plan.description}; "
              f"params {total:,} total, {trainable:,} trainable")
        c.set_tag(run_id, "freeze_plan", plan.description)
        c.set_tag(run_id, "batchnorm", f"freeze.bn={plan.bn}; {batchnorm_mode(model)}")
        if cfg.trainer.warmup_epochs and logged_until < 0:  # phase-prefixed: no param rewritten
            c.log_batch(run_id, params=params({
                "phase1.epochs": cfg.trainer.warmup_epochs, "phase1.lr": cfg.trainer.warmup_lr,
                "phase1.freeze": "all", "phase2.epochs": cfg.trainer.epochs, "phase2.lr": cfg.lr,
                "phase2.freeze": label}))
        feature_dir = (Path(cfg.runtime.feature_cache_dir) if cfg.runtime.feature_cache_dir
                       else tracking.default_store_dir(cfg) / "feature_cache")
        weights = _class_weights(cfg, info, c, run_id)
        fit = train.fit(model, base, cfg, splits, block_regex=registry.spec(cfg.backbone.name).block_regex,
                        backup_dir=backup_dir, feature_dir=feature_dir, class_weight=weights,
                        callbacks=lambda phase: [MlflowEpochLogger(c, run_id, phase, logged_until)])
    c.set_tag(run_id, "feature_cache", fit.feature_cache[:5000])
    t0 = time.perf_counter()
    scores = test_scores(model, splits, fit.head, fit.test_features)  # best weights if early-stopped
    t_test = time.perf_counter() - t0
    c.set_tag(run_id, "test_scored_on", "cached features (the trained head after the frozen cut)"
              if fit.head is not None else "images (the full model)")
    metrics = {
        "test_acc": scores.acc, "test_loss": scores.loss,
        "params_total": total, "params_trainable": fit.trainable[-1],
        "params_trainable_base": plan.params_trainable,  # the base's share (0: head only)
        "train_seconds": fit.seconds, "train_images_per_s": fit.images / max(fit.seconds, 1e-9),
        "build_seconds": t_build, "data_seconds": t_data,
        "first_step_seconds": fit.first_step_seconds, "test_seconds": t_test,
    }
    if fit.feature_seconds:
        metrics["feature_cache_seconds"] = fit.feature_seconds
    if len(fit.trainable) > 1:
        metrics["phase1_params_trainable"] = fit.trainable[0]
    if fit.best_epoch is not None:
        metrics["best_epoch"] = fit.best_epoch
    if cfg.runtime.latency_repeats:  # deployment cost of the trained classifier, warm, this machine
        t0 = time.perf_counter()
        measured, how = latency.inference_metrics_once(model, cfg.runtime.latency_repeats,
                                                       cfg.runtime.latency_batches)
        metrics.update(measured)
        metrics["latency_seconds"] = time.perf_counter() - t0
        c.set_tag(run_id, "latency", how)
    t0 = time.perf_counter()
    metrics.update(artifacts.log_run_artifacts(cfg, model, splits, scores, c, run_id, plan.description))
    if cfg.dataset.get("folds"):  # k-fold: out-of-fold predictions for the report's paired tests
        from transferlab.runner import splitlog

        splitlog.log_val_predictions(model, splits, info, c, run_id)
    metrics["artifacts_seconds"] = time.perf_counter() - t0
    if cfg.tracking.log_model:
        artifacts.log_model(model, splits, uri, run_id)
    rss = rss_mb()
    if rss is not None:  # memory of the job's process, to watch growth across a sweep
        metrics["process_rss_mb"] = rss
    now = int(time.time() * 1000)
    c.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])
    print(f"[transferlab] {tracking.run_name(cfg)}: test_acc={scores.acc:.4f} test_loss={scores.loss:.4f} "
          f"({fit.seconds:.1f} s training)")
    return Trained(metrics, model, artifacts.history(c, run_id, mlflow_names=True))


def _class_weights(cfg: DictConfig, info, c, run_id: str) -> dict[int, float] | None:
    """``trainer.class_weight=balanced``: the train split's weights, tagged ``class_weight``."""
    if cfg.trainer.get("class_weight") != "balanced":
        return None
    from transferlab.data.stats import class_weights

    weights = class_weights(info)
    c.set_tag(run_id, "class_weight", ("balanced: " + ", ".join(
        f"{name} {weights[k]:.4g}" for k, name in enumerate(info.class_names)))[:5000])
    return weights


def _tag_runtime(switch_tags: dict, c, run_id: str) -> None:
    """Tags what the speed switches became on this machine, and the thread share."""
    import tensorflow as tf

    tags = dict(switch_tags)
    # Set through the API or, before TF started, through TF_NUM_*_THREADS (isolate.py).
    intra = (tf.config.threading.get_intra_op_parallelism_threads()
             or int(os.environ.get("TF_NUM_INTRAOP_THREADS", 0)))
    inter = (tf.config.threading.get_inter_op_parallelism_threads()
             or int(os.environ.get("TF_NUM_INTEROP_THREADS", 0)))
    why = os.environ.get("TRANSFERLAB_THREADS_WHY", "TensorFlow's default")
    tags["threads"] = f"intra-op {intra or 'all cores'}, inter-op {inter or 'default'} ({why})"
    for k, v in tags.items():
        c.set_tag(run_id, k, v)


def params(flat: dict):
    """MLflow ``Param`` entities of a flat ``{key: value}`` dict."""
    from mlflow.entities import Param

    return [Param(k, str(v)) for k, v in flat.items()]


def distribution(name: str):
    """``runtime.strategy``: ``default`` or ``mirrored`` (all local GPUs; the CPU where none)."""
    import tensorflow as tf

    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def rss_mb() -> float | None:
    """Resident memory of this process in MB (Linux), or None."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return None
