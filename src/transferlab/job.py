"""One job: data -> model -> freeze -> fit -> test, recorded as one MLflow run.

``run(cfg)`` is what ``run.py`` calls for every job of a sweep; it is plain
Python so tests call it directly. The config is validated before TensorFlow
is imported, so a typo fails in milliseconds.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import traceback
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from transferlab import tracking
from transferlab.config import input_size, validate


def dataset_path(cfg: DictConfig) -> Path:
    """The data folder of a job, generating the synthetic set when needed."""
    d = cfg.dataset
    if d.name != "synthetic":
        return Path(d.path)
    from transferlab import synthetic

    out = Path(cfg.data_dir) / "synthetic" / (
        f"c{d.num_classes}_n{d.images_per_class}_px{d.source_size}_seed{d.seed}")
    return synthetic.generate(out, d.num_classes, d.images_per_class, d.source_size, d.seed)


def run(cfg: DictConfig, overrides: list[str] | None = None) -> dict:
    """Trains and evaluates one configuration and logs it to MLflow.

    Args:
        cfg: a composed job config (``transferlab.config.Config`` schema).
        overrides: the job's Hydra overrides, kept as a tag so a failed job
            can be re-run by hand.

    Returns:
        The final metrics (``test_acc``, ``test_loss``, ...), or the metrics of
        the earlier FINISHED run when ``tracking.skip_finished`` skips the job.

    Raises:
        ConfigError, DataError, WeightsUnavailable: user errors, after the run
        (if one was started) is marked FAILED with the message as a tag.
    """
    validate(cfg)
    from transferlab import data  # cheap; TF is imported inside its functions

    info = data.scan(dataset_path(cfg))  # data errors before a run is created
    uri = tracking.tracking_uri(cfg)
    c = tracking.client(uri)
    exp_id = tracking.ensure_experiment(cfg)
    chash = tracking.config_hash(cfg)
    parent = os.environ.get(tracking.ENV_PARENT)
    if cfg.tracking.skip_finished:
        done = tracking.find_runs(c, exp_id, chash, "FINISHED")
        if done:
            if parent:
                c.set_tag(parent, f"skipped.{chash}", done[0].info.run_id)
            print(f"[transferlab] skip: {tracking.run_name(cfg)} already FINISHED "
                  f"as run {done[0].info.run_id} (tracking.skip_finished=true)")
            return dict(done[0].data.metrics, run_id=done[0].info.run_id, skipped=True)

    tags = {
        "mlflow.runName": tracking.run_name(cfg),
        "transferlab.role": "job",
        "backbone": cfg.backbone.name,
        "freeze": tracking.freeze_label(cfg.freeze.strategy, cfg.freeze.n, cfg.freeze.layer),
        "config_hash": chash,
        "sweep_id": os.environ.get(tracking.ENV_SWEEP, "none"),
        "pid": str(os.getpid()),
    }
    if parent:
        tags["mlflow.parentRunId"] = parent
    if overrides:
        tags["hydra_overrides"] = " ".join(overrides)[:5000]
    if cfg.name:
        tags["experiment_preset"] = cfg.name
    run_id = c.create_run(exp_id, tags=tags).info.run_id
    print(f"[transferlab] job {tags['mlflow.runName']} -> MLflow run {run_id}")
    try:
        c.log_batch(run_id, params=_params(tracking.flat_params(cfg)))
        metrics = _train_and_log(cfg, info, c, run_id)
    except BaseException as e:  # KeyboardInterrupt too: never leave a run RUNNING
        c.set_tag(run_id, "error", f"{type(e).__name__}: {e}"[:5000])
        with tempfile.TemporaryDirectory() as tmp:
            p = Path(tmp, "traceback.txt")
            p.write_text(traceback.format_exc())
            c.log_artifact(run_id, str(p))
        c.set_terminated(run_id, "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
        raise
    c.set_terminated(run_id, "FINISHED")
    return dict(metrics, run_id=run_id)


def _params(flat: dict[str, str]):
    from mlflow.entities import Param

    return [Param(k, v) for k, v in flat.items()]


def _train_and_log(cfg: DictConfig, info, c, run_id: str) -> dict:
    import keras
    import numpy as np
    from mlflow.entities import Metric

    from transferlab import data, plots
    from transferlab.model import build_model, calibrate_batchnorm, param_counts

    size = input_size(cfg)
    t0 = time.perf_counter()
    splits = data.load(info, size, cfg.trainer.batch_size, cfg.seed,
                       repeat_train=cfg.trainer.steps_per_epoch is not None)
    t_data = time.perf_counter() - t0
    keras.backend.clear_session()  # fresh graph and layer names per job
    t0 = time.perf_counter()
    model, base, plan = build_model(cfg, splits.num_classes)
    if cfg.backbone.weights is None:  # random init: give BatchNorm real statistics
        images = next(iter(splits.train.unbatch().batch(64).take(1)))[0]
        n_bn = calibrate_batchnorm(base, cfg.backbone.name, images)
        c.set_tag(run_id, "bn_calibrated", f"{n_bn} BatchNorm layers from {len(images)} train images")
    t_build = time.perf_counter() - t0
    total, trainable = param_counts(model)
    print(f"[transferlab] {cfg.backbone.name} @{size}px, freeze={tracking.freeze_label(cfg.freeze.strategy, cfg.freeze.n, cfg.freeze.layer)}: "
          f"{plan.description}; params {total:,} total, {trainable:,} trainable")
    c.set_tag(run_id, "freeze_plan", plan.description)

    class EpochLogger(keras.callbacks.Callback):
        """Per-epoch metrics with step = epoch, under the contract's names."""

        first_step = None

        def on_train_batch_end(self, batch, logs=None):
            if self.first_step is None:
                self.first_step = time.perf_counter() - t_fit

        def on_epoch_end(self, epoch, logs=None):
            now = int(time.time() * 1000)
            names = {"accuracy": "acc", "val_accuracy": "val_acc", "loss": "loss", "val_loss": "val_loss"}
            c.log_batch(run_id, metrics=[Metric(names[k], float(v), now, epoch)
                                         for k, v in (logs or {}).items() if k in names])

    logger = EpochLogger()
    t_fit = time.perf_counter()
    history = model.fit(
        splits.train, validation_data=splits.validation, epochs=cfg.trainer.epochs,
        steps_per_epoch=cfg.trainer.steps_per_epoch, validation_steps=cfg.trainer.validation_steps,
        callbacks=[logger], verbose=cfg.trainer.verbose)
    train_seconds = time.perf_counter() - t_fit
    steps = cfg.trainer.steps_per_epoch
    seen = (steps * cfg.trainer.batch_size if steps else splits.counts["train"]) * cfg.trainer.epochs

    test_loss, test_acc = model.evaluate(splits.test, verbose=0)
    probs = model.predict(splits.test, verbose=0)
    if splits.num_classes == 2:
        probs = np.concatenate([1.0 - probs, probs], axis=1)
    true = np.concatenate([np.asarray(y) for _, y in splits.test])
    true = true[:, 0].astype(int) if splits.num_classes == 2 else true.argmax(axis=1)
    pred = probs.argmax(axis=1)

    metrics = {
        "test_acc": float(test_acc), "test_loss": float(test_loss),
        "params_total": total, "params_trainable": trainable,
        "train_seconds": train_seconds, "train_images_per_s": seen / train_seconds,
        "test_images": len(true), "build_seconds": t_build, "data_seconds": t_data,
        "first_step_seconds": logger.first_step or 0.0,
    }
    rss = _rss_mb()
    if rss is not None:  # memory of the job's process, to watch growth across a sweep
        metrics["process_rss_mb"] = rss
    now = int(time.time() * 1000)
    c.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])

    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        (t / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        (t / "classes.json").write_text(json.dumps(splits.class_names))
        lines: list[str] = []
        model.summary(print_fn=lambda s, **_: lines.append(s), expand_nested=False)
        (t / "model_summary.txt").write_text("\n".join(lines) + f"\n\nfreeze: {plan.description}\n")
        _write_predictions(t / "test_predictions.csv", splits.test_paths, true, pred, probs)
        plots.curves(history.history, t / "curves.png", title=tracking.run_name(cfg))
        plots.confusion(true, pred, splits.class_names, t / "confusion_matrix.png")
        c.log_artifacts(run_id, str(t))
    print(f"[transferlab] {tracking.run_name(cfg)}: test_acc={test_acc:.4f} test_loss={test_loss:.4f} "
          f"({train_seconds:.1f} s training)")
    return metrics


def _rss_mb() -> float | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return None


def _write_predictions(path: Path, paths, true, pred, probs) -> None:
    import csv

    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "true", "pred", "correct"] + [f"p_{k}" for k in range(probs.shape[1])])
        for p, t, q, row in zip(paths, true, pred, probs):
            w.writerow([p, int(t), int(q), int(t == q)] + [f"{v:.6f}" for v in row])
