"""Is the difference real? Along every swept key, each value against a baseline value.

For each swept key (``table.axes``: freeze, backbone, lr, ...) the
configurations that agree on every other swept key form a group; in each
group every value of the key is compared with the group's baseline value:
``freeze=all`` (transfer learning) for ``freeze``; for other keys the value
given as ``--baseline key=value``, else the value whose configuration scores
best on validation (a freeze group without ``freeze=all`` falls back to that
too, and says so). Comparisons are paired on the same test images (by path):

* per seed pair: exact McNemar p and a paired bootstrap 95% CI (detail rows);
* per comparison: McNemar on the discordant counts summed over the seed
  pairs (each pair is an independent pair of training runs, so under "no
  difference" every discordant image is a fair coin: an exact stratified sign
  test), the mean difference with a bootstrap CI over images, and across >= 2
  seeds a t-interval (Welch when seeds do not match);
* Holm's adjustment over ALL comparisons of the report (``stats.holm``).

A verdict needs the adjusted p < 0.05 and a CI that excludes 0; with >= 3
seeds the across-seed interval must exclude 0 on the same side as well.
Comparisons involving a flagged run (never beat the majority rate, diverged:
flags.py) are reported as such, not as verdicts.

k-fold (``dataset.folds``): where both sides ran every fold of a seed, they are
paired once per seed on their out-of-fold predictions of the train +
validation pool (oof.py); otherwise fold is paired with fold (and seed with
seed) on the shared held-out test split, like seeds.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from transferlab.report import oof, stats
from transferlab.report.collect import Predictions, ReportError, RunRecord
from transferlab.report.metric import rank_key
from transferlab.report.table import BASELINE, Config, Table, config_label

NOT_DISTINGUISHABLE = "not distinguishable at this test-set size"
NOT_DISTINGUISHABLE_SEEDS = "not distinguishable across seeds"
MIN_SEEDS = 3  # from here on the across-seed interval must agree
ADD_SEEDS = "seed=1,2,3"


@dataclass
class PairResult:
    """One seed pair: baseline run vs candidate run on their common test images."""

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
    n_images: int = 0
    b: int = 0
    c: int = 0
    diff: float | None = None
    low: float | None = None
    high: float | None = None
    p_value: float | None = None
    p_adjusted: float | None = None
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
    """Common image paths and the correctness of ``a`` and ``b`` on them."""
    common = sorted(set(a.paths) & set(b.paths))
    ia = {p: i for i, p in enumerate(a.paths)}
    ib = {p: i for i, p in enumerate(b.paths)}
    return (common, a.correct[[ia[p] for p in common]].astype(bool),
            b.correct[[ib[p] for p in common]].astype(bool))


def compare_pair(seed: str, base: RunRecord, cand: RunRecord, seed_rng: int = 0) -> PairResult:
    res = PairResult(seed, base, cand)
    missing = [r.name for r in (base, cand) if r.predictions is None]
    if missing:
        res.verdict = f"no {', '.join(missing)} test predictions: cannot pair images"
        return res
    res.paths, res.base_ok, res.cand_ok = align(base.predictions, cand.predictions)
    res.n_images = len(res.paths)
    if not res.n_images:
        res.verdict = "no common test images: different test sets cannot be paired"
        return res
    res.b, res.c = stats.discordant(res.base_ok, res.cand_ok)
    res.p_value = stats.mcnemar_exact(res.b, res.c)
    res.diff, res.low, res.high = stats.paired_bootstrap_ci(res.base_ok, res.cand_ok,
                                                            seed=seed_rng)
    return res


def _pair_seeds(base: Config, cand: Config) -> tuple[list[tuple[str, RunRecord, RunRecord]], bool]:
    bs, cs = base.seeds, cand.seeds
    common = [s for s in bs if s in cs]
    if common:
        return [(s, bs[s], cs[s]) for s in common], True
    return [(f"{sb}/{sc}", bs[sb], cs[sc]) for sb, sc in zip(bs, cs)], False


def _same(a, b) -> bool:
    """Equal as text or as numbers (``lr=1e-4`` names the runs logged as ``0.0001``)."""
    try:
        return str(a) == str(b) or float(a) == float(b)
    except (TypeError, ValueError):
        return False


def check_baselines(table: Table, baselines: dict[str, str] | None) -> dict[str, str]:
    """``--baseline key=value`` pairs, checked against the selection.

    Raises:
        ReportError: the key is not swept, or no run has that value (lists what there is).
    """
    out = {}
    for key, value in (baselines or {}).items():
        if key not in table.axes:
            raise ReportError(f"--baseline {key}={value}: {key} is not a swept key of these "
                              f"runs; swept: {', '.join(table.axes) or '(none)'}")
        have = sorted({str(c.get(key)) for c in table.configs})
        if not any(_same(v, value) for v in have):
            raise ReportError(f"--baseline {key}={value}: no run has {key}={value}; values: "
                              f"{', '.join(have)}")
        out[key] = value
    return out


def _baseline(key: str, cfgs: list[Config], user: dict, metric: str):
    """(baseline config, why, note) of one group, or (None, reason, "")."""
    if key in user:
        base = next((c for c in cfgs if _same(c.get(key), user[key]) and c.runs), None)
        return (base, "--baseline", "") if base else (
            None, f"no finished {key}={user[key]} run (--baseline)", "")
    if key == BASELINE[0]:
        base = next((c for c in cfgs if c.get(key) == BASELINE[1] and c.runs), None)
        if base is not None:
            return base, "transfer learning", ""
    ranked = sorted((c for c in cfgs if c.runs), key=lambda c: rank_key(c.score, metric))
    if not ranked:
        return None, "no finished run", ""
    why = f"best by {metric}" if ranked[0].score is not None else f"first ({metric} not logged)"
    note = (f"no finished {key}={BASELINE[1]} run (transfer-learning baseline): compared "
            f"against the {why}, {key}={ranked[0].get(key)}") if key == BASELINE[0] else ""
    return ranked[0], why, note


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
            base, why, note = _baseline(key, cfgs, user, table.metric)
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
    pairs, matched = oof.pairs(base, cand), True
    if not pairs:
        pairs, matched = _pair_seeds(base, cand)
    comp.pairs = [compare_pair(s, b, c) for s, b, c in pairs]
    comp.seeds_paired = matched
    for p in comp.pairs:
        for run in oof.members(p.base_run) + oof.members(p.cand_run):
            for flag in table.flags.get(run.run_id, []):
                text = f"{run.name}: {flag}"
                if text not in comp.flags:
                    comp.flags.append(text)
    usable = [p for p in comp.pairs if p.p_value is not None]
    if usable:
        _pool(comp, usable)
    _seed_interval(comp, base, cand, matched)
    return comp


def _pool(comp: Comparison, pairs: list[PairResult]) -> None:
    """Summed discordant counts, mean difference and its CI on the images all pairs share."""
    common = sorted(set.intersection(*(set(p.paths) for p in pairs)))
    comp.n_images = len(common)
    comp.b, comp.c = sum(p.b for p in pairs), sum(p.c for p in pairs)
    comp.p_value = stats.mcnemar_exact(comp.b, comp.c)
    if len(pairs) == 1:
        comp.diff, comp.low, comp.high = pairs[0].diff, pairs[0].low, pairs[0].high
        return
    if not common:
        return
    rows_a, rows_b = [], []
    for p in pairs:
        idx = {path: i for i, path in enumerate(p.paths)}
        sel = [idx[path] for path in common]
        rows_a.append(p.base_ok[sel])
        rows_b.append(p.cand_ok[sel])
    comp.diff, comp.low, comp.high = stats.paired_bootstrap_ci_seeds(np.array(rows_a),
                                                                     np.array(rows_b))


def _seed_interval(comp: Comparison, base: Config, cand: Config, matched: bool) -> None:
    if matched and len(comp.pairs) >= 2:
        diffs = [p.cand_run.metrics["test_acc"] - p.base_run.metrics["test_acc"]
                 for p in comp.pairs]
        comp.seeds = stats.t_interval(diffs)
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
    if comp.p_value is None:
        comp.verdict = next((p.verdict for p in comp.pairs if p.verdict), "cannot pair images")
        return
    n = len(comp.pairs)
    if (note := oof.note(comp.pairs[0].base_run, comp.n_images, n)) is not None:
        comp.note = note
    elif n == 1:
        comp.note = (f"one training run per side (seed {comp.pairs[0].seed}): add seeds "
                     f"({ADD_SEEDS}) to see whether it holds across training runs")
    elif n < MIN_SEEDS:
        comp.note = (f"{n} seeds: the across-seed interval counts from {MIN_SEEDS} seeds on "
                     f"({ADD_SEEDS})")
    if comp.flags:
        comp.verdict = "no verdict: " + "; ".join(comp.flags)
        return
    real = stats.distinguishable(comp.p_adjusted, comp.low, comp.high)
    side = "better" if (comp.diff or 0) > 0 else "worse"
    if not real:
        comp.verdict = NOT_DISTINGUISHABLE
    elif n >= MIN_SEEDS and comp.seeds is not None and comp.seeds.low is not None and (
            comp.seeds.contains_zero or (comp.seeds.mean > 0) != (side == "better")):
        comp.verdict = (f"{NOT_DISTINGUISHABLE_SEEDS} (the test images alone say {side} than "
                        f"{against})")
    else:
        comp.verdict = f"{side} than {against}"
