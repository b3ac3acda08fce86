"""The tidy table: one row per run, swept vs constant keys, configurations, matrices.

A *field* is what a run varies in: the labels ``backbone`` and ``freeze``
(from the run tags, falling back to the params) plus every logged param
(dotted key). Keys whose value differs across the selection are *swept*; the
*configuration* of a run is its swept fields except ``seed``, ``dataset.fold`` and
``dataset.split_seed``, so runs that differ only in ``seed``, the k-fold fold or the
random split are replicates: a configuration's numbers are the mean ± std over them. Pure
Python over RunRecords.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from transferlab.config.schema import NON_RESULT_KEYS, SYNTHETIC_ONLY_KEYS
from transferlab.models.freeze import freeze_label as strategy_label
from transferlab.report.axes import (FOLD, LABELS, REPLICATES, SEED, SPLIT_SEED, _natural, axes_of,
                                     default_axes, determined, sort_values)
from transferlab.report.collect import RunRecord
from transferlab.report.metric import DEFAULT_METRIC, rank_key, run_score
from transferlab.report.stats import mean_std

__all__ = ["LABELS", "SEED", "BASELINE", "Table", "Config", "build_table", "config_label",
           "determined", "sort_values"]

BASELINE = ("freeze", "all")  # transfer learning: the whole base frozen
# The leaderboard's columns after the swept keys: the selection score first (the val
# metric of the model each job ends with), then metrics read as logged.
SCORE_COLUMNS = ("rank", "selected_by", "selection_score", "flags", "best_val_acc",
                 "best_val_acc_epoch", "final_val_acc")
METRIC_COLUMNS = ("test_acc", "test_balanced_acc", "test_macro_f1", "test_auc", "test_top5_acc",
                  "test_loss", "params_trainable", "params_trainable_base", "params_total",
                  "train_seconds", "train_images_per_s")
RESULT_COLUMNS = SCORE_COLUMNS + METRIC_COLUMNS
# backbone.weights=null as the report shows it: what it is, not Python's None.
RANDOM_INIT = "random init"


def freeze_label(params: dict[str, str]) -> str | None:
    """The freeze label (``all``, ``last4``, ``last2blocks``, ``from:x``) from params."""
    if "freeze.strategy" not in params:
        return None
    return strategy_label(params["freeze.strategy"], params.get("freeze.n"),
                                 params.get("freeze.layer"))


def fields_of(rec: RunRecord) -> dict[str, str | None]:
    out: dict[str, str | None] = dict(rec.params)
    # With its constructor options (tag backbone_label: mobilenet-a0.25), so width variants
    # are rows of their own and backbone.alpha follows the label, not an axis of its own.
    out["backbone"] = (rec.tags.get("backbone_label") or rec.tags.get("backbone")
                       or rec.params.get("backbone.name"))
    out["freeze"] = rec.tags.get("freeze") or freeze_label(rec.params)
    if "backbone.weights" in out and out["backbone.weights"] in (None, "None"):
        out["backbone.weights"] = RANDOM_INIT
    # The data set (tag dataset_id, the same for every fold): runs on two folders are two
    # configurations, never replicates of one, whatever their other params.
    if rec.tags.get("dataset_id"):
        out["data"] = dataset_label(rec)
    return out


def dataset_label(rec: RunRecord) -> str:
    """``<folder name> (<first 6 of dataset_id>)``: the data set a run learnt from."""
    path = rec.params.get("dataset.path")
    name = Path(path).name if path not in (None, "None", "") else rec.params.get("dataset.name", "")
    return f"{name} ({(rec.tags.get('dataset_id') or 'untagged')[:6]})"


def fold_of(rec: RunRecord) -> str | None:
    """The run's k-fold fold (param ``dataset.fold``), None without k-fold."""
    fold = rec.params.get(FOLD)
    return None if fold in (None, "None", "null") else fold


def _seed(rec: RunRecord) -> str:
    """The replicate key: the seed, the fold with k-fold and the split seed where it can
    vary (``"42/fold 1"``, ``"42/split 3"``); runs of one configuration with equal keys
    repeat each other (the newer one counts)."""
    seed = rec.params.get(SEED, rec.run_id)
    fold = fold_of(rec)
    key = seed if fold is None else f"{seed}/fold {fold}"
    split = rec.params.get(SPLIT_SEED)
    # Only a folder split by transferlab has a split seed that changes anything.
    if split not in (None, "None", "null") and rec.tags.get("split_layout") not in (None, "split"):
        key += f"/split {split}"
    return key


replicate_key = _seed


def _best_val(rec: RunRecord) -> tuple[float | None, int | None, float | None]:
    hist = rec.history.get("val_acc") or []
    if not hist:
        return None, None, rec.metrics.get("val_acc")
    best_step, best = max(hist, key=lambda sv: (sv[1], -sv[0]))
    return best, best_step, hist[-1][1]


@dataclass
class Config:
    """One configuration: its swept values and its replicate runs."""

    values: dict[str, str | None]
    runs: list[RunRecord] = field(default_factory=list)        # finished, one per seed
    incomplete: list[RunRecord] = field(default_factory=list)  # failed, running, no test_acc
    superseded: list[RunRecord] = field(default_factory=list)  # older finished run of a seed
    score: float | None = None  # selection metric, mean over the seeds that logged it

    def get(self, key):
        return self.values.get(key)

    @property
    def seeds(self) -> dict[str, RunRecord]:
        """Replicate key (seed, with k-fold seed/fold) -> run."""
        return {_seed(r): r for r in self.runs}

    @property
    def n_folds(self) -> int:
        """How many k-fold folds the finished runs cover (0 without k-fold)."""
        return len({f for f in map(fold_of, self.runs) if f is not None})

    @property
    def unresolved(self) -> list[RunRecord]:
        """Incomplete runs whose seed has no finished run (a retried seed is resolved)."""
        done = self.seeds
        return [r for r in self.incomplete if _seed(r) not in done]

    def stat(self, metric: str = "test_acc"):
        vals = [r.metrics[metric] for r in self.runs if metric in r.metrics]
        return mean_std(vals) if vals else None


@dataclass
class Cell:
    mean: float | None  # test accuracy over seeds
    std: float | None
    n: int
    n_incomplete: int
    best: bool = False  # best selection score in its row (validation, never test)
    folds: int = 0  # k-fold: how many folds the n runs cover
    delta: float | None = None
    score: float | None = None


@dataclass
class Matrix:
    facet: dict[str, str | None]
    row_values: list
    col_values: list
    cells: dict[tuple, Cell]
    baseline_col: str | None


@dataclass
class Table:
    records: list[RunRecord]
    fields: dict[str, dict[str, str | None]]   # run_id -> fields
    swept: list[str]                           # all swept keys, labels first
    shown: list[str]                           # swept keys the leaderboard shows
    constant: dict[str, str]
    rows_key: str
    cols_key: str
    facet_keys: list[str]
    config_keys: list[str]
    configs: list[Config]
    axes: list[str] = field(default_factory=list)  # swept keys no other swept key determines
    metric: str = DEFAULT_METRIC
    flags: dict[str, list[str]] = field(default_factory=dict)  # run_id -> flags (flags.py)

    def determined(self, key: str, by: list[str]) -> bool:
        return determined(key, by, list(self.fields.values()))

    def complete(self, rec: RunRecord) -> bool:
        return rec.finished and "test_acc" in rec.metrics

    def leaderboard(self) -> list[dict]:
        """One dict per run, ranked by the selection metric (validation data), incomplete
        runs last; ``rank`` numbers the complete runs."""
        out = []
        for rec in self.records:
            best, best_epoch, final = _best_val(rec)
            row = {k: self.fields[rec.run_id].get(k) for k in self.shown}
            row.update(run_name=rec.name, status=rec.status, best_val_acc=best,
                       # 1-based, as Keras prints "Epoch 1/10" (MLflow steps count from 0)
                       best_val_acc_epoch=None if best_epoch is None else best_epoch + 1,
                       final_val_acc=final,
                       selected_by=self.metric, selection_score=run_score(rec, self.metric),
                       flags=" ".join(self.flags.get(rec.run_id, [])) or None,
                       complete=self.complete(rec), run_id=rec.run_id,
                       experiment_id=rec.experiment_id)
            for m in METRIC_COLUMNS:
                row[m] = rec.metrics.get(m)
            out.append(row)
        out.sort(key=lambda r: (not r["complete"], rank_key(r["selection_score"], self.metric),
                                r["run_name"], r["run_id"]))
        for i, r in enumerate(out):
            r["rank"] = i + 1 if r["complete"] else None
        return out

    @cached_property
    def matrices(self) -> list[Matrix]:
        """One matrix per combination of facet values (rows x cols, mean over seeds)."""
        by_facet: dict[tuple, list[Config]] = defaultdict(list)
        for cfg in self.configs:
            by_facet[tuple(cfg.get(k) for k in self.facet_keys)].append(cfg)
        facet_order = _combo_order(self.facet_keys, list(by_facet))
        baseline_col = BASELINE[1] if self.cols_key == BASELINE[0] else None
        out = []
        for fv in facet_order:
            cfgs = by_facet[fv]
            rows = sort_values(self.rows_key, [c.get(self.rows_key) for c in cfgs])
            cols = sort_values(self.cols_key, [c.get(self.cols_key) for c in cfgs])
            cells: dict[tuple, Cell] = {}
            accs: dict[tuple, list[float]] = defaultdict(list)
            scores: dict[tuple, list[float]] = defaultdict(list)
            for cfg in cfgs:
                key = (cfg.get(self.rows_key), cfg.get(self.cols_key))
                cell = cells.setdefault(key, Cell(None, None, 0, 0))
                cell.n_incomplete += len(cfg.unresolved)
                cell.folds = max(cell.folds, cfg.n_folds)
                accs[key] += [r.metrics["test_acc"] for r in cfg.runs]
                scores[key] += [s for s in (run_score(r, self.metric) for r in cfg.runs)
                                if s is not None]
            for key, vals in accs.items():
                if vals:
                    cells[key].mean, cells[key].std, cells[key].n = mean_std(vals)
                if scores[key]:
                    cells[key].score = mean_std(scores[key])[0]
            for rv in rows:
                row = [cells[(rv, cv)] for cv in cols if (rv, cv) in cells]
                keys = [rank_key(c.score, self.metric) for c in row if c.mean is not None]
                for c in row:  # chosen on validation: the test numbers only report
                    c.best = (c.mean is not None and len(row) > 1 and c.score is not None
                              and rank_key(c.score, self.metric) == min(keys))
                base = cells.get((rv, baseline_col))
                if base is not None and base.mean is not None:
                    for cv in cols:
                        c = cells.get((rv, cv))
                        if c is not None and c.mean is not None and cv != baseline_col:
                            c.delta = c.mean - base.mean
            out.append(Matrix(dict(zip(self.facet_keys, fv)), rows, cols, cells, baseline_col))
        return out


def _combo_order(keys: list[str], combos: list[tuple]) -> list[tuple]:
    ranks = [{v: i for i, v in enumerate(sort_values(k, [c[j] for c in combos]))}
             for j, k in enumerate(keys)]
    return sorted(combos, key=lambda c: tuple(ranks[j][v] for j, v in enumerate(c)))


def build_table(records: list[RunRecord], rows: str | None = None,
                cols: str | None = None, metric: str = DEFAULT_METRIC,
                flags: dict[str, list[str]] | None = None) -> Table:
    """Analyses the selection: swept/constant keys, facets and configurations.

    Args:
        metric: the validation metric that ranks runs and configurations (metric.py).
        flags: run id -> flags (flags.py), shown in the leaderboard.

    Raises:
        ValueError: ``rows``/``cols`` names no field of the runs (message lists them).
    """
    fields = {r.run_id: fields_of(r) for r in records}
    rows_f = list(fields.values())
    keys = sorted({k for f in rows_f for k in f})
    values = {k: {f.get(k) for f in rows_f} - {None} for k in keys}
    swept = [k for k in LABELS if len(values.get(k, ())) > 1]
    swept += [k for k in keys if k not in LABELS and len(values[k]) > 1
              and not any(k == e or k.startswith(e + ".") for e in NON_RESULT_KEYS)]
    constant = {k: next(iter(values[k])) for k in keys if len(values[k]) == 1
                and not any(k == e or k.startswith(e + ".") for e in NON_RESULT_KEYS)}
    if constant.get("dataset.name", "synthetic") != "synthetic":  # meaningless for a folder
        constant = {k: v for k, v in constant.items() if k not in SYNTHETIC_ONLY_KEYS}
    axes = axes_of(swept, rows_f)
    rows_key, cols_key = default_axes(axes, rows, cols)
    for k in (rows_key, cols_key):
        if k not in values:
            raise ValueError(f"unknown key {k!r} for --rows/--cols; the runs have: "
                             f"{', '.join(list(LABELS) + [x for x in keys if x not in LABELS])}")
    shown = [k for k in swept if not any(
        k.startswith(label + ".") and determined(k, [label], rows_f) for label in LABELS)]
    facet_keys: list[str] = []
    for k in swept:
        if k in (*REPLICATES, rows_key, cols_key):
            continue
        if not determined(k, [rows_key, cols_key] + facet_keys, rows_f):
            facet_keys.append(k)
    config_keys = [k for k in swept if k not in REPLICATES]
    for k in (rows_key, cols_key):
        if k not in config_keys:
            config_keys.append(k)
    configs: dict[tuple, Config] = {}
    for rec in records:
        f = fields[rec.run_id]
        ck = tuple(f.get(k) for k in config_keys)
        cfg = configs.setdefault(ck, Config({k: f.get(k) for k in config_keys}))
        if rec.finished and "test_acc" in rec.metrics:
            cfg.runs.append(rec)
        else:
            cfg.incomplete.append(rec)
    order_keys = facet_keys + [rows_key, cols_key] + [
        k for k in config_keys if k not in facet_keys + [rows_key, cols_key]]
    ranks = {k: {v: i for i, v in enumerate(sort_values(k, [c.get(k) for c in configs.values()]))}
             for k in order_keys}
    ordered = sorted(configs.values(), key=lambda c: tuple(ranks[k][c.get(k)] for k in order_keys))
    for cfg in ordered:
        latest: dict[str, RunRecord] = {}
        for r in sorted(cfg.runs, key=lambda r: (r.start_time or 0, r.run_id)):
            if _seed(r) in latest:
                cfg.superseded.append(latest[_seed(r)])
            latest[_seed(r)] = r
        cfg.runs = sorted(latest.values(), key=lambda r: (_natural(_seed(r)), r.run_id))
        cfg.incomplete.sort(key=lambda r: (r.name, r.run_id))
        scores = [s for s in (run_score(r, metric) for r in cfg.runs) if s is not None]
        cfg.score = mean_std(scores)[0] if scores else None
    return Table(records, fields, swept, shown, constant, rows_key, cols_key, facet_keys,
                 config_keys, ordered, axes, metric, dict(flags or {}))


def config_label(cfg: Config, keys: list[str]) -> str:
    """Short human label of a configuration, e.g. ``vgg19 · freeze=last4 · lr=1e-05``."""
    return " · ".join(str(cfg.get(k)) if k == "backbone" else f"{k}={cfg.get(k)}" for k in keys)
