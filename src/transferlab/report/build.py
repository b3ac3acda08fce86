"""write_report: selection -> MLflow records -> table, statistics, figures -> files."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from mlflow import MlflowClient

from transferlab.report import (confusion, datasection, folds, fonts, gallery, plots, render,
                                selection)
from transferlab.report.collect import ROLE_TAG, ReportError, load_runs, select_runs
from transferlab.report.flags import run_flags
from transferlab.report.metric import check_metric
from transferlab.report.significance import compare
from transferlab.report.table import build_table, config_label, dataset_label

DEFAULT_STORE = Path("mlruns") / "mlflow.db"   # the project's default (conf/tracking)


def _sweeps_of(client: MlflowClient, run_ids) -> list[str]:
    """Sweep ids of the sweep parent runs among ``run_ids`` (how a sweep asks for its report)."""
    out = []
    for rid in run_ids or ():
        try:
            tags = client.get_run(rid).data.tags
        except Exception:
            continue  # select_runs has already said what is wrong with it
        if tags.get(ROLE_TAG) == "sweep" and tags.get("sweep_id"):
            out.append(tags["sweep_id"])
    return out


def _title(experiment, sweep_id, filter_string, run_ids, *, sweeps=(),
           experiments=()) -> tuple[str, str]:
    """(title, selection line): the sweep and the experiment where the runs have them."""
    exp = f" · experiment {', '.join(experiments)}" if experiments else ""
    if not sweep_id and len(sweeps) == 1 and len(run_ids or ()) == 1:
        return f"Sweep {sweeps[0]}{exp}", f"sweep {sweeps[0]} (parent run {run_ids[0]})"
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
        return f"Sweep {sweep_id}{exp}", selection
    if experiment and not filter_string:
        return f"Experiment {experiment}", selection
    return f"Selected runs{exp}", selection


def _unnamed(records) -> list[tuple[int, str]]:
    """(index, name) of class names no installed font draws: the figures show ``#index``."""
    names = next((r.classes for r in records if r.classes), None) or []
    return [(i, names[i]) for i in fonts.labels(names)[1]]


def _experiment_names(client: MlflowClient, ids) -> list[str]:
    names = []
    for eid in sorted(set(ids)):
        try:
            names.append(client.get_experiment(eid).name)
        except Exception:
            names.append(str(eid))
    return names


def one_dataset(records: list, want: str | None = None) -> tuple[list, str | None]:
    """The runs of one data set (tag ``dataset_id``) and a note when the selection held more.

    Configurations are chosen on validation scores and paired on test images; runs on
    two data sets share neither (and two folders' ``<class>/<file>`` paths collide), so a
    report covers one: ``want`` (a folder name or a ``dataset_id`` prefix), else the one
    with the newest run.

    Raises:
        ReportError: ``want`` matches no data set of the selection, or several.
    """
    groups: dict[str | None, list] = {}
    for r in records:
        groups.setdefault(r.tags.get("dataset_id"), []).append(r)
    if len(groups) <= 1 and not want:
        return records, None
    names = {k: dataset_label(rs[0]) for k, rs in groups.items()}
    listing = "; ".join(f"{names[k]}: {len(rs)} run(s)" for k, rs in groups.items())
    if want:
        hits = [k for k in groups if (k or "").startswith(want) or names[k].split(" (")[0] == want]
        if len(hits) != 1:
            raise ReportError(f"--dataset {want!r} matches {len(hits)} of the selection's data "
                              f"sets ({listing}). Fix: a folder name or dataset_id prefix from that "
                              "list that names one.")
        key = hits[0]
    else:
        key = max(groups, key=lambda k: max(r.start_time or 0 for r in groups[k]))  # the newest
    if len(groups) == 1:
        return records, None
    note = (f"The selection holds runs on {len(groups)} data sets ({listing}). This report covers "
            f"{names[key]}{'' if want else ', the one with the newest run'}: configurations are "
            "chosen, and test images paired, within one data set only. For another: "
            "transferlab report --dataset NAME_OR_ID.")
    return groups[key], note


def build_context(client: MlflowClient, *, experiment=None, sweep_id=None, filter_string=None,
                  run_ids=None, rows=None, cols=None, ui_url=None, tracking_uri=None,
                  metric=None, baselines=None, dataset=None):
    """Reads the selection and computes everything the templates show.

    Returns (context, table, leaderboard rows).
    """
    metric = check_metric(metric)
    runs = select_runs(client, experiment=experiment, sweep_id=sweep_id,
                       filter_string=filter_string, run_ids=run_ids)
    with tempfile.TemporaryDirectory(prefix="transferlab-report-") as tmp:
        records = load_runs(client, runs, tmp, history=(metric,))
    records, data_note = one_dataset(records, dataset)
    flags = {r.run_id: f for r in records if (f := run_flags(r))}
    table = build_table(records, rows=rows, cols=cols, metric=metric, flags=flags)
    comparisons, no_baseline = compare(table, baselines)
    chosen = selection.choose(table)
    sets = selection.test_sets(table)
    leaderboard = table.leaderboard()
    for row in leaderboard:
        row["url"] = render.run_url(ui_url, row["experiment_id"], row["run_id"])
    incomplete = render.incomplete_runs(table)
    for row in incomplete:
        row["url"] = render.run_url(ui_url, row["experiment_id"], row["run_id"])
    statuses: dict[str, int] = {}
    for rec in records:
        statuses[rec.status] = statuses.get(rec.status, 0) + 1
    title, selected = _title(experiment, sweep_id, filter_string, run_ids,
                             sweeps=_sweeps_of(client, run_ids),
                             experiments=_experiment_names(client, (r.experiment_id for r in records)))
    context = dict(
        title=title, selection=selected, tracking_uri=render.redact(tracking_uri),
        metric=metric, direction=selection.direction(metric), chosen=chosen,
        test_sets=sets, warnings=[*([data_note] if data_note else []),
                                  *selection.imbalance_warnings(sets, metric),
                                  *(line for cfg in table.configs for line in folds.missing(
                                      cfg, config_label(cfg, table.axes) or "the configuration"))],
        references=selection.reference_rows(table, sets), n_flagged=len(flags),
        n_runs=len(records), statuses=sorted(statuses.items()), table=table,
        constant=sorted(table.constant.items()), matrices=table.matrices,
        comparisons=comparisons, no_baseline=no_baseline, figures=plots.all_figures(table),
        confusion_tables=confusion.config_tables(table), classes_by_index=_unnamed(records),
        gallery=gallery.figures(client, table, chosen.chosen),
        leaderboard=leaderboard, incomplete=incomplete, ui_url=ui_url,
        experiments=sorted({r.experiment_id for r in records}),
        data_sections=datasection.sections(client, records),
    )
    return context, table, leaderboard


def resolve_tracking_uri(uri: str | None) -> str:
    """``uri``, else MLFLOW_TRACKING_URI, else the project's default store
    ``sqlite:///<root>/mlruns/mlflow.db`` (root: ``$TRANSFERLAB_ROOT``, else the working
    directory, as run.py's ``root_dir``). A SQLite store must already exist:
    reading a report never creates an empty database by accident.
    """
    # Where run.py writes by default: root_dir = $TRANSFERLAB_ROOT, else the working directory.
    root = Path(os.environ.get("TRANSFERLAB_ROOT") or ".").expanduser()
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(root / DEFAULT_STORE).resolve()}"
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
                 ui_url: str | None = None, metric: str | None = None,
                 baselines: dict[str, str] | None = None,
                 dataset: str | None = None) -> dict[str, Path]:
    """Writes report.html, report.md and leaderboard.csv for a selection of runs.

    Args:
        tracking_uri: MLflow tracking URI (None: MLFLOW_TRACKING_URI, else the default
            store ``sqlite:///mlruns/mlflow.db`` under the working directory).
        out_dir: folder for the three files (created).
        experiment, sweep_id, filter_string: selection, combined with AND.
        run_ids: explicit runs instead (a sweep parent run stands for its children).
        rows, cols: matrix axes (default ``backbone`` x ``freeze``).
        ui_url: MLflow UI address; run ids become links ``<ui>/#/experiments/<e>/runs/<r>``.
        metric: validation metric that ranks runs and configurations and picks the
            one whose test score is the estimate (default ``val_acc``; see metric.py).
        baselines: ``{key: value}`` baseline values for comparisons along swept keys
            (default: ``freeze=all``, else the best by ``metric``).
        dataset: where the selection holds runs on several data sets: the one to report
            (folder name or ``dataset_id`` prefix; default the newest run's, with a
            warning naming the others; ``one_dataset``).

    Returns:
        ``{"html": Path, "md": Path, "csv": Path, "json": Path}`` (``summary.json``:
        the chosen configuration, its estimate and the verdicts as data).

    Raises:
        ReportError: the selection matches no run or cannot be read; ``metric`` is not
            a validation metric; a baseline names no swept key or value; ``dataset``
            names no data set of the selection.
        ValueError: ``rows``/``cols`` names no key of the runs.
    """
    tracking_uri = resolve_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri=tracking_uri)
    context, table, leaderboard = build_context(
        client, experiment=experiment, sweep_id=sweep_id, filter_string=filter_string,
        run_ids=run_ids, rows=rows, cols=cols, ui_url=ui_url, tracking_uri=tracking_uri,
        metric=metric, baselines=baselines, dataset=dataset)
    return render.write_files(Path(out_dir), context, table, leaderboard, ui_url)


def log_report_artifacts(client: MlflowClient, parent_run_id: str, paths: dict,
                         artifact_path: str = "report") -> None:
    """Logs the report files as artifacts of ``parent_run_id`` under ``artifact_path``."""
    for key in ("html", "md", "csv", "json"):
        if key in paths:
            client.log_artifact(parent_run_id, str(paths[key]), artifact_path)
