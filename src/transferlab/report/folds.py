"""k-fold in the report: which folds a configuration is missing.

With ``dataset.folds=K`` the K fold runs of a configuration and seed are replicates of
training: their mean validation score ranks the configuration (selection.py: each
fold's validation images are predicted by the one fold model that did not train on
them, so the mean is the out-of-fold score), and each fold run's predictions on the
untouched test split enter the verdicts like seeds (significance.py). A fold that did
not finish is not replaced by anything: the configuration is scored and compared on
the folds it has, and ``missing`` says which are absent.
"""

from __future__ import annotations

from transferlab.report.table import Config, fold_of


def expected(cfg: Config) -> int | None:
    """K of the configuration's runs (param ``dataset.folds``), None without k-fold."""
    ks = {r.params.get("dataset.folds") for r in cfg.runs + cfg.incomplete}
    try:
        return max(int(k) for k in ks if k not in (None, "None", "null"))
    except ValueError:
        return None


def missing(cfg: Config, label: str) -> list[str]:
    """One line per seed of a k-fold configuration that lacks finished folds, e.g.
    ``"freeze=all seed 1: fold 3 of 0-4 missing (failed or not run): ..."``."""
    k = expected(cfg)
    if k is None:
        return []
    have: dict[str, set[str]] = {}
    for r in cfg.runs + cfg.incomplete:
        have.setdefault(r.params.get("seed", "?"), set())
    for r in cfg.runs:
        have[r.params.get("seed", "?")].add(fold_of(r))
    out = []
    for seed, folds in sorted(have.items()):
        gone = [str(i) for i in range(k) if str(i) not in folds]
        if gone:
            out.append(f"{label} seed {seed}: fold {', '.join(gone)} of {k} missing (failed or "
                       f"not run): its score and comparisons use the {k - len(gone)} fold(s) it "
                       "has; rerun the sweep to complete it")
    return out
