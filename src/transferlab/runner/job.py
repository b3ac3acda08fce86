"""One job as one MLflow run: identity (hash), skip, resume, then the engine, then the record.

``run(cfg)`` is what ``run.py``, ``transferlab run`` and ``transferlab.train``
call for every job; it is plain Python so tests call it directly. The config
is validated and the data scanned before TensorFlow is imported, so a typo or
a bad folder fails in milliseconds. The ML itself (build, freeze, fit, score)
is the engine's and the models' and knows nothing of MLflow: this module hands
it the per-epoch logger as a Keras callback and records what comes back.
"""

from __future__ import annotations

import os
import tempfile
import traceback
from pathlib import Path

from omegaconf import DictConfig

from transferlab import data
from transferlab.engine import diskfull
from transferlab.models import pretrained
from transferlab.models.freeze import freeze_label
from transferlab.models.registry import input_size
from transferlab.runner import datarecord, lease, splitlog, tracking
from transferlab.runner.tracking import backbone_label
from transferlab.runner.record import distribution, params, train_and_log
from transferlab.runner.validate import validate


# How a random base trains; part of a random-init job's hash, so a record made before
# this rule (the base's BatchNorm kept in inference mode) is never taken for its result.
RANDOM_INIT_RULE = "batchnorm as plain Keras when trained; calibration without dropout"


def identity(cfg: DictConfig, info: data.DatasetInfo, uri: str) -> tuple[str, dict]:
    """The job's config hash and the run-time values that entered it.

    Returns:
        ``(hash, extra)``: ``extra`` holds ``data`` (the scanned files'
        fingerprint), ``weights_run`` (the run ``run:latest:...`` resolved to),
        ``applied`` (GPU switches that take effect on this machine) and, for
        a random base, ``random_init`` (how it trains).
    """
    extra: dict = {"data": info.fingerprint()}
    if cfg.backbone.weights is None:  # results of earlier code (BatchNorm frozen) are not these
        extra["random_init"] = RANDOM_INIT_RULE
    if pretrained.kind(cfg.backbone.weights) == "run":
        extra["weights_run"] = pretrained.resolve(cfg.backbone.weights, uri, cfg.backbone.name,
                                                  label=backbone_label(cfg))[0].info.run_id
    applied = applied_switches(cfg)
    if applied:
        extra["applied"] = applied
    return tracking.config_hash(cfg, extra), extra


def applied_switches(cfg: DictConfig) -> dict:
    """The runtime switches that change the numbers here: none on a CPU-only host.

    Mixed precision, forced XLA and a multi-replica strategy change a job's
    numbers where they apply (a GPU, several GPUs); skipped on a CPU they do
    not, so they stay out of the hash. TensorFlow is imported only when one of
    them is asked for.
    """
    r = cfg.runtime
    if r.precision == "float32" and r.jit_compile is None and r.strategy == "default":
        return {}
    from transferlab.models.build import speed_switches

    sw = speed_switches(cfg)
    out = {}
    if sw.policy != "float32":
        out["precision"] = sw.policy
    if sw.gpu and sw.jit != "auto":
        out["jit_compile"] = bool(sw.jit)
    if r.strategy == "mirrored":
        n = distribution("mirrored").num_replicas_in_sync
        if n > 1:
            out["strategy"] = f"mirrored x{n}"
    return out


def run(cfg: DictConfig, overrides: list[str] | None = None) -> dict:
    """Trains and evaluates one configuration and logs it to MLflow.

    Args:
        cfg: a composed job config (``transferlab.config.Config`` schema).
        overrides: the job's Hydra overrides, kept as a tag so a failed job
            can be re-run by hand.

    Returns:
        The final metrics (``test_acc``, ``test_loss``, ...) with ``run_id``,
        or the metrics of the earlier FINISHED run (``skipped=True``) when
        ``tracking.skip_finished`` skips the job. In-process callers also get
        ``model`` (the trained ``keras.Model``) and ``history`` (per-epoch
        metrics) under the keys of the same names.

    Raises:
        ConfigError, DataError, WeightsUnavailable: user errors, after the run
        (if one was started) is marked FAILED with the message as a tag.
    """
    validate(cfg)
    prepared = data.prepare(cfg)  # data errors (and dataset.duplicates=error) before a run exists
    info = prepared.info
    uri = tracking.tracking_uri(cfg)
    if os.environ.get(tracking.ENV_PARENT):
        tracking.wait_reachable(uri)  # the sweep reached it: a restart is waited for
    c = tracking.client(uri)
    exp_id = tracking.ensure_experiment(cfg)
    chash, extra = identity(cfg, info, uri)
    parent = os.environ.get(tracking.ENV_PARENT)
    earlier = tracking.find_runs(c, exp_id, chash)
    finished = [r for r in earlier if r.info.status == "FINISHED"]
    if cfg.tracking.skip_finished and finished:
        return _skip_finished(cfg, c, parent, chash, finished[0])

    tags = {
        "mlflow.runName": tracking.run_name(cfg),
        "transferlab.role": "job",
        "backbone": cfg.backbone.name,
        "backbone_label": backbone_label(cfg),  # with its constructor options: mobilenet-a0.25
        "freeze": freeze_label(cfg.freeze.strategy, cfg.freeze.n, cfg.freeze.layer),
        "config_hash": chash,
        "data_fingerprint": extra["data"],
        "dataset_id": info.dataset_id(),
        "sweep_id": os.environ.get(tracking.ENV_SWEEP, "none"),
        "pid": str(os.getpid()),
    }
    if "weights_run" in extra:
        tags["weights_run"] = extra["weights_run"]
    if parent:
        tags["mlflow.parentRunId"] = parent
    if overrides:
        tags["hydra_overrides"] = " ".join(overrides)[:5000]
    if cfg.name:
        tags["experiment_preset"] = cfg.name
    backup_dir = tracking.backup_dir(cfg, chash)
    _preflight(cfg)  # layer names and weights file: fail before a run exists
    claimed = _claim(c, uri, exp_id, chash, backup_dir, tags, cfg)
    if isinstance(claimed, dict):
        return claimed  # FINISHED meanwhile, or another live process runs it
    run_id, logged_until = claimed
    try:
        if logged_until < 0:
            have = c.get_run(run_id).data.params  # a run taken over may hold them already
            c.log_batch(run_id, params=params({k: v for k, v in tracking.flat_params(cfg).items()
                                               if k not in have}))
            _log_data_report(c, run_id, info)
            splitlog.log_split(c, run_id, info, cfg)
            datarecord.log_dataset(c, run_id, prepared)

        out = train_and_log(cfg, info, c, run_id, backup_dir, logged_until)
    except BaseException as e:  # KeyboardInterrupt too: never leave a run RUNNING
        if tracking.is_unreachable(e):
            # Every request was retried for minutes (tracking.Patient): nothing can be recorded now.
            # The run stays open; its owner gone, the next run of the command closes it and
            # resumes it from its last backup.
            lease.HEARTBEAT.remove(run_id)
            raise tracking.TrackingUnreachable(
                f"the tracking server {uri} stopped answering and did not come back within "
                f"{tracking.wait_seconds():.0f} s ({tracking.ENV_WAIT}). Nothing is lost: run "
                f"{run_id} resumes from its last completed epoch when the same command runs "
                "again once the server is back.") from e
        c.set_tag(run_id, "error", f"{type(e).__name__}: {e}"[:5000])
        full = diskfull.is_full(e)
        if not full:  # with the disk full, the traceback would not fit either
            with tempfile.TemporaryDirectory() as tmp:
                p = Path(tmp, "traceback.txt")
                p.write_text(traceback.format_exc())
                c.log_artifact(run_id, str(p))
        # KILLED: resumable by the next run of the command (Ctrl-C; a full disk, once freed)
        c.set_terminated(run_id, "KILLED" if isinstance(e, KeyboardInterrupt) or full else "FAILED")
        lease.HEARTBEAT.remove(run_id)
        raise
    from transferlab.engine.backup import clear_backup

    clear_backup(backup_dir)
    c.set_terminated(run_id, "FINISHED")
    lease.HEARTBEAT.remove(run_id)
    metrics = out.metrics
    return dict(metrics, run_id=run_id, val_acc=final_val_acc(c, run_id, metrics.get("best_epoch")),
                model=out.model, history=out.history)


def _skip_finished(cfg, c, parent: str | None, chash: str, run) -> dict:
    if parent and run.data.tags.get("mlflow.parentRunId") != parent:
        c.set_tag(parent, f"skipped.{chash}", run.info.run_id)  # a twin in this sweep is not
    print(f"[transferlab] skip: {tracking.run_name(cfg)} already FINISHED on the same data "
          f"as run {run.info.run_id} (tracking.skip_finished=true)")
    return dict(run.data.metrics, run_id=run.info.run_id, skipped=True)


def _running_elsewhere(cfg, c, parent: str | None, chash: str, run, why: str) -> dict:
    """Another live process runs this config: leave it to it, say who."""
    owner = run.data.tags.get(lease.OWNER, "?")
    host, _, pid = owner.rpartition(":")
    where = f"host {host}, pid {pid}, MLflow run {run.info.run_id}"
    if parent and run.data.tags.get("mlflow.parentRunId") != parent:
        c.set_tag(parent, f"elsewhere.{chash}", f"{tracking.run_name(cfg)} ({where})")
    print(f"[transferlab] skip: {tracking.run_name(cfg)} is running in another process "
          f"({where}; {why}); this one leaves it to it")
    return dict(run_id=run.info.run_id, skipped=True, running_elsewhere=owner, val_acc=float("nan"))


# Without a lock (a tracking server), two claims of one job settle by re-reading after this long.
CLAIM_SETTLE_SECONDS = 1.0


def _claim(c, uri: str, exp_id: str, chash: str, backup_dir: Path, tags: dict, cfg):
    """Takes this job's run: an interrupted one whose owner is dead, or a new one.

    Under ``tracking.claim_lock`` (SQLite store: one process at a time): the
    store's runs of dead owners are closed first (lease.reap), then a RUNNING
    run of this config whose owner lives means another process runs the job:
    it is skipped here. A tracking server offers no lock: each claimant then
    re-reads after ``CLAIM_SETTLE_SECONDS``; of two that took over one run the
    last writer of its owner tag keeps it, of two new runs the older one.

    Returns:
        ``(run id, last epoch already logged or -1)``, or the job's result
        when it is not this process's to run.
    """
    with tracking.claim_lock(uri) as locked:
        lease.reap(c)
        earlier = tracking.find_runs(c, exp_id, chash)
        finished = [r for r in earlier if r.info.status == "FINISHED"]
        parent = tags.get("mlflow.parentRunId")
        if cfg.tracking.skip_finished and finished:
            return _skip_finished(cfg, c, parent, chash, finished[0])
        for r in earlier:
            if r.info.status == "RUNNING":
                alive, why = lease.owner_alive(r.data.tags, run_id=r.info.run_id)
                if alive:
                    return _running_elsewhere(cfg, c, parent, chash, r, why)
        run_id, logged_until = _resume_or_create(c, exp_id, earlier, backup_dir, tags)
    lease.HEARTBEAT.add(uri, run_id)
    if locked:
        return run_id, logged_until
    import time

    time.sleep(CLAIM_SETTLE_SECONDS)
    me = c.get_run(run_id)
    rivals = [r for r in tracking.find_runs(c, exp_id, chash, status="RUNNING")
              if r.info.run_id != run_id and lease.owner_alive(r.data.tags, run_id=r.info.run_id)[0]]
    first = min([me, *rivals], key=lambda r: (r.info.start_time, r.info.run_id))
    if lease.mine(me.data.tags) and first is me:
        return run_id, logged_until
    lease.HEARTBEAT.remove(run_id)
    if lease.mine(me.data.tags):  # a new run of ours that lost to an older one: not a job
        lease.close(c, me, f"another process claimed this job first (MLflow run {first.info.run_id})")
        c.delete_run(run_id)
        me = first
    return _running_elsewhere(cfg, c, parent, chash, me, "it claimed the job first")


def final_val_acc(c, run_id: str, best_epoch) -> float:
    """Validation accuracy of the model the job ends with (the restored best epoch, if any)."""
    by_step = {m.step: m.value for m in c.get_metric_history(run_id, "val_acc")}
    if not by_step:
        return float("nan")
    return by_step.get(int(best_epoch), by_step[max(by_step)]) if best_epoch is not None else by_step[max(by_step)]


def _log_data_report(c, run_id: str, info) -> None:
    """What the scan left out or turned upright: counts as tags, the lists as artifacts."""
    c.set_tag(run_id, "skipped_files", str(len(info.skipped)))
    rotated = info.rotated()
    c.set_tag(run_id, "exif_rotated", str(len(rotated)))
    if info.skipped:
        c.log_text(run_id, "\n".join(info.skipped) + "\n", "skipped_files.txt")
    if rotated:
        c.log_text(run_id, "\n".join(rotated) + "\n", "exif_rotated_files.txt")


_PLANNED: set[tuple] = set()  # freeze plans this process has checked on a built base


def _preflight(cfg: DictConfig) -> None:
    """Checks what needs the built base, before a run is created.

    Builds the base (random init: 0.4-2.4 s from VGG19 to ConvNeXtXLarge on
    2 CPU cores; with a local weights file, that file, which must fit:
    PretrainedError), in Keras' ImageNet graph as every route builds it (so
    the plan's layers are the job's), and applies the freeze plan to its real
    layers (FreezeError: unknown layer, more blocks than the base has, or a
    plan that trains no parameter of the base, such as MobileNetV2's last 2
    layers under ``freeze.bn=frozen``). Which weights train does not depend
    on their values, so a plan checked once is not built again in this
    process. ImageNet weights and run: specs are not fetched here: an offline
    machine still gets a FAILED run saying how to get them.
    """
    from transferlab.models.freezeparams import intends_training

    w, f = cfg.backbone.weights, cfg.freeze
    file = pretrained.kind(w) == "file"
    key = (cfg.backbone.name, input_size(cfg), f.strategy, f.n, f.layer, f.bn, w is None)
    if not file and (not intends_training(f) or f.strategy == "none" or key in _PLANNED):
        return  # validate() already checked everything else without building anything
    import keras

    from transferlab.models import freeze, registry, weights

    keras.backend.clear_session()
    base = weights.build(cfg.backbone.name, input_size(cfg), weights=w if file else None,
                         options=cfg.backbone)
    spec = registry.spec(cfg.backbone.name)
    freeze.apply(base, f, spec.block_regex, random_init=w is None, label=spec.constructor)
    _PLANNED.add(key)
    del base
    keras.backend.clear_session()


def _resume_or_create(c, exp_id: str, earlier, backup_dir: Path, tags: dict) -> tuple[str, int]:
    """Takes over the newest interrupted run of this config, or creates a new run.

    An interrupted run is RUNNING with a dead owner (killed: the caller has
    checked it) or KILLED (Ctrl-C, or closed by lease.reap). It continues
    under the same run id: from its last completed epoch where its backups
    are on disk (model and optimizer restored), else from epoch 0 (killed
    before its first backup: the seed alone fixes the numbers, so the epochs
    already logged are trained again, identically, and not logged twice).

    Returns:
        (run id, last epoch already logged or -1).
    """
    from mlflow.entities import RunTag

    for r in earlier:
        if r.info.status not in ("RUNNING", "KILLED"):
            continue
        run_id = r.info.run_id
        hist = c.get_metric_history(run_id, "loss")
        logged = max((m.step for m in hist), default=-1)
        backed_up = any(backup_dir.glob("phase*/state.json"))
        was = r.data.tags.get(lease.OWNER, "an unrecorded owner")
        if backed_up:
            how = f"after epoch {logged}"
        else:
            how = (f"from epoch 0, no backup on disk (epochs 0-{logged} are trained again, not "
                   "logged twice)" if logged >= 0 else "from epoch 0 (no epoch had been logged)")
        new = {**lease.owner_tags(), "resumed": how, "resumed_from_owner": was}
        new.update({k: tags[k] for k in ("mlflow.parentRunId", "sweep_id", "pid") if k in tags})
        c.log_batch(run_id, tags=[RunTag(k, v) for k, v in new.items()])  # owner first, then status
        c.update_run(run_id, status="RUNNING")
        print(f"[transferlab] resume: {tags['mlflow.runName']} continues MLflow run {run_id} {how}")
        return run_id, logged
    from transferlab.engine.backup import clear_backup

    clear_backup(backup_dir)  # a FAILED run's backups must not seed a new run
    run_id = c.create_run(exp_id, tags={**tags, **lease.owner_tags()}).info.run_id
    print(f"[transferlab] job {tags['mlflow.runName']} -> MLflow run {run_id}")
    return run_id, -1
