"""Statistics for "is the difference real?": exact McNemar, paired bootstrap, t-intervals, Holm.

Pure numpy/scipy/statsmodels on plain arrays, no MLflow, no plotting. Every function is
deterministic: the bootstrap draws from a ``numpy.random.Generator`` seeded by
the caller (default 0), so the same inputs always give the same interval.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as _st

ALPHA = 0.05


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for the discordant counts ``b`` and ``c``.

    ``b`` = images the first model gets right and the second wrong, ``c`` the
    reverse. Under H0 the discordant pairs split 50/50, so
    ``p = min(1, 2 * BinomCDF(min(b, c); b + c, 0.5))``; no discordant pair
    means no evidence at all (p = 1).
    """
    b, c = int(b), int(c)
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got b={b}, c={c}")
    n = b + c
    if n == 0:
        return 1.0
    return float(min(1.0, 2.0 * _st.binom.cdf(min(b, c), n, 0.5)))


def discordant(correct_a, correct_b) -> tuple[int, int]:
    """(b, c): a right & b wrong, a wrong & b right, for paired boolean arrays."""
    a = np.asarray(correct_a, dtype=bool)
    bb = np.asarray(correct_b, dtype=bool)
    if a.shape != bb.shape:
        raise ValueError(f"paired arrays differ in shape: {a.shape} vs {bb.shape}")
    return int(np.sum(a & ~bb)), int(np.sum(~a & bb))


def paired_bootstrap_ci(correct_a, correct_b, *, n_boot: int = 10_000,
                        level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """Accuracy difference ``acc(b) - acc(a)`` and its paired percentile bootstrap CI.

    Resampling images with replacement only changes how many of the n images
    fall in each of the three per-image outcomes (b gains, ties, b loses), so
    one multinomial draw per replicate is exactly the classic index resampling,
    at O(n_boot) cost whatever the test-set size.

    Returns:
        (difference, low, high).
    """
    a = np.asarray(correct_a, dtype=bool)
    b = np.asarray(correct_b, dtype=bool)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"need two 1-d arrays of equal length, got {a.shape} and {b.shape}")
    n = a.size
    if n == 0:
        raise ValueError("no paired images")
    gain, loss = int(np.sum(b & ~a)), int(np.sum(a & ~b))
    diff = (gain - loss) / n
    probs = np.array([gain, n - gain - loss, loss], dtype=float) / n
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n, probs, size=n_boot)
    reps = (counts[:, 0] - counts[:, 2]) / n
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(reps, [tail, 1.0 - tail])
    return float(diff), float(lo), float(hi)


def paired_bootstrap_ci_seeds(correct_a, correct_b, *, n_boot: int = 10_000,
                              level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """As ``paired_bootstrap_ci`` for S paired runs (seeds) on the same n images.

    ``correct_a``/``correct_b``: boolean (S, n), row s = seed pair s. Images are
    resampled (all S rows of an image together), so the interval covers the
    test-set sampling of the mean difference over seeds. An image's summed
    difference takes one of 2S + 1 values, so one multinomial draw per replicate
    is again exact index resampling at O(n_boot * S) cost.

    Returns:
        (mean difference acc(b) - acc(a) over seeds and images, low, high).
    """
    a = np.atleast_2d(np.asarray(correct_a, dtype=bool))
    b = np.atleast_2d(np.asarray(correct_b, dtype=bool))
    if a.shape != b.shape or a.shape[1] == 0:
        raise ValueError(f"need two (seeds, images) arrays of equal shape, got {a.shape} "
                         f"and {b.shape}")
    s, n = a.shape
    per_image = (b.astype(np.int64) - a.astype(np.int64)).sum(axis=0)      # -S..S
    values = np.arange(-s, s + 1)
    probs = np.bincount(per_image + s, minlength=2 * s + 1) / n
    counts = np.random.default_rng(seed).multinomial(n, probs, size=n_boot)
    reps = counts @ values / (s * n)
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(reps, [tail, 1.0 - tail])
    return float(per_image.sum() / (s * n)), float(lo), float(hi)


def holm(p_values) -> list[float]:
    """Holm-adjusted p-values (statsmodels ``multipletests``, method ``holm``), same order.

    Holm controls the family-wise error rate (the chance of calling even one
    no-difference comparison real) at ``ALPHA`` over all of them, with no
    assumption about how the tests depend on each other.
    """
    p = [float(x) for x in p_values]
    if not p:
        return []
    from statsmodels.stats.multitest import multipletests

    return [float(x) for x in multipletests(p, alpha=ALPHA, method="holm")[1]]


@dataclass(frozen=True)
class Interval:
    """Mean, sample std (None for n < 2), n and a t-interval (None for n < 2)."""

    mean: float
    std: float | None
    n: int
    low: float | None
    high: float | None

    @property
    def contains_zero(self) -> bool | None:
        if self.low is None or self.high is None:
            return None
        return self.low <= 0.0 <= self.high


def mean_std(values) -> tuple[float, float | None, int]:
    """Mean, sample standard deviation (ddof=1; None below 2 values) and n."""
    x = np.asarray(list(values), dtype=float)
    if x.size == 0:
        raise ValueError("no values")
    std = float(np.std(x, ddof=1)) if x.size >= 2 else None
    return float(np.mean(x)), std, int(x.size)


def t_interval(values, level: float = 0.95) -> Interval:
    """Student-t confidence interval for the mean of ``values`` (e.g. over seeds)."""
    mean, std, n = mean_std(values)
    if n < 2:
        return Interval(mean, None, n, None, None)
    half = float(_st.t.ppf(0.5 + level / 2.0, n - 1)) * std / math.sqrt(n)
    return Interval(mean, std, n, mean - half, mean + half)


def welch_interval(a, b, level: float = 0.95) -> Interval:
    """CI for ``mean(b) - mean(a)`` from two unpaired samples (Welch-Satterthwaite).

    ``std`` of the result is the standard error of the difference.
    """
    ma, sa, na = mean_std(a)
    mb, sb, nb = mean_std(b)
    diff = mb - ma
    if na < 2 or nb < 2:
        return Interval(diff, None, min(na, nb), None, None)
    va, vb = sa * sa / na, sb * sb / nb
    se = math.sqrt(va + vb)
    if se == 0.0:
        return Interval(diff, 0.0, min(na, nb), diff, diff)
    dof = (va + vb) ** 2 / (va * va / (na - 1) + vb * vb / (nb - 1))
    half = float(_st.t.ppf(0.5 + level / 2.0, dof)) * se
    return Interval(diff, se, min(na, nb), diff - half, diff + half)


def distinguishable(p_value: float | None, low: float | None, high: float | None) -> bool:
    """True only when the test rejects (p < 0.05) and the interval excludes 0."""
    if p_value is not None and p_value >= ALPHA:
        return False
    if low is None or high is None:
        return p_value is not None and p_value < ALPHA
    return not (low <= 0.0 <= high)
