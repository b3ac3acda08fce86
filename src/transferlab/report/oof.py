"""k-fold: out-of-fold predictions, what the paired tests compare when configurations ran folds.

With ``dataset.folds=K`` each run logs its validation fold's predictions
(``val_predictions.csv``). The K runs of one configuration and seed together
predict every image of the pool (train + validation) exactly once, each by the
fold model that did not train on it: the out-of-fold (OOF) predictions. Two
configurations that ran the same K folds with the same seed are paired on
those images: K times the held-out test split's size in a 10-fold setup, and
every image counted once (pairing fold by fold on the shared test split would
count each test image K times, as if the K runs were independent).

Used when both sides have every fold of a seed with its predictions; else the
comparison pairs fold with fold on the test split, as it pairs seeds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from transferlab.report.collect import Predictions, RunRecord
from transferlab.report.table import Config, fold_of


@dataclass
class OofRecord(RunRecord):
    """The K fold runs of one configuration and seed as one run: OOF predictions as its
    ``predictions``, their accuracy as ``test_acc`` (so the across-seed interval is over
    OOF accuracies)."""

    members: list[RunRecord] = field(default_factory=list)


def _folds_expected(runs: list[RunRecord]) -> int | None:
    ks = {r.params.get("dataset.folds") for r in runs}
    if len(ks) != 1:
        return None
    try:
        return int(next(iter(ks)))
    except (TypeError, ValueError):
        return None


def combine(runs: list[RunRecord]) -> Predictions | None:
    """The OOF predictions of the fold runs of one seed; None unless each of the K folds is
    there once with its val predictions, and no image is predicted twice."""
    k = _folds_expected(runs)
    if k is None or sorted(fold_of(r) for r in runs) != [str(i) for i in range(k)] or any(
            r.val_predictions is None for r in runs):
        return None
    paths = [p for r in runs for p in r.val_predictions.paths]
    if len(set(paths)) != len(paths):
        return None
    cols = [np.concatenate([getattr(r.val_predictions, a) for r in runs])
            for a in ("true", "pred", "correct")]
    order = np.argsort(np.array(paths, dtype=object), kind="stable")
    return Predictions([paths[i] for i in order], *(c[order] for c in cols),
                       max(r.val_predictions.n_classes for r in runs))


def _by_seed(cfg: Config) -> dict[str, OofRecord]:
    groups: dict[str, list[RunRecord]] = {}
    for r in cfg.runs:
        groups.setdefault(r.params.get("seed", r.run_id), []).append(r)
    out = {}
    for seed, runs in groups.items():
        preds = combine(runs)
        if preds is None:
            continue
        first = sorted(runs, key=lambda r: fold_of(r) or "")[0]
        out[seed] = OofRecord(**{**first.__dict__, "predictions": preds,
                                 "name": f"{first.name} (out-of-fold, {len(runs)} folds)",
                                 "metrics": {"test_acc": float(preds.correct.mean())}},
                              members=runs)
    return out


def pairs(base: Config, cand: Config) -> list[tuple[str, OofRecord, OofRecord]]:
    """``(seed label, base OOF, candidate OOF)`` per seed both ran on every fold over the
    same pool images; empty when k-fold OOF pairing does not apply."""
    if not (base.n_folds and cand.n_folds):
        return []
    b, c = _by_seed(base), _by_seed(cand)
    common = [s for s in b if s in c and b[s].predictions.paths == c[s].predictions.paths]
    return [(f"{s} (out-of-fold)", b[s], c[s]) for s in common]


def members(run: RunRecord) -> list[RunRecord]:
    """The real runs behind ``run`` (its fold runs for an OofRecord)."""
    return list(run.members) if isinstance(run, OofRecord) else [run]



def note(run: RunRecord, n_images: int, n_pairs: int) -> str | None:
    """What a comparison paired on, when it paired OOF predictions (``run``: a pair's run)."""
    if not isinstance(run, OofRecord):
        return None
    return (f"paired on out-of-fold predictions: each of the {n_images} train + validation "
            f"images predicted by the one of {len(run.members)} fold models that did not train "
            f"on it, {n_pairs} seed(s)")
