"""Runs whose numbers are not a trained model's: they get a flag, not a verdict.

Two kinds, both read from what a job logs (pure Python, also used by the
runner to tag the run when it ends):

* ``never beat the majority rate``: on validation, accuracy never rose above
  the rate of always answering the training split's most frequent class
  (``ref_majority_val_acc``, logged by every job) and balanced accuracy never
  rose above that constant answer's (1 / classes present,
  ``ref_majority_val_balanced_acc``): the model learnt nothing a constant could
  not do. Balanced accuracy counts too, so a model that finds the rare class at
  the cost of a few common images is not flagged on imbalanced data;
* ``diverged``: a non-finite loss (NaN/inf) in any epoch or on the test split,
  or a training loss that ended more than ``GROWTH`` times its first epoch's.
"""

from __future__ import annotations

import math

GROWTH = 1.10   # last / first training loss above this: grew, not noise
EPS = 1e-6      # float32 accuracies equal to the majority rate do not beat it (1/3 is 0.33333334
                # in float32: 1e-8 above the float64 rate; a real gain is >= 1/n, n < 10^6)
NEVER_BEAT = "never beat the majority rate on validation"
DIVERGED = "diverged"


def flags(loss: list[float], val_loss: list[float], val_acc: list[float],
          majority_val_acc: float | None, test_loss: float | None = None,
          val_balanced_acc: list[float] = (), majority_val_balanced: float | None = None
          ) -> list[str]:
    """The flags of one job from its per-epoch values (oldest first) and final metrics.

    Args:
        loss, val_loss, val_acc: per-epoch values (may be empty).
        majority_val_acc: the majority-class rate on validation (None: not logged,
            the majority check is skipped).
        test_loss: the final test loss, if logged.
        val_balanced_acc, majority_val_balanced: per-epoch validation balanced
            accuracy and the constant answer's (empty / None: accuracy alone decides).

    Returns:
        Human-readable flags, e.g. ``["diverged (loss 0.69 -> nan)"]``; empty when fine.
    """
    out = []
    beat_bal = (bool(val_balanced_acc) and majority_val_balanced is not None
                and max(val_balanced_acc) > majority_val_balanced + EPS)
    if (val_acc and majority_val_acc is not None and max(val_acc) <= majority_val_acc + EPS
            and not beat_bal):
        out.append(f"{NEVER_BEAT} (best val_acc {max(val_acc):.3f} <= "
                   f"{majority_val_acc:.3f})")
    bad = [v for v in [*loss, *val_loss, *([test_loss] if test_loss is not None else [])]
           if not math.isfinite(v)]
    if bad:
        out.append(f"{DIVERGED} (non-finite loss: {bad[0]})")
    elif len(loss) >= 2 and loss[-1] > GROWTH * loss[0]:
        out.append(f"{DIVERGED} (training loss grew {loss[0]:.3g} -> {loss[-1]:.3g})")
    return out


def run_flags(rec) -> list[str]:
    """``flags`` of a report ``RunRecord`` (finished runs only; others are listed apart)."""
    if not rec.finished:
        return []
    h = rec.history
    m = rec.metrics
    chance = m.get("ref_majority_val_balanced_acc")
    if chance is None and rec.classes:
        chance = 1.0 / len(rec.classes)  # every class in validation, as data.scan requires
    return flags([v for _, v in h.get("loss", [])], [v for _, v in h.get("val_loss", [])],
                 [v for _, v in h.get("val_acc", [])], m.get("ref_majority_val_acc"),
                 m.get("test_loss"), [v for _, v in h.get("val_balanced_acc", [])], chance)
