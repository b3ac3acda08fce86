"""Is the difference real? Each freezing strategy against transfer learning (freeze=all).

Configurations that agree on every swept key except ``freeze`` form a group;
in each group every strategy is compared with the ``freeze=all`` baseline on
the same test images (paired by image path): exact McNemar test and a paired
bootstrap CI of the accuracy difference per seed pair, and with >= 2 seeds a
t-interval of the difference across seeds.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from transferlab.report import stats
from transferlab.report.collect import Predictions, RunRecord
from transferlab.report.table import BASELINE, Config, Table, config_label

NOT_DISTINGUISHABLE = "not distinguishable at this test-set size"
NOT_DISTINGUISHABLE_SEEDS = "not distinguishable across seeds"


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
    verdict: str = ""


@dataclass
class Comparison:
    group: str                  # e.g. "vgg19 · lr=1e-05"
    strategy: str               # the candidate's freeze label
    baseline: Config
    candidate: Config
    pairs: list[PairResult] = field(default_factory=list)
    seeds: stats.Interval | None = None
    seeds_paired: bool = True
    seeds_verdict: str = ""


@dataclass
class Missing:
    group: str
    reason: str


def align(a: Predictions, b: Predictions) -> tuple[np.ndarray, np.ndarray]:
    """Correctness of ``a`` and ``b`` on the images both have, matched by path."""
    common = sorted(set(a.paths) & set(b.paths))
    ia = {p: i for i, p in enumerate(a.paths)}
    ib = {p: i for i, p in enumerate(b.paths)}
    return (a.correct[[ia[p] for p in common]].astype(bool),
            b.correct[[ib[p] for p in common]].astype(bool))


def compare_pair(seed: str, base: RunRecord, cand: RunRecord, seed_rng: int = 0) -> PairResult:
    res = PairResult(seed, base, cand)
    missing = [r.name for r in (base, cand) if r.predictions is None]
    if missing:
        res.verdict = f"no {', '.join(missing)} test predictions: cannot pair images"
        return res
    ca, cb = align(base.predictions, cand.predictions)
    res.n_images = int(ca.size)
    if ca.size == 0:
        res.verdict = "no common test images: different test sets cannot be paired"
        return res
    res.b, res.c = stats.discordant(ca, cb)
    res.p_value = stats.mcnemar_exact(res.b, res.c)
    res.diff, res.low, res.high = stats.paired_bootstrap_ci(ca, cb, seed=seed_rng)
    if stats.distinguishable(res.p_value, res.low, res.high):
        res.verdict = f"{'better' if res.diff > 0 else 'worse'} than freeze=all"
    else:
        res.verdict = NOT_DISTINGUISHABLE
    return res


def _pair_seeds(base: Config, cand: Config) -> tuple[list[tuple[str, RunRecord, RunRecord]], bool]:
    bs, cs = base.seeds, cand.seeds
    common = [s for s in bs if s in cs]
    if common:
        return [(s, bs[s], cs[s]) for s in common], True
    pairs = [(f"{sb}/{sc}", bs[sb], cs[sc]) for sb, sc in zip(bs, cs)]
    return pairs, False


def compare(table: Table) -> tuple[list[Comparison], list[Missing]]:
    """All strategy-vs-baseline comparisons of the table, in display order."""
    key, base_value = BASELINE
    if key not in table.config_keys:
        return [], [Missing("all runs", f"{key} is not swept: nothing to compare")]
    # keys that define a group: everything but the freeze label and its own params
    others = [k for k in table.config_keys if k != key
              and not (k.startswith(key + ".") and table.determined(k, [key]))]
    lead = [k for k in [table.rows_key, *table.facet_keys] if k in others]
    label_keys = lead + [k for k in others if k not in lead and not table.determined(k, lead)]
    groups: dict[tuple, list[Config]] = defaultdict(list)
    for cfg in table.configs:  # already in display order
        groups[tuple(cfg.get(k) for k in others)].append(cfg)
    comps, missing = [], []
    for gk, cfgs in groups.items():
        label = config_label(cfgs[0], label_keys) or "all runs"
        base = next((c for c in cfgs if c.get(key) == base_value), None)
        if base is None or not base.runs:
            if any(c.runs for c in cfgs):
                missing.append(Missing(label, f"no finished {key}={base_value} run "
                                              "(transfer-learning baseline)"))
            continue
        for cand in cfgs:
            if cand is base or not cand.runs:
                continue
            comp = Comparison(label, str(cand.get(key)), base, cand)
            pairs, matched = _pair_seeds(base, cand)
            comp.pairs = [compare_pair(s, b, c) for s, b, c in pairs]
            comp.seeds_paired = matched
            _seed_interval(comp, base, cand, matched)
            comps.append(comp)
    return comps, missing


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
        comp.seeds_verdict = f"{'better' if comp.seeds.mean > 0 else 'worse'} than freeze=all " \
                             "across seeds"
