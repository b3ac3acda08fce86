"""Is the difference real? Along every swept key, each value against a baseline value.

For each swept key (``table.axes``: freeze, backbone, lr, ...) the
configurations that agree on every other swept key form a group; in each
group every value of the key is compared with the group's baseline value:
``freeze=all`` (transfer learning) for ``freeze``; for other keys the value
given as ``--baseline key=value``, else the value whose configuration scores
best on validation (a freeze group without ``freeze=all`` falls back to that
too, and says so).

The unit of every comparison is the test image (Dietterich 1998; Bouthillier et al.,
MLSys 2021). A configuration's runs are grouped by the test images they were scored on
(``_strata``): seeds, and k-fold folds, which all predict the one untouched test split,
are replicates of training on the same images; each ``dataset.split_seed`` (or a fold
whose test images differ, e.g. under ``dataset.duplicates=drop``) is a test set of its
own, a stratum. ``stats.paired_image_test`` averages each image's correctness over a
side's runs on its test set and tests the images' differences with an exact sign-flip
test (McNemar's with one run per side), an image in several test sets being one unit;
the difference and its CI come from a bootstrap over images. So more seeds never count
as more images, and runs on other images are never paired on an intersection: a test
set only one side ran on is left out, and said so. Holm's adjustment runs over the
p-values the verdicts use, all comparisons of the report together (``stats.holm``).

A verdict needs the adjusted p < 0.05 and a CI that excludes 0, its side the sign of
the difference; with >= 3 replicate pairs (seeds, folds, split seeds) the across-run
interval of their test-accuracy differences must exclude 0 on the same side as well
("does it hold across training runs"). Comparisons involving a flagged run (never beat
the majority rate, diverged: flags.py) are reported as such, not as verdicts. With
k-fold the out-of-fold (validation) scores only choose (selection.py); a missing fold
gives a note (folds.py), never another pairing.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from transferlab.report import folds, stats
from transferlab.report.baselines import baseline_of, check_baselines
from transferlab.report.collect import Predictions, RunRecord
from transferlab.report.table import Config, Table, config_label

NOT_DISTINGUISHABLE = "not distinguishable at this test-set size"
NOT_DISTINGUISHABLE_SEEDS = "not distinguishable across seeds"
MIN_SEEDS = 3  # from here on the across-seed interval must agree
ADD_SEEDS = "seed=1,2,3"


@dataclass
class PairResult:
    """One replicate pair (same seed, fold, split seed): baseline run vs candidate run on
    the same test images; a detail row, the comparison's test pools all runs."""

    seed: str
    base_run: RunRecord
    cand_run: RunRecord
    n_images: int = 0
    b: int = 0          # baseline right, candidate wrong
    c: int = 0          # baseline wrong, candidate right
    diff: float | None = None
    low: float | None = None
    high: float | None = None
    p_value: float | None = None
    verdict: str = ""   # why the pair could not be compared, else empty
    paths: list[str] = field(default_factory=list, repr=False)
    base_ok: np.ndarray | None = field(default=None, repr=False)
    cand_ok: np.ndarray | None = field(default=None, repr=False)


@dataclass
class Comparison:
    key: str                    # the swept key, e.g. "freeze", "lr"
    group: str                  # the other swept keys' values, e.g. "vgg19 · lr=1e-05"
    baseline_value: str
    candidate_value: str
    baseline_why: str           # "transfer learning", "best by val_acc", "--baseline"
    baseline: Config
    candidate: Config
    pairs: list[PairResult] = field(default_factory=list)
    n_images: int = 0           # distinct test images (the test's units)
    n_test_sets: int = 0        # strata: test sets both sides ran on
    b: int = 0                  # images the baseline gets right more often (runs averaged)
    c: int = 0                  # images the candidate gets right more often
    diff: float | None = None
    low: float | None = None
    high: float | None = None
    p_value: float | None = None
    p_adjusted: float | None = None
    method: str = ""            # which path the comparison took, in words
    seeds: stats.Interval | None = None
    seeds_paired: bool = True
    seeds_verdict: str = ""
    flags: list[str] = field(default_factory=list)
    verdict: str = ""
    note: str = ""

    @property
    def strategy(self) -> str:
        """The candidate's value (its freeze label for ``key == "freeze"``)."""
        return self.candidate_value


@dataclass
class Missing:
    group: str
    reason: str


def align(a: Predictions, b: Predictions) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The image paths of two runs tested on the same images, and their correctness.

    Raises:
        ValueError: the runs were tested on different images. Never an intersection:
            other test sets enter a comparison as strata of their own (``_strata``).
    """
    if a.paths != b.paths:  # Predictions are sorted by path
        only = len(set(a.paths) ^ set(b.paths))
        raise ValueError(f"the runs were tested on different images ({len(a.paths)} and "
                         f"{len(b.paths)}, {only} in one only): compare them as separate test "
                         "sets (stats.paired_image_test strata), not on the common images")
    return list(a.paths), a.correct.astype(bool), b.correct.astype(bool)


def compare_pair(seed: str, base: RunRecord, cand: RunRecord) -> PairResult:
    """Exact McNemar p and the CI of one replicate pair (a detail row)."""
    res = PairResult(seed, base, cand)
    missing = [r.name for r in (base, cand) if r.predictions is None]
    if missing:
        res.verdict = f"no {', '.join(missing)} test predictions: cannot pair images"
        return res
    if base.predictions.paths != cand.predictions.paths:
        res.verdict = "tested on different images: not paired (each test set is a stratum)"
        return res
    res.paths, res.base_ok, res.cand_ok = align(base.predictions, cand.predictions)
    res.n_images = len(res.paths)
    if not res.n_images:
        res.verdict = "no test images"
        return res
    t = stats.paired_image_test([(res.paths, res.base_ok, res.cand_ok)])
    res.b, res.c, res.p_value = t.worse, t.better, t.p_value  # exact McNemar
    res.diff, res.low, res.high = t.diff, t.low, t.high
    return res


def _matched(base: Config, cand: Config) -> list[tuple[str, RunRecord, RunRecord]]:
    """Replicate pairs with the same seed (and fold, split seed): the detail rows."""
    bs, cs = base.seeds, cand.seeds
    return [(s, bs[s], cs[s]) for s in bs if s in cs]


def compare(table: Table, baselines: dict[str, str] | None = None
            ) -> tuple[list[Comparison], list[Missing]]:
    """Every comparison of the report, in display order, Holm-adjusted together.

    Raises:
        ReportError: a ``baselines`` entry names no swept key or value (check_baselines).
    """
    user = check_baselines(table, baselines)
    comps: list[Comparison] = []
    missing: list[Missing] = []
    if not table.axes:
        missing.append(Missing("all runs", "nothing is swept (one configuration): "
                                           "nothing to compare"))
    for key in table.axes:
        others = [a for a in table.axes if a != key]
        groups: dict[tuple, list[Config]] = defaultdict(list)
        for cfg in table.configs:  # already in display order
            groups[tuple(cfg.get(k) for k in others)].append(cfg)
        for cfgs in groups.values():
            label = config_label(cfgs[0], others) or "all runs"
            if sum(1 for c in cfgs if c.runs) < 2:
                continue
            base, why, note = baseline_of(key, cfgs, user, table.metric)
            if note:
                missing.append(Missing(f"{key}: {label}", note))
            if base is None:
                missing.append(Missing(f"{key}: {label}", why))
                continue
            for cand in cfgs:
                if cand is base or not cand.runs:
                    continue
                comps.append(_compare(table, key, label, base, cand, why))
    for comp, p in zip((c for c in comps if c.p_value is not None),
                       stats.holm([c.p_value for c in comps if c.p_value is not None])):
        comp.p_adjusted = p
    for comp in comps:
        _verdict(comp)
    return comps, missing


def _compare(table: Table, key: str, label: str, base: Config, cand: Config,
             why: str) -> Comparison:
    comp = Comparison(key, label, str(base.get(key)), str(cand.get(key)), why, base, cand)
    comp.pairs = [compare_pair(s, b, c) for s, b, c in _matched(base, cand)]
    for run in base.runs + cand.runs:
        for flag in table.flags.get(run.run_id, []):
            if (text := f"{run.name}: {flag}") not in comp.flags:
                comp.flags.append(text)
    strata, left_out = _strata(base, cand)
    notes = left_out + folds.missing(base, f"{key}={comp.baseline_value}") + folds.missing(
        cand, f"{key}={comp.candidate_value}")
    if strata:
        res = stats.paired_image_test(strata)
        comp.p_value, comp.diff, comp.low, comp.high = res.p_value, res.diff, res.low, res.high
        comp.n_images, comp.n_test_sets, comp.b, comp.c = (res.n_images, res.n_test_sets,
                                                           res.worse, res.better)
        comp.method = _method(res)
    _seed_interval(comp, base, cand)
    comp.note = "; ".join(notes)
    return comp


def _strata(base: Config, cand: Config):
    """``(paths, base correctness (runs, n), candidate correctness (runs, n))`` per test set
    both sides were scored on, and a note per test set only one side has."""
    by_set: dict[tuple, tuple[list, list]] = defaultdict(lambda: ([], []))
    notes = []
    for side, cfg in enumerate((base, cand)):
        for r in cfg.runs:
            if r.predictions is None:
                notes.append(f"{r.name}: no test predictions, left out")
            else:
                by_set[tuple(r.predictions.paths)][side].append(r)
    strata = []
    for paths, (bs, cs) in by_set.items():
        if bs and cs:
            strata.append((list(paths), np.array([r.predictions.correct for r in bs], bool),
                           np.array([r.predictions.correct for r in cs], bool)))
        else:
            names = ", ".join(r.name for r in bs + cs)
            notes.append(f"{names}: tested on {len(paths)} images the other side was never "
                         "tested on, left out (runs are paired only on the same test set)")
    return strata, notes


def _method(res: stats.ImageTest) -> str:
    """Which path the comparison took, for the report's "test" column."""
    if res.runs == ((1, 1),):
        return f"one test set, {res.n_images} images, one run per side: exact McNemar"
    (nb, nc), *rest = res.runs
    per = (f"{nb} run(s) per side" if nb == nc else f"{nb} baseline / {nc} candidate runs")
    if rest and any(r != (nb, nc) for r in rest):
        per = "baseline/candidate runs per test set " + ", ".join(f"{a}/{b}" for a, b in res.runs)
    where = (f"one test set, {res.n_images} images" if res.n_test_sets == 1 else
             f"{res.n_test_sets} test sets as strata, {res.n_images} distinct images")
    return f"{where}, {per} averaged per image: exact sign-flip test over images"


def _seed_interval(comp: Comparison, base: Config, cand: Config) -> None:
    usable = [p for p in comp.pairs if p.p_value is not None]
    if len(usable) >= 2:
        comp.seeds = stats.t_interval([p.cand_run.metrics["test_acc"] -
                                       p.base_run.metrics["test_acc"] for p in usable])
    elif len(base.runs) >= 2 and len(cand.runs) >= 2:
        comp.seeds = stats.welch_interval([r.metrics["test_acc"] for r in base.runs],
                                          [r.metrics["test_acc"] for r in cand.runs])
        comp.seeds_paired = False
    if comp.seeds is None or comp.seeds.low is None:
        return
    if comp.seeds.contains_zero:
        comp.seeds_verdict = NOT_DISTINGUISHABLE_SEEDS
    else:
        side = "better" if comp.seeds.mean > 0 else "worse"
        comp.seeds_verdict = f"{side} than {comp.key}={comp.baseline_value} across seeds"


def _verdict(comp: Comparison) -> None:
    against = f"{comp.key}={comp.baseline_value}"
    if comp.p_value is None or comp.diff is None:
        why = comp.note or next((p.verdict for p in comp.pairs if p.verdict), "")
        comp.verdict = "cannot compare: no test set both sides were scored on" + (
            f" ({why})" if why else "")
        return
    n = comp.seeds.n if comp.seeds is not None else 1
    extra = []
    if max(len(comp.baseline.runs), len(comp.candidate.runs)) == 1:
        extra.append(f"one training run per side: add seeds ({ADD_SEEDS}) to see whether it "
                     "holds across training runs")
    elif comp.seeds is not None and n < MIN_SEEDS:
        extra.append(f"{n} seeds: the across-seed interval counts from {MIN_SEEDS} seeds on "
                     f"({ADD_SEEDS})")
    comp.note = "; ".join(x for x in [comp.note, *extra] if x)
    if comp.flags:
        comp.verdict = "no verdict: " + "; ".join(comp.flags)
        return
    real = stats.distinguishable(comp.p_adjusted, comp.low, comp.high)
    side = "better" if comp.diff > 0 else "worse"  # real needs a CI off 0: diff != 0
    seeds = comp.seeds
    if not real:
        comp.verdict = NOT_DISTINGUISHABLE
    elif n >= MIN_SEEDS and seeds is not None and seeds.low is not None and (
            seeds.contains_zero or (seeds.mean > 0) != (side == "better")):
        comp.verdict = (f"{NOT_DISTINGUISHABLE_SEEDS} (the test images alone say {side} than "
                        f"{against})")
    else:
        comp.verdict = f"{side} than {against}"
