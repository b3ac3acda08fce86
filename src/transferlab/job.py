"""One job: data -> model -> freeze -> fit -> test, recorded as one MLflow run.

``run(cfg)`` is what ``run.py`` calls for every job of a sweep; it is plain
Python so tests call it directly. The config is validated before TensorFlow
is imported, so a typo fails in milliseconds.
"""

from __future__ import annotations

import os
import tempfile
import time
import traceback
from pathlib import Path

from omegaconf import DictConfig

from transferlab import pretrained, tracking
from transferlab.config import input_size
from transferlab.validate import validate


def dataset_path(cfg: DictConfig) -> Path:
    """The data folder of a job, generating the synthetic set when needed.

    Synthetic sets live in ``<data_dir>/synthetic/<classes>_n<images>_px<size>_seed<seed>``
    where ``<classes>`` is ``c<num_classes>`` (the first shapes) or the chosen
    ``dataset.classes`` joined by ``-`` (e.g. ``ring-stripes_h``).

    Raises:
        ConfigError: ``dataset.classes`` names an unknown shape, repeats one or has < 2.
    """
    d = cfg.dataset
    if d.name != "synthetic":
        return Path(d.path)
    from transferlab import synthetic

    classes = d.get("classes")
    if classes is not None:
        try:
            classes = synthetic.select_classes(classes)
        except ValueError as e:
            from transferlab.config import ConfigError

            raise ConfigError(f"dataset.classes: {e}. Fix: e.g. dataset.classes=[ring,stripes_h], "
                              "or dataset.classes=null for the first dataset.num_classes shapes.") from None
    which = "-".join(classes) if classes else f"c{d.num_classes}"
    out = Path(cfg.data_dir) / "synthetic" / (
        f"{which}_n{d.images_per_class}_px{d.source_size}_seed{d.seed}")
    return synthetic.generate(out, d.num_classes, d.images_per_class, d.source_size, d.seed,
                              classes=classes)


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
    # `run:latest:<experiment>` names different weights after each pretraining:
    # the run it resolves to is part of the job's identity (and recorded).
    weights_run = None
    if pretrained.kind(cfg.backbone.weights) == "run":
        weights_run = pretrained.resolve(cfg.backbone.weights, uri, cfg.backbone.name)[0].info.run_id
    chash = tracking.config_hash(cfg, extra={"weights_run": weights_run} if weights_run else None)
    parent = os.environ.get(tracking.ENV_PARENT)
    earlier = tracking.find_runs(c, exp_id, chash)
    finished = [r for r in earlier if r.info.status == "FINISHED"]
    if cfg.tracking.skip_finished and finished:
        if parent:
            c.set_tag(parent, f"skipped.{chash}", finished[0].info.run_id)
        print(f"[transferlab] skip: {tracking.run_name(cfg)} already FINISHED "
              f"as run {finished[0].info.run_id} (tracking.skip_finished=true)")
        return dict(finished[0].data.metrics, run_id=finished[0].info.run_id, skipped=True)

    tags = {
        "mlflow.runName": tracking.run_name(cfg),
        "transferlab.role": "job",
        "backbone": cfg.backbone.name,
        "freeze": tracking.freeze_label(cfg.freeze.strategy, cfg.freeze.n, cfg.freeze.layer),
        "config_hash": chash,
        "sweep_id": os.environ.get(tracking.ENV_SWEEP, "none"),
        "pid": str(os.getpid()),
    }
    if weights_run:
        tags["weights_run"] = weights_run
    if parent:
        tags["mlflow.parentRunId"] = parent
    if overrides:
        tags["hydra_overrides"] = " ".join(overrides)[:5000]
    if cfg.name:
        tags["experiment_preset"] = cfg.name
    backup_dir = tracking.backup_dir(cfg, chash)
    _preflight(cfg)  # layer names and weights file: fail before a run exists
    run_id, logged_until = _resume_or_create(c, exp_id, earlier, backup_dir, tags)
    try:
        if logged_until < 0:
            c.log_batch(run_id, params=_params(tracking.flat_params(cfg)))
            _log_data_report(c, run_id, info)
        metrics = _train_and_log(cfg, info, c, run_id, backup_dir, logged_until)
    except BaseException as e:  # KeyboardInterrupt too: never leave a run RUNNING
        c.set_tag(run_id, "error", f"{type(e).__name__}: {e}"[:5000])
        with tempfile.TemporaryDirectory() as tmp:
            p = Path(tmp, "traceback.txt")
            p.write_text(traceback.format_exc())
            c.log_artifact(run_id, str(p))
        c.set_terminated(run_id, "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
        raise
    from transferlab.backup import clear_backup

    clear_backup(backup_dir)
    c.set_terminated(run_id, "FINISHED")
    return dict(metrics, run_id=run_id, val_acc=_final_val_acc(c, run_id, metrics.get("best_epoch")))


def _final_val_acc(c, run_id: str, best_epoch) -> float:
    """Validation accuracy of the model the job ends with (the restored best epoch, if any)."""
    by_step = {m.step: m.value for m in c.get_metric_history(run_id, "val_acc")}
    if not by_step:
        return float("nan")
    return by_step.get(int(best_epoch), by_step[max(by_step)]) if best_epoch is not None else by_step[max(by_step)]


def _log_data_report(c, run_id: str, info) -> None:
    """What the scan left out or converted: counts as tags, the lists as artifacts."""
    c.set_tag(run_id, "skipped_files", str(len(info.skipped)))
    c.set_tag(run_id, "converted_files", str(len(info.converted)))
    if info.skipped:
        c.log_text(run_id, "\n".join(info.skipped) + "\n", "skipped_files.txt")
    if info.converted:
        c.log_text(run_id, "\n".join(info.converted) + "\n", "converted_files.txt")


def _preflight(cfg: DictConfig) -> None:
    """Checks what needs the built base, before a run is created.

    Builds the base (random init: 0.4-2.4 s from VGG19 to ConvNeXtXLarge on
    2 CPU cores; with a local weights file, that file, which must fit:
    PretrainedError) and plans the freeze against its real layer names
    (FreezeError: unknown layer, more blocks than the base has). ImageNet
    weights and run: specs are not fetched here: an offline machine still
    gets a FAILED run saying how to get them.
    """
    import keras

    from transferlab import backbones, freeze, pretrained

    w = cfg.backbone.weights
    if cfg.freeze.strategy not in ("from_layer", "last_blocks") and pretrained.kind(w) != "file":
        return  # validate() already checked everything else without building anything
    keras.backend.clear_session()
    base = backbones.build(cfg.backbone.name, input_size(cfg),
                           weights=w if pretrained.kind(w) == "file" else None)
    freeze.plan([layer.name for layer in base.layers], cfg.freeze.strategy, cfg.freeze.n,
                cfg.freeze.layer, backbones.spec(cfg.backbone.name).block_regex)
    del base
    keras.backend.clear_session()


def _resume_or_create(c, exp_id: str, earlier, backup_dir: Path, tags: dict) -> tuple[str, int]:
    """Picks up an interrupted run of this config, or creates a new run.

    A run left RUNNING (process killed) or KILLED (Ctrl-C) whose backups are
    on disk is resumed under the same run id: Keras' BackupAndRestore restores
    model and optimizer at the last completed epoch, and epochs already in
    MLflow are not logged again. Without backups it cannot be continued
    faithfully, so it is closed as FAILED and the job starts afresh.

    Returns:
        (run id, last epoch already logged or -1).
    """
    for r in earlier:
        if r.info.status not in ("RUNNING", "KILLED"):
            continue
        if backup_dir.is_dir():
            run_id = r.info.run_id
            hist = c.get_metric_history(run_id, "loss")
            logged = max((m.step for m in hist), default=-1)
            c.update_run(run_id, status="RUNNING")
            for k in ("mlflow.parentRunId", "sweep_id", "pid"):
                if k in tags:
                    c.set_tag(run_id, k, tags[k])
            c.set_tag(run_id, "resumed", f"after epoch {logged}")
            print(f"[transferlab] resume: {tags['mlflow.runName']} continues MLflow run {run_id} "
                  f"after epoch {logged}")
            return run_id, logged
        c.set_tag(r.info.run_id, "error", "interrupted before its first backup; started afresh")
        c.set_terminated(r.info.run_id, "FAILED")
    run_id = c.create_run(exp_id, tags=tags).info.run_id
    print(f"[transferlab] job {tags['mlflow.runName']} -> MLflow run {run_id}")
    return run_id, -1


def _params(flat: dict):
    from mlflow.entities import Param

    return [Param(k, str(v)) for k, v in flat.items()]


def _train_and_log(cfg: DictConfig, info, c, run_id: str, backup_dir: Path,
                   logged_until: int) -> dict:
    import keras
    from mlflow.entities import Metric

    from transferlab import artifacts, backbones, data, train
    from transferlab.model import build_model, calibrate_batchnorm, param_counts

    size = input_size(cfg)
    t0 = time.perf_counter()
    splits = data.load(info, size, cfg.trainer.batch_size, cfg.seed,
                       repeat_train=cfg.trainer.steps_per_epoch is not None)
    t_data = time.perf_counter() - t0
    keras.backend.clear_session()  # fresh graph and layer names per job
    t0 = time.perf_counter()
    strategy = distribution(cfg.trainer.strategy)
    c.set_tag(run_id, "strategy", f"{type(strategy).__name__} ({strategy.num_replicas_in_sync} replicas)")
    with strategy.scope():  # model, optimizer and every (re)compile live in the strategy
        model, base, plan = build_model(cfg, splits.num_classes)
        if cfg.backbone.weights is None:  # random init: give BatchNorm real statistics
            images = next(iter(splits.train.unbatch().batch(64).take(1)))[0]
            n_bn = calibrate_batchnorm(base, cfg.backbone.name, images)
            c.set_tag(run_id, "bn_calibrated", f"{n_bn} BatchNorm layers from {len(images)} train images")
        t_build = time.perf_counter() - t0
        total, trainable = param_counts(model)
        label = tracking.freeze_label(cfg.freeze.strategy, cfg.freeze.n, cfg.freeze.layer)
        print(f"[transferlab] {cfg.backbone.name} @{size}px, freeze={label}: {plan.description}; "
              f"params {total:,} total, {trainable:,} trainable")
        c.set_tag(run_id, "freeze_plan", plan.description)
        if cfg.trainer.warmup_epochs and logged_until < 0:  # phase-prefixed: no param rewritten
            c.log_batch(run_id, params=_params({
                "phase1.epochs": cfg.trainer.warmup_epochs, "phase1.lr": cfg.trainer.warmup_lr,
                "phase1.freeze": "all", "phase2.epochs": cfg.trainer.epochs, "phase2.lr": cfg.lr,
                "phase2.freeze": label}))

        fit = train.fit(model, base, cfg, splits, c, run_id, backup_dir,
                        backbones.spec(cfg.backbone.name).block_regex, logged_until)
    scores = artifacts.test_scores(model, splits)  # best weights if early-stopped
    test_loss, test_acc = scores.loss, scores.acc
    metrics = {
        "test_acc": float(test_acc), "test_loss": float(test_loss),
        "params_total": total, "params_trainable": fit.trainable[-1],
        "train_seconds": fit.seconds, "train_images_per_s": fit.images / max(fit.seconds, 1e-9),
        "build_seconds": t_build, "data_seconds": t_data,
        "first_step_seconds": fit.first_step_seconds,
    }
    if len(fit.trainable) > 1:
        metrics["phase1_params_trainable"] = fit.trainable[0]
    if fit.best_epoch is not None:
        metrics["best_epoch"] = fit.best_epoch
    metrics.update(artifacts.log_run_artifacts(cfg, model, splits, scores, c, run_id, plan.description))
    if cfg.tracking.log_model:
        artifacts.log_model(model, splits, tracking.tracking_uri(cfg), run_id)
    rss = _rss_mb()
    if rss is not None:  # memory of the job's process, to watch growth across a sweep
        metrics["process_rss_mb"] = rss
    now = int(time.time() * 1000)
    c.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])
    print(f"[transferlab] {tracking.run_name(cfg)}: test_acc={test_acc:.4f} test_loss={test_loss:.4f} "
          f"({fit.seconds:.1f} s training)")
    return metrics


def distribution(name: str):
    """``trainer.strategy``: ``default`` or ``mirrored`` (all local GPUs; the CPU where none)."""
    import tensorflow as tf

    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def _rss_mb() -> float | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return None
