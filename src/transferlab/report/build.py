"""write_report: selection -> MLflow records -> table, statistics, figures -> files."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from mlflow import MlflowClient

from transferlab.report import plots, render
from transferlab.report.collect import ReportError, load_runs, select_runs
from transferlab.report.significance import compare
from transferlab.report.table import build_table

DEFAULT_STORE = Path("mlruns") / "mlflow.db"   # the project's default (conf/tracking)


def _title(experiment, sweep_id, filter_string, run_ids) -> tuple[str, str]:
    parts = []
    if experiment:
        parts.append(f"experiment {experiment}")
    if sweep_id:
        parts.append(f"sweep {sweep_id}")
    if filter_string:
        parts.append(f"filter {filter_string}")
    if run_ids:
        parts.append(f"{len(run_ids)} run id(s)")
    selection = ", ".join(parts)
    if sweep_id:
        return f"Sweep {sweep_id}", selection
    if experiment and not filter_string:
        return f"Experiment {experiment}", selection
    return "Selected runs", selection


def build_context(client: MlflowClient, *, experiment=None, sweep_id=None, filter_string=None,
                  run_ids=None, rows=None, cols=None, ui_url=None, tracking_uri=None):
    """Reads the selection and computes everything the templates show.

    Returns (context, table, leaderboard rows).
    """
    runs = select_runs(client, experiment=experiment, sweep_id=sweep_id,
                       filter_string=filter_string, run_ids=run_ids)
    with tempfile.TemporaryDirectory(prefix="transferlab-report-") as tmp:
        records = load_runs(client, runs, tmp)
    table = build_table(records, rows=rows, cols=cols)
    comparisons, no_baseline = compare(table)
    leaderboard = table.leaderboard()
    for row in leaderboard:
        row["url"] = render.run_url(ui_url, row["experiment_id"], row["run_id"])
    incomplete = render.incomplete_runs(table)
    for row in incomplete:
        row["url"] = render.run_url(ui_url, row["experiment_id"], row["run_id"])
    statuses: dict[str, int] = {}
    for rec in records:
        statuses[rec.status] = statuses.get(rec.status, 0) + 1
    title, selection = _title(experiment, sweep_id, filter_string, run_ids)
    context = dict(
        title=title, selection=selection, tracking_uri=render.redact(tracking_uri),
        n_runs=len(records), statuses=sorted(statuses.items()), table=table,
        constant=sorted(table.constant.items()), matrices=table.matrices,
        comparisons=comparisons, no_baseline=no_baseline, figures=plots.all_figures(table),
        leaderboard=leaderboard, incomplete=incomplete, ui_url=ui_url,
        experiments=sorted({r.experiment_id for r in records}),
    )
    return context, table, leaderboard


def resolve_tracking_uri(uri: str | None) -> str:
    """``uri``, else MLFLOW_TRACKING_URI, else the project's default store
    ``sqlite:///<cwd>/mlruns/mlflow.db``. A SQLite store must already exist:
    reading a report never creates an empty database by accident.
    """
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{DEFAULT_STORE.resolve()}"
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):])
        if not path.is_file():
            raise ReportError(f"no MLflow store at {path}: run a sweep first, or pass "
                              "--tracking-uri (e.g. sqlite:///mlruns/mlflow.db or "
                              "http://127.0.0.1:5000)")
    return uri


def write_report(tracking_uri: str | None, out_dir: str | os.PathLike, *,
                 experiment: str | None = None, sweep_id: str | None = None,
                 filter_string: str | None = None, run_ids: list[str] | None = None,
                 rows: str | None = None, cols: str | None = None,
                 ui_url: str | None = None) -> dict[str, Path]:
    """Writes report.html, report.md and leaderboard.csv for a selection of runs.

    Args:
        tracking_uri: MLflow tracking URI (None: MLFLOW_TRACKING_URI, else the default
            store ``sqlite:///mlruns/mlflow.db`` under the working directory).
        out_dir: folder for the three files (created).
        experiment, sweep_id, filter_string: selection, combined with AND.
        run_ids: explicit runs instead (a sweep parent run stands for its children).
        rows, cols: matrix axes (default ``backbone`` x ``freeze``).
        ui_url: MLflow UI address; run ids become links ``<ui>/#/experiments/<e>/runs/<r>``.

    Returns:
        ``{"html": Path, "md": Path, "csv": Path}``.

    Raises:
        ReportError: the selection matches no run or cannot be read.
        ValueError: ``rows``/``cols`` names no key of the runs.
    """
    tracking_uri = resolve_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri=tracking_uri)
    context, table, leaderboard = build_context(
        client, experiment=experiment, sweep_id=sweep_id, filter_string=filter_string,
        run_ids=run_ids, rows=rows, cols=cols, ui_url=ui_url, tracking_uri=tracking_uri)
    return render.write_files(Path(out_dir), context, table, leaderboard, ui_url)


def log_report_artifacts(client: MlflowClient, parent_run_id: str, paths: dict,
                         artifact_path: str = "report") -> None:
    """Logs the report files as artifacts of ``parent_run_id`` under ``artifact_path``."""
    for key in ("html", "md", "csv"):
        if key in paths:
            client.log_artifact(parent_run_id, str(paths[key]), artifact_path)
