"""The report's answer: the configuration chosen on validation, its test score, the baselines.

``choose`` ranks configurations by the selection metric (mean over seeds, and
k-fold folds, of each job's validation score, metric.py) and reports the chosen one's TEST
scores as the estimate of how it does on new images: the test split played
no part in choosing it. ``test_sets`` describes each test split the runs were
scored on (class counts, imbalance, majority-class rate), and
``reference_rows`` turns the majority class and the logged linear model into
rows the leaderboard shows beside the runs.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from transferlab.report import stats
from transferlab.report.metric import higher_is_better, rank_key
from transferlab.report.table import Config, Table, config_label

IMBALANCE_WARN = 1.5   # largest / smallest class of the test split
BALANCED_METRIC = "val_balanced_acc"
ESTIMATES = ("test_acc", "test_balanced_acc", "test_macro_f1", "test_auc", "test_top5_acc")


@dataclass
class Selection:
    metric: str
    chosen: Config | None = None
    label: str = ""
    score: float | None = None
    n_seeds: int = 0  # runs the score averages: seeds x folds
    n_folds: int = 0  # k-fold folds among them (0: no k-fold)
    estimates: dict[str, tuple] = field(default_factory=dict)  # metric -> (mean, std, n)
    interval: tuple[float, float] | None = None
    interval_kind: str = ""
    note: str = ""
    flags: list[str] = field(default_factory=list)  # of the chosen configuration's runs


def choose(table: Table) -> Selection:
    """The configuration with the best selection score; ties go to more seeds, then to the
    first in display order (the note says so)."""
    sel = Selection(table.metric)
    ranked = sorted((c for c in table.configs if c.runs),
                    key=lambda c: (rank_key(c.score, table.metric), -len(c.runs)))
    if not ranked or ranked[0].score is None:
        sel.note = (f"no finished run logged {table.metric}: nothing chosen "
                    "(rank by another validation metric with --metric)")
        return sel
    best = ranked[0]
    sel.chosen, sel.score, sel.n_seeds = best, best.score, len(best.runs)
    sel.n_folds = best.n_folds
    sel.label = config_label(best, table.axes) or "the only configuration"
    for m in ESTIMATES:
        if (stat := best.stat(m)) is not None:
            sel.estimates[m] = stat
    sel.flags = sorted({f"{r.name}: {f}" for r in best.runs for f in table.flags.get(r.run_id, [])})
    ties = [c for c in ranked[1:] if c.score == best.score]
    if ties:
        sel.note = (f"tied on {table.metric} with {len(ties)} other configuration(s) "
                    f"({config_label(ties[0], table.axes)}); shown: the one with more seeds, "
                    "else the first in display order")
    sel.interval, sel.interval_kind = accuracy_interval(best)
    return sel


def accuracy_interval(cfg: Config) -> tuple[tuple[float, float] | None, str]:
    """The 95% interval of a configuration's test accuracy, and what it is.

    The unit is the test image: one run gives the Wilson interval over its test images;
    several (seeds, folds, split seeds) a bootstrap over the test images of each image's
    correctness averaged over the runs on its test set (stats.accuracy_ci), so it covers
    test-set sampling, which a t-interval over the runs' accuracies on one test set does
    not (identical seeds would give it zero width).
    """
    runs = [r for r in cfg.runs if r.predictions is not None and len(r.predictions.paths)]
    if len(cfg.runs) == 1:
        r = cfg.runs[0]
        n = int(r.metrics.get("test_images") or (len(r.predictions.paths) if runs else 0))
        if not n:
            return None, ""
        return stats.wilson(round(r.metrics["test_acc"] * n), n), (
            f"Wilson interval, {n} test images, one training run")
    if len(runs) < len(cfg.runs) or not runs:
        return None, (f"no interval: {len(cfg.runs) - len(runs)} of {len(cfg.runs)} runs have "
                      "no test predictions")
    by_set: dict[tuple, list] = defaultdict(list)
    for r in runs:
        by_set[tuple(r.predictions.paths)].append(r.predictions.correct)
    _, low, high = stats.accuracy_ci([(list(p), np.array(c, bool)) for p, c in by_set.items()])
    n = len({p for paths in by_set for p in paths})
    sets = f"{len(by_set)} test sets, " if len(by_set) > 1 else ""
    folds = f" ({cfg.n_folds} folds x seeds)" if cfg.n_folds else ""
    return (low, high), (f"bootstrap over {sets}{n} test images of each image's correctness "
                         f"averaged over {len(runs)} runs{folds}")


@dataclass
class TestSet:
    """One test split as the runs' predictions show it."""

    fingerprint: str                    # data fingerprint of its first run (tag)
    n: int
    counts: list[tuple[str, int]]       # (class, images), class order
    ratio: float                        # largest / smallest class (inf: a class has none)
    majority_class: str
    majority_rate: float                # always answering the majority class
    n_runs: int
    logged_majority: float | None = None  # ref_majority_test_acc (train's majority class)
    fingerprints: frozenset = frozenset()  # every data fingerprint scored on this test split

    @property
    def imbalanced(self) -> bool:
        return self.ratio > IMBALANCE_WARN

    @property
    def minority(self) -> tuple[str, int]:
        return min(self.counts, key=lambda c: c[1])


def _test_key(rec) -> tuple:
    """The test split a run was scored on: its data fingerprint, or with k-fold (whose folds
    differ in train/validation only) the test images and labels themselves."""
    if rec.params.get("dataset.fold") in (None, "None", "null"):
        return (rec.tags.get("data_fingerprint", ""),)
    p = rec.predictions
    return ("folds", tuple(p.paths), p.true.tobytes())


def test_sets(table: Table) -> list[TestSet]:
    """Per test split (tag ``data_fingerprint``; the k-fold folds of one split share their
    test split), the test split's class balance."""
    by_fp: dict[tuple, list] = defaultdict(list)
    for cfg in table.configs:
        for r in cfg.runs:
            if r.predictions is not None:
                by_fp[_test_key(r)].append(r)
    out = []
    for runs in sorted(by_fp.values(), key=lambda rs: rs[0].tags.get("data_fingerprint", "")):
        rec = runs[0]
        fp = rec.tags.get("data_fingerprint", "")
        p = rec.predictions
        k = max(p.n_classes, len(rec.classes or []))
        names = rec.classes if rec.classes and len(rec.classes) >= k else [str(i) for i in range(k)]
        counts = np.bincount(p.true, minlength=k) if len(p.true) else np.zeros(k, int)
        n = int(counts.sum())
        if n == 0:
            continue
        top = int(np.argmax(counts))
        ratio = float(counts.max() / counts.min()) if counts.min() > 0 else float("inf")
        out.append(TestSet(fp, n, [(names[i], int(c)) for i, c in enumerate(counts)], ratio,
                           names[top], float(counts[top] / n), len(runs),
                           rec.metrics.get("ref_majority_test_acc"),
                           frozenset(r.tags.get("data_fingerprint", "") for r in runs)))
    return out


def imbalance_warnings(sets: list[TestSet], metric: str) -> list[str]:
    """A warning per imbalanced test split, suggesting balanced accuracy where it is not used."""
    out = []
    for ts in sets:
        if not ts.imbalanced:
            continue
        small, n_small = ts.minority
        ratio = "∞" if ts.ratio == float("inf") else f"{ts.ratio:.1f}"
        text = (f"The test split is imbalanced: {ts.majority_class!r} has "
                f"{dict(ts.counts)[ts.majority_class]} of {ts.n} images, {small!r} {n_small} "
                f"(ratio {ratio}:1). Always answering {ts.majority_class!r} scores accuracy "
                f"{ts.majority_rate:.3f}: read balanced accuracy and macro F1, not accuracy.")
        if metric != BALANCED_METRIC:
            text += (f" Ranked by {metric} here; rank by balanced accuracy with --metric "
                     f"{BALANCED_METRIC} (a sweep's own report: report.metric={BALANCED_METRIC}).")
        out.append(text)
    return out


def reference_rows(table: Table, sets: list[TestSet]) -> list[dict]:
    """Leaderboard rows for the majority class and the logged linear model (per test split)."""
    rows = []
    for ts in sets:
        k = sum(1 for _, c in ts.counts if c > 0)
        rate = ts.majority_rate if ts.logged_majority is None else ts.logged_majority
        suffix = f" ({ts.fingerprint[:8]})" if len(sets) > 1 and ts.fingerprint else ""
        same = [r for c in table.configs for r in c.runs
                if r.tags.get("data_fingerprint", "") in (ts.fingerprints or {ts.fingerprint})]
        maj = next((r for r in same if "ref_majority_test_acc" in r.metrics), None)
        # a constant answer: right on the majority's share, recall 1 on one class of k
        rows.append(dict(name=f"majority class, always {ts.majority_class!r}{suffix}",
                         test_acc=rate, test_balanced_acc=1.0 / k if k else None,
                         test_macro_f1=(2 * rate / (1 + rate)) / k if k else None,
                         test_auc=0.5,
                         val=maj.metrics.get(f"ref_majority_{table.metric}") if maj else None))
        run = next((r for r in same if "ref_logreg_test_acc" in r.metrics), None)
        if run is not None:
            m = run.metrics
            rows.append(dict(name="logistic regression on downsampled pixels" + suffix,
                             test_acc=m.get("ref_logreg_test_acc"),
                             test_balanced_acc=m.get("ref_logreg_test_balanced_acc"),
                             test_macro_f1=m.get("ref_logreg_test_macro_f1"),
                             test_auc=m.get("ref_logreg_test_auc"),
                             val=m.get(f"ref_logreg_{table.metric}")))
    return rows


def direction(metric: str) -> str:
    return "higher is better" if higher_is_better(metric) else "lower is better"
