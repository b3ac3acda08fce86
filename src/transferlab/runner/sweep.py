"""The Hydra callback around a sweep: validate every job, one parent MLflow run, summary.

Hydra calls ``on_multirun_start`` in the launching process before any job
runs, which is where the SQLite schema and the experiment must be created
(several processes creating them at once can corrupt the store), and where
every job's config can be checked before TensorFlow is imported.
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict

from transferlab.runner import lease, tracking
from transferlab.runner.validate import validate


def _task_config(config: DictConfig) -> DictConfig:
    cfg = OmegaConf.create(OmegaConf.to_container(config, resolve=False))
    with open_dict(cfg):
        cfg.pop("hydra", None)
    return cfg


def job_configs(config: DictConfig) -> list[DictConfig]:
    """Composes every job of a basic-sweeper sweep (as the launcher will).

    Returns an empty list for sweepers whose jobs are not known up front
    (e.g. Optuna), which then validate job by job.
    """
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = config.hydra.sweeper.get("params") or {}
    args = [f"{k}={v}" for k, v in params.items()] + list(config.hydra.overrides.task)
    try:
        parsed = OverridesParser.create().parse_overrides(args)
        batches = BasicSweeper.split_arguments(parsed, None)
    except Exception:
        return []
    loader = GlobalHydra.instance().config_loader()
    return [_task_config(loader.load_sweep_config(config, list(job)))
            for batch in batches for job in batch]


# The last sweep this process ran: parent run id, tracking URI, report path (api.sweep reads it).
LAST_SWEEP: dict = {}
# The jobs of the current sweep that raised in this process: (their overrides, the error),
# also those that failed before their MLflow run existed (api.sweep raises with them).
JOB_ERRORS: list[tuple[str, str]] = []


class SweepCallback(Callback):
    """Opens and closes the sweep's MLflow record and reports on it."""

    def __init__(self) -> None:
        self.parent_run_id: str | None = None
        self.sweep_id: str | None = None
        self.root_dir: str | None = None
        self._root_env: str | None = None
        self.n_jobs = 0

    # -- multirun -------------------------------------------------------
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # Hydra turns exceptions raised by callbacks into warnings and carries
        # on; a sweep that cannot start must stop here, so exit explicitly.
        try:
            self._start(config)
        except Exception as e:
            from transferlab.runner import isolate

            isolate.shutdown()  # a worker that was only importing: stopped, not awaited
            print(f"[transferlab] error: {e}", file=sys.stderr)
            sys.exit(2)

    def _start(self, config: DictConfig) -> None:
        from transferlab import data

        JOB_ERRORS.clear()
        LAST_SWEEP.clear()

        jobs = job_configs(config)
        for cfg in jobs:
            validate(cfg)  # a bad value in any job stops the sweep before TF loads
        if config.hydra.launcher.get("_target_", "").endswith(".BasicLauncher"):
            from transferlab.runner import isolate

            isolate.prestart(_task_config(config))  # its imports overlap with the scan below
        # Check folders and generate synthetic data here, once: parallel jobs
        # must not race to write the same files.
        firsts = {(str(data.dataset_path(c)), data.SplitSpec.from_config(c.dataset),
                   c.dataset.get("duplicates"), c.dataset.get("max_image_pixels"),
                   c.dataset.get("truncated_jpeg")): c for c in jobs}
        for key in sorted(firsts, key=str):
            data.prepare(firsts[key])  # bad layout, differing class folders, empty class, leaks
        # One config spelt twice (lr=1e-3,0.001) is one job: the twin finds the
        # first one's run and is skipped, so it is counted once.
        self.n_jobs = len({json.dumps(tracking.result_params(c) | {"dataset.path": str(data.dataset_path(c))},
                                      sort_keys=True) for c in jobs})
        cfg = _task_config(config)
        sweep_id = datetime.now().strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        self.parent_run_id = tracking.start_sweep(cfg, sweep_id, config.hydra.sweep.dir)
        self.sweep_id, self.root_dir = sweep_id, str(Path(cfg.root_dir).resolve())
        self._root_env = os.environ.get("TRANSFERLAB_ROOT")
        print(f"[transferlab] sweep {sweep_id}: {len(jobs) or 'unknown number of'} jobs, "
              f"MLflow parent run {self.parent_run_id} in {tracking.tracking_uri(cfg)}")

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Runs in the job's process: Hydra pickles this callback to every launcher's
        workers (Ray, SLURM), which inherit neither the launcher's environment nor
        its working directory, so the sweep's identity and root travel with it."""
        if self.parent_run_id:
            os.environ[tracking.ENV_PARENT] = self.parent_run_id
            os.environ[tracking.ENV_SWEEP] = self.sweep_id
            os.environ["TRANSFERLAB_ROOT"] = self.root_dir  # else ${cwd:} = the worker's cwd

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from transferlab.runner import isolate

        isolate.shutdown(wait=False)  # TensorFlow's teardown overlaps with the summary and report
        cfg = _task_config(config)
        uri = tracking.tracking_uri(cfg)
        c = tracking.client(uri)
        parent = c.get_run(self.parent_run_id)
        children = c.search_runs(
            [parent.info.experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{self.parent_run_id}'",
            order_by=["attributes.start_time ASC"])
        failed = [r for r in children if r.info.status != "FINISHED"]
        skipped = {k: v for k, v in parent.data.tags.items() if k.startswith("skipped.")}
        elsewhere = {k: v for k, v in parent.data.tags.items() if k.startswith("elsewhere.")}
        # A job that failed before its run was created (bad data found late)
        # leaves no run: count it from the number of jobs composed up front.
        lost = max(0, self.n_jobs - len(children) - len(skipped) - len(elsewhere))
        c.set_terminated(self.parent_run_id, "FAILED" if failed or lost else "FINISHED")
        lease.HEARTBEAT.remove(self.parent_run_id)
        print(f"\n[transferlab] sweep done: {len(children) - len(failed)} finished, "
              f"{len(failed)} failed, {len(skipped)} skipped (already finished)"
              + (f", {lost} failed before their run started (see the log above)" if lost else "")
              + (f", {len(elsewhere)} left to the other process running them: "
                 + "; ".join(elsewhere.values()) if elsewhere else ""))
        for r in failed:
            print(f"  {r.info.status}: {r.data.tags.get('mlflow.runName')} "
                  f"[{r.data.tags.get('hydra_overrides', '')}]: {r.data.tags.get('error', '')[:300]}")
        print(f"[transferlab] MLflow store: {uri}")
        print(f"[transferlab] open the dashboard: {tracking.ui_command(uri)}")
        print(f"[transferlab] then the jobs and their curves: "
              f"{tracking.runs_view_url(uri, parent.info.experiment_id)}")
        report = self._report(c, uri, Path(config.hydra.sweep.dir) / "report",
                              metric=cfg.get("report", {}).get("metric"))
        LAST_SWEEP.clear()
        LAST_SWEEP.update(parent_run_id=self.parent_run_id, tracking_uri=uri, report=report)
        for k in (tracking.ENV_PARENT, tracking.ENV_SWEEP, "TRANSFERLAB_ROOT"):
            if k != "TRANSFERLAB_ROOT" or self._root_env is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = self._root_env
        if failed or lost:
            sys.exit(1)

    def _report(self, c, uri: str, out: Path, metric: str | None = None) -> str | None:
        """The sweep's comparison report: files in the sweep folder, artifacts on the parent."""
        from transferlab.report import log_report_artifacts, write_report
        from transferlab.report.render import final_lines

        try:
            paths = write_report(uri, out, run_ids=[self.parent_run_id], metric=metric)
            log_report_artifacts(c, self.parent_run_id, paths)
        except Exception as e:  # the runs are safe in MLflow; `transferlab report` can retry
            print(f"[transferlab] report failed: {type(e).__name__}: {e}. Retry with: "
                  f"transferlab report --tracking-uri {uri} --runs {self.parent_run_id} --out {out}")
            return None
        html = str(Path(paths["html"]).resolve())
        try:
            summarize_parent(c, self.parent_run_id, paths["json"], html)
        except Exception as e:  # the report itself is written and logged
            print(f"[transferlab] (summary not logged on the parent run: {type(e).__name__}: {e})")
        print(f"[transferlab] report: {html}")
        # The last lines: what the report says, its verdicts and every flag or warning.
        for line in final_lines(json.loads(Path(paths["json"]).read_text(encoding="utf-8"))):
            print(f"[transferlab] {line}")
        return html

    # -- single run -----------------------------------------------------
    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        # As in on_multirun_start: check config and data before the store is
        # created; Hydra would turn an exception here into a warning.
        try:
            from transferlab import data

            cfg = _task_config(config)
            validate(cfg)
            data.prepare(cfg)
            tracking.ensure_experiment(cfg)
        except Exception as e:
            print(f"[transferlab] error: {e}", file=sys.stderr)
            sys.exit(2)

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        uri = tracking.tracking_uri(_task_config(config))
        print(f"[transferlab] MLflow store: {uri}")
        print(f"[transferlab] open the dashboard: {tracking.ui_command(uri)}")


def summarize_parent(c, parent_run_id: str, summary_json, report_html: str) -> str:
    """The sweep's answer on its parent run, for the MLflow dashboard; returns it as a line.

    Metrics ``best_<metric>`` (the chosen configuration's validation score) and
    ``chosen_<test metric>`` (its test estimates), tags ``chosen_config``,
    ``chosen_run_ids``, ``report``, and the run description (``mlflow.note.content``).
    """
    from mlflow.entities import Metric, RunTag

    from transferlab.report.render import final_lines

    s = json.loads(Path(summary_json).read_text(encoding="utf-8"))
    chosen = s.get("chosen")
    link = f"report: {report_html} (artifact report/report.html)"
    line = final_lines(s)[0]
    if not chosen:
        c.set_tag(parent_run_id, "mlflow.note.content", f"No configuration chosen: {s.get('note')}. {link}")
        return line
    metric = s["metric"]
    now = int(datetime.now().timestamp() * 1000)
    metrics = [Metric(f"best_{metric}", float(chosen["score"]), now, 0)]
    metrics += [Metric(f"chosen_{k}", float(v), now, 0) for k, v in chosen["estimates"].items()
                if v is not None]
    verdicts = [f"- {v['key']}: {v['candidate']} vs {v['baseline']} ({v['group']}): {v['verdict']}"
                for v in s.get("comparisons", [])]
    note = "\n".join([f"**{line}**", "", *(["Verdicts (Holm-adjusted):", *verdicts, ""] if verdicts else []),
                      *[f"> {w}" for w in s.get("alerts", s.get("warnings", []))],
                      *([f"Flagged: {'; '.join(chosen['flags'])}"] if chosen.get("flags") else []),
                      "", link])
    tags = {"chosen_config": chosen["label"][:5000], "chosen_run_ids": ",".join(chosen["run_ids"])[:5000],
            "report": report_html[:5000], "mlflow.note.content": note[:20000]}
    c.log_batch(parent_run_id, metrics=metrics, tags=[RunTag(k, v) for k, v in tags.items()])
    return line

