"""Calibration of the report's verdicts (issue 19): how often "better/worse than" is said
when nothing differs, and how often a true difference is found.

Simulated runs go through the report's own comparison code (``significance.compare`` over
``table.build_table``, Holm, CIs, the across-seed gate, the verdict text), as RunRecords
with test predictions; "before" is the same code at commit 4bb4837 (git show), "after"
the working tree.

The model of per-image correctness, as training makes it:

* a test image i has a difficulty q_i ~ Beta(0.7 k, 0.3 k) (mean accuracy 0.7; k = 1 by
  default: two equally accurate configurations disagree on 21% of the images);
* configuration c has its own tendency on the image, z_ci ~ Bernoulli(q_ci), with
  q_ci = q_i, or q_i + (1 - q_i) / 3 for a candidate 0.10 better on average;
* each training run (seed, k-fold fold) keeps z_ci with probability ``rho`` and redraws
  it otherwise: rho = 0.7 is training noise, rho = 1 the extreme of identical seeds.

Designs: one test set of n images; 3 split seeds (each test set n images drawn from a
pool of 6 n, so they overlap, z shared across them); 5 folds (5 fold runs per seed on the
one test split). 1 baseline + 7 candidates of equal true accuracy, 7 comparisons.
"False" counts repetitions with at least one "better/worse than" verdict (family-wise);
its bound is 0.05 + 2 Monte-Carlo standard errors. Power: one candidate +0.10, 200 test
images, 3 seeds, rho 0.7; alone (one comparison) and among 6 null candidates (Holm over 7).

    .venv/bin/python benchmarks/verdict_calibration.py [--reps 400] [--spread 1] [--only after]
"""

from __future__ import annotations

import argparse
import gc
import importlib
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
from transferlab.report import significance, stats  # noqa: E402
from transferlab.report.collect import Predictions, RunRecord  # noqa: E402
from transferlab.report.table import build_table  # noqa: E402

OLD_COMMIT = "4bb4837"
DESIGNS = {"one test set": (1, 1), "3 split seeds": (3, 1), "5 folds": (1, 5)}  # (sets, folds)
LRS = [f"0.00{i}" for i in range(1, 9)]  # 8 configurations; the first is the baseline
REAL = ("better than", "worse than")


def old_significance():
    """``significance`` as it was at OLD_COMMIT (with its oof and stats), importable."""
    pkg = Path(tempfile.mkdtemp(prefix="verdict-old-")) / "report_old"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    for name in ("significance", "oof", "stats"):
        src = subprocess.run(["git", "-C", str(ROOT), "show",
                              f"{OLD_COMMIT}:src/transferlab/report/{name}.py"],
                             check=True, capture_output=True, text=True).stdout
        (pkg / f"{name}.py").write_text(src.replace("from transferlab.report import oof, stats",
                                                    "from report_old import oof, stats"))
    sys.path.insert(0, str(pkg.parent))
    return importlib.import_module("report_old.significance")


def _record(i, lr, seed, correct, paths, split=None, fold=None):
    n = len(paths)
    true = np.zeros(n, dtype=np.int64)
    params = {"backbone.name": "mobilenetv2", "freeze.strategy": "all", "freeze.n": "None",
              "lr": lr, "seed": str(seed), "dataset.name": "folder",
              "dataset.split_seed": str(split or 0),
              "dataset.folds": "None" if fold is None else "5",
              "dataset.fold": "None" if fold is None else str(fold)}
    tags = {"backbone": "mobilenetv2", "freeze": "all", "split_layout": "flat"}
    rec = RunRecord(f"r{i:06d}", "0", f"lr{lr}-s{seed}-split{split}-f{fold}", "FINISHED", None,
                    i, params, tags, {"test_acc": float(correct.mean())},
                    {"val_acc": [(0, 0.5)]}, ["a", "b"],
                    Predictions(list(paths), true, np.where(correct, 0, 1), correct, 2))
    rec.val_predictions = None  # the old code looks for out-of-fold predictions
    return rec


def simulate(rng, design, seeds, rho, shifts, n=100, spread=1.0):
    """RunRecords of len(shifts) configurations (lr values), ``shifts[c]`` in {0, 0.1}."""
    sets, n_folds = DESIGNS[design]
    pool = n * 6 if sets > 1 else n
    q = rng.beta(0.7 * spread, 0.3 * spread, pool)
    tests = [np.sort(rng.choice(pool, n, replace=False)) for _ in range(sets)] if sets > 1 \
        else [np.arange(n)]
    names = np.array([f"c/img{j:05d}.png" for j in range(pool)])
    recs, i = [], 0
    for lr, shift in zip(LRS, shifts):
        qc = q + (1 - q) * shift / 0.3  # mean 0.7 + shift, never above 1
        z = rng.random(pool) < qc      # the configuration's own tendency per image
        for split, idx in enumerate(tests):
            for seed in range(1, seeds + 1):
                for fold in (range(n_folds) if n_folds > 1 else [None]):
                    keep = rng.random(n) < rho
                    ok = np.where(keep, z[idx], rng.random(n) < qc[idx])
                    recs.append(_record(i := i + 1, lr, seed, ok, names[idx],
                                        split if sets > 1 else None, fold))
    return recs


def verdicts(module, recs) -> dict[str, str]:
    comps, _ = module.compare(build_table(recs), {"lr": LRS[0]})
    return {c.candidate_value: c.verdict for c in comps}


def false_rate(module, reps, design, seeds, rho, n=100, spread=1.0, seed=0) -> float:
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(reps):
        v = verdicts(module, simulate(rng, design, seeds, rho, [0.0] * 8, n, spread))
        hits += any(x.startswith(REAL) for x in v.values())
    return hits / reps


def power(module, reps, family: bool, n=200, seeds=3, rho=0.7, spread=1.0, seed=1) -> float:
    rng = np.random.default_rng(seed)
    shifts = [0.0, 0.10] + [0.0] * (6 if family else 0)
    found = 0
    for _ in range(reps):
        v = verdicts(module, simulate(rng, "one test set", seeds, rho, shifts, n, spread))
        found += v[LRS[1]].startswith("better than")
    return found / reps


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=400)
    ap.add_argument("--spread", type=float, default=1.0,
                    help="k of the difficulty Beta(0.7k, 0.3k); smaller: images more often "
                         "all right or all wrong")
    ap.add_argument("--only", choices=("before", "after"),
                    help="one column (the other reads '-'), e.g. to run both at once")
    a = ap.parse_args(argv)
    old = old_significance()
    gc.freeze()  # statsmodels' Holm calls gc.collect(); the imports need not be scanned each time
    methods = [m if a.only in (None, name) else None
               for name, m in (("before", old), ("after", significance))]
    se = math.sqrt(stats.ALPHA * (1 - stats.ALPHA) / a.reps)
    t0 = time.time()
    print(f"Family-wise rate of false 'real' verdicts: 1 baseline + 7 candidates of equal true "
          f"accuracy, 100 test images per test set, {a.reps} repetitions, difficulty "
          f"Beta({0.7 * a.spread:g}, {0.3 * a.spread:g}); bound 0.05 + 2 MC s.e. = "
          f"{stats.ALPHA + 2 * se:.3f}\n")
    print("| design | seeds | rho | before (4bb4837) | after |")
    print("|---|---|---|---|---|")
    for design in DESIGNS:
        for seeds in (1, 3, 5):
            for rho in (0.7, 1.0):
                if seeds == 1 and rho == 1.0 and design != "5 folds":
                    continue  # one run per test set: nothing to repeat
                row = [f"{false_rate(m, a.reps, design, seeds, rho, spread=a.spread):.3f}"
                       if m else "-" for m in methods]
                print(f"| {design} | {seeds} | {rho:g} | {row[0]} | {row[1]} |", flush=True)
    reps = max(100, a.reps // 2)
    print(f"\nPower: one candidate +0.10 on 200 test images, 3 seeds, rho 0.7, {reps} "
          "repetitions (share called 'better than')\n")
    print("| comparisons | before (4bb4837) | after |")
    print("|---|---|---|")
    for family, what in ((False, "1 (the candidate alone)"), (True, "7 (6 null candidates, Holm)")):
        row = [f"{power(m, reps, family, spread=a.spread):.2f}" if m else "-" for m in methods]
        print(f"| {what} | {row[0]} | {row[1]} |", flush=True)
    print(f"\n({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
