"""The Python API, for notebooks: the same override strings as the command line.

    import transferlab
    result = transferlab.train(["backbone=mobilenetv2", "freeze=last4", "trainer.epochs=3"])
    result.model.predict(images)            # the trained keras.Model
    result.metrics["test_acc"], result.run_id, result.history["val_loss"]

    table = transferlab.sweep(["backbone=mobilenetv3small,mobilenetv2", "freeze=all,last4"])
    table.sort_values("val_acc", ascending=False)

``train`` runs one job in this process (so the model is returned);
``sweep`` runs Hydra's multirun exactly as ``python run.py -m`` does (parent
run, jobs in a worker process, report), then reads the jobs back from MLflow;
a sweep with a failed job raises ``SweepFailed`` naming each job and its
error. Both write the same MLflow record as the command line. Any main module
works (a script, ``python -c``, ``python - <<EOF``, a notebook): the worker
never re-runs it (runner/isolate.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

FINAL_METRICS = ("test_acc", "test_loss", "params_trainable", "params_total",
                 "train_seconds")


class SweepFailed(RuntimeError):
    """Jobs of a sweep failed; the message lists each (its overrides and its error).

    Attributes:
        errors: ``[(job overrides, error text)]``, one per failed job.
        table: the sweep's DataFrame as ``sweep`` would return it (FAILED rows
            included; the jobs that failed before their run existed have none).
    """

    def __init__(self, errors: list[tuple[str, str]], table):
        self.errors, self.table = errors, table
        lines = [f"  [{job}]: {err[:500]}" for job, err in errors]
        super().__init__(f"{len(errors)} job(s) of the sweep failed"
                         + (f" ({int((table['status'] == 'FINISHED').sum())} finished)"
                            if len(table) else " (no job finished)") + ":\n" + "\n".join(lines))


@dataclass
class Result:
    """One trained job.

    Attributes:
        model: the trained ``keras.Model`` (None when the job was skipped
            because it had already FINISHED; load it from the run instead).
        history: MLflow metric name (``acc``, ``val_acc``, ``loss``,
            ``val_loss``) -> one value per epoch.
        metrics: the run's final metrics (``test_acc``, ``test_loss``, ...).
        run_id: the MLflow run.
        skipped: True when ``tracking.skip_finished`` found a FINISHED run of
            the same config on the same data (its metrics are returned).
    """

    model: object
    history: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    run_id: str = ""
    skipped: bool = False


def compose(overrides=()):
    """The job config ``python run.py <overrides>`` would run (Hydra's compose API).

    Raises:
        ConfigError: a misspelt key, named with the closest ones.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    from transferlab.config import check_override_keys, register

    overrides = list(overrides)
    check_override_keys(overrides)
    register()
    with initialize_config_module("transferlab.conf", version_base="1.3"):
        return hydra_compose("config", overrides=overrides)


def train(overrides=()) -> Result:
    """Trains, scores and logs one configuration in this process.

    Args:
        overrides: Hydra overrides as on the command line, e.g.
            ``["backbone=mobilenetv2", "freeze=last4", "lr=1e-4"]``.

    Returns:
        A Result with the trained model, its per-epoch history, the final
        metrics and the MLflow run id.

    Raises:
        ConfigError, DataError, FreezeError, PretrainedError, WeightsUnavailable:
        the value to change is named in the message.
    """
    from transferlab.runner import isolate, job

    cfg = compose(overrides)
    isolate.apply_threads(isolate.thread_share(cfg, parallel=1))
    out = job.run(cfg, list(overrides))
    model, history = out.pop("model", None), out.pop("history", None)
    run_id, skipped = out.pop("run_id"), bool(out.pop("skipped", False))
    if skipped:
        from transferlab.runner import artifacts, tracking

        history = artifacts.history(tracking.client(tracking.tracking_uri(cfg)), run_id, mlflow_names=True)
    return Result(model=model, history=history or {}, metrics=out, run_id=run_id, skipped=skipped)


def sweep(overrides=()):
    """Runs a sweep as ``python run.py -m <overrides>`` does; one row per job.

    Args:
        overrides: Hydra overrides with comma-separated sweeps, e.g.
            ``["backbone=vgg19,resnet50", "freeze=none,last4"]``.

    Returns:
        ``pandas.DataFrame`` with a row per job: the swept keys, ``status``,
        ``val_acc`` (the selection metric), ``test_acc`` and the other final
        metrics, ``run_id``, and ``skipped`` (True for a config that had
        already FINISHED on the same data). Sweep-level facts are in
        ``df.attrs``: ``parent_run_id``, ``tracking_uri``, ``report``.

    Raises:
        SweepFailed: a job failed (its run FAILED, or it failed before its run
            existed); the exception lists every failed job with its error and
            holds the table (``e.table``).
        ConfigError and the other user errors of ``train``; SystemExit(2) if
        Hydra rejects the command line.
    """
    import sys

    import pandas as pd
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from transferlab import app
    from transferlab.config import kfold
    from transferlab.runner import sweep as sweep_mod
    from transferlab.runner import tracking
    from transferlab.runner.job import final_val_acc

    overrides = list(overrides)
    swept = [o.key_or_group for o in OverridesParser.create().parse_overrides(overrides) if o.is_sweep_override()]
    if kfold.expand(["-m", *overrides])[1]:  # dataset.folds=K: app.main sweeps dataset.fold
        swept.append(kfold.FOLD)
    argv0 = sys.argv
    try:
        app.main(["-m", *overrides], prog=argv0[0] if argv0 else "transferlab")
    except SystemExit as e:
        if e.code not in (0, 1, None):  # 1: some job failed; its row says FAILED
            raise
    finally:
        sys.argv = argv0
    done = sweep_mod.LAST_SWEEP
    if not done:  # the sweep never reached its end (no report, nothing to read back)
        raise SweepFailed(list(sweep_mod.JOB_ERRORS) or [("(sweep)", "it stopped before its end; "
                                                                     "see the log above")],
                          pd.DataFrame())
    c = tracking.client(done["tracking_uri"])
    parent = c.get_run(done["parent_run_id"])
    runs = c.search_runs([parent.info.experiment_id],
                         filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
                         order_by=["attributes.start_time ASC"])
    skipped = [c.get_run(v) for k, v in parent.data.tags.items() if k.startswith("skipped.")]
    rows = []
    for r, was_skipped in [(r, False) for r in runs] + [(r, True) for r in skipped]:
        row = {k: _param(r.data.params, k) for k in swept}
        row.update(status=r.info.status, skipped=was_skipped)
        # val_acc is per epoch: the value of the epoch the job's model ends with
        row["val_acc"] = final_val_acc(c, r.info.run_id, r.data.metrics.get("best_epoch"))
        row.update({m: r.data.metrics.get(m) for m in FINAL_METRICS})
        row["run_id"] = r.info.run_id
        rows.append(row)
    df = pd.DataFrame(rows)
    df.attrs.update(parent_run_id=parent.info.run_id, tracking_uri=done["tracking_uri"],
                    report=done.get("report"))
    # Each failed job once: its run's error tag, else (no run) the error it raised here.
    errors = [(r.data.tags.get("hydra_overrides", r.data.tags.get("mlflow.runName", r.info.run_id)),
               r.data.tags.get("error") or f"run {r.info.status}") for r in runs
              if r.info.status != "FINISHED"]
    named = {job for job, _ in errors}
    errors += [(job, err) for job, err in sweep_mod.JOB_ERRORS if job not in named]
    if errors:
        raise SweepFailed(errors, df)
    return df


def _param(params: dict, key: str):
    """A swept key's value as the run recorded it (``freeze`` -> its strategy label)."""
    if key in params:
        return params[key]
    if key == "freeze":
        from transferlab.models.freeze import freeze_label

        return freeze_label(params.get("freeze.strategy"), params.get("freeze.n"), params.get("freeze.layer"))
    return params.get(f"{key}.name", params.get(key))
