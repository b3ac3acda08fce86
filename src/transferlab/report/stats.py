"""Statistics for "is the difference real?": paired tests over test images, bootstrap, t, Holm.

Pure numpy/scipy/statsmodels on plain arrays, no MLflow, no plotting. Every function is
deterministic: the bootstrap (``accuracy_ci``) draws from a ``numpy.random.Generator``
seeded by the caller (default 0), so the same inputs always give the same interval.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import signal as _signal
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


@dataclass(frozen=True)
class ImageTest:
    """A paired comparison over test images (``paired_image_test``).

    ``diff``: mean accuracy difference b - a over (image, test set) entries, each image's
    correctness averaged over the runs of its side on that test set; ``low``/``high``: its
    95% normal CI over images; ``p_value``: the exact sign-flip test; ``n_images``: distinct images
    (the test's units); ``n_test_sets``: strata; ``runs``: (runs of a, runs of b) per test
    set; ``worse``/``better``: images on which b is right less / more often than a (with one
    run per side: McNemar's b and c).
    """

    diff: float
    low: float
    high: float
    p_value: float
    n_images: int
    n_test_sets: int
    runs: tuple[tuple[int, int], ...]
    worse: int
    better: int


def _units(strata) -> tuple[list[str], np.ndarray, np.ndarray, int]:
    """Per distinct image path: (paths, summed difference on the grid 1/L, number of test
    sets it is in, L). ``strata`` as in ``paired_image_test``."""
    parts = []
    for paths, a, b in strata:
        a = np.atleast_2d(np.asarray(a, dtype=bool))
        b = np.atleast_2d(np.asarray(b, dtype=bool))
        if a.shape[1:] != b.shape[1:] or a.shape[1] != len(paths) or not len(paths) \
                or not a.shape[0] or not b.shape[0]:
            raise ValueError(f"need (runs, images) arrays over the {len(paths)} images of a test "
                             f"set for both sides, got {a.shape} and {b.shape}")
        parts.append((list(paths), a.sum(axis=0), a.shape[0], b.sum(axis=0), b.shape[0]))
    if not parts:
        raise ValueError("no test set with runs of both sides")
    grid = math.lcm(*(r for _, _, ra, _, rb in parts for r in (ra, rb)))
    total: dict[str, int] = {}
    sets: dict[str, int] = {}
    for paths, sa, ra, sb, rb in parts:
        d = sb * (grid // rb) - sa * (grid // ra)  # L x (mean over b's runs - mean over a's)
        for path, x in zip(paths, d.tolist()):
            total[path] = total.get(path, 0) + x
            sets[path] = sets.get(path, 0) + 1
    keys = sorted(total)
    return (keys, np.array([total[k] for k in keys], dtype=np.int64),
            np.array([sets[k] for k in keys], dtype=np.int64), grid)


def sign_flip_p(d) -> float:
    """Two-sided exact sign-flip (paired permutation) p-value of ``sum(d)``.

    ``d``: one integer per unit (a test image: its difference b - a, in any fixed unit).
    Under H0 each unit's sign is + or - with probability 1/2, independently; the null
    distribution of the sum is exact: units of equal |d| form a binomial, and those are
    convolved. With d in {-1, 0, 1} (one run per side) this is the exact McNemar test.
    ``d`` is divided by its gcd first, so scaling it (identical seeds) gives the same p.
    Source: Good, "Permutation, Parametric and Bootstrap Tests of Hypotheses" (2005), 3.

    Returns:
        p in (0, 1]; 1.0 when every d is 0.
    """
    d = np.asarray(d, dtype=np.int64)
    x = np.abs(d[d != 0])
    if not x.size:
        return 1.0
    g = int(np.gcd.reduce(x))
    x, obs = x // g, abs(int(d.sum())) // g
    if obs == 0:
        return 1.0
    dist = np.ones(1)
    for v, m in zip(*np.unique(x, return_counts=True)):
        v, m = int(v), int(m)
        step = np.zeros(2 * v * m + 1)
        step[::2 * v] = _st.binom.pmf(np.arange(m + 1), m, 0.5)  # v * (2k - m), k ~ Bin(m, 1/2)
        dist = np.clip(_signal.convolve(dist, step), 0.0, None)
    half = (dist.size - 1) // 2
    tail = np.abs(np.arange(-half, half + 1)) >= obs
    return float(min(1.0, dist[tail].sum()))


def paired_image_test(strata, *, level: float = 0.95) -> ImageTest:
    """Is b better than a? A paired test whose unit is the test image.

    ``strata``: one ``(paths, correct_a, correct_b)`` per test set, ``correct_*`` boolean
    (runs, n) over that test set's n image ``paths``: the runs of each side on it (seeds,
    k-fold folds: replicates of training on the same images; the sides need not have the
    same number). Other test sets (``dataset.split_seed``, folds whose test images differ)
    are further strata; an image in several is still one unit.

    Per test set and image, each side's correctness is averaged over its runs (more seeds
    never count as more images: identical seeds give the p and CI of one); an image's
    difference is summed over the test sets it is in. The p-value is the exact sign-flip
    test of the summed differences (``sign_flip_p``: McNemar's with one run per side and
    one test set); ``diff`` is their sum over the (image, test set) entries, and its CI the
    normal interval over images (``_normal_ci``). Sources: Dietterich, Neural Computation
    10(7), 1998 (McNemar on one test set); Bouthillier et al., "Accounting for Variance in
    Machine Learning Benchmarks", MLSys 2021 (training seeds and test-set sampling are
    separate sources of variance).

    Raises:
        ValueError: a test set's arrays do not match its paths, a side has no run, no stratum.
    """
    strata = list(strata)
    paths, d, w, grid = _units(strata)
    diff, lo, hi = _normal_ci(d, w, grid, level)
    runs = tuple((np.atleast_2d(a).shape[0], np.atleast_2d(b).shape[0]) for _, a, b in strata)
    return ImageTest(diff, lo, hi, sign_flip_p(d), len(paths), len(strata), runs,
                     int(np.sum(d < 0)), int(np.sum(d > 0)))


def _reduce(d, w, grid: int):
    """d and grid divided by their gcd: identical seeds scale both alike, and give the same
    floating-point numbers as one seed."""
    g = math.gcd(int(np.gcd.reduce(d)), grid)
    return d // g, w, grid // g


def _normal_ci(d, w, grid: int, level: float) -> tuple[float, float, float]:
    """sum(d) / sum(w) / grid and its normal CI over the units (images), the variance by the
    delta method for a ratio of sums (with one entry per image: the sample variance of the
    per-image differences over n)."""
    d, w, grid = _reduce(d, w, grid)
    x, n_w = d / grid, float(w.sum())
    r = float(x.sum() / n_w)
    se = math.sqrt(float(np.sum((x - r * w) ** 2))) / n_w
    z = float(_st.norm.ppf(0.5 + level / 2.0))
    return r, r - z * se, r + z * se


def _bootstrap(d, w, grid: int, n_boot: int, level: float, seed: int) -> tuple[float, float]:
    """Percentile CI of sum(d) / sum(w) / grid, resampling units (images) with replacement;
    one multinomial draw over the distinct (d, w) values per replicate (exactly index
    resampling). ``d``, ``grid`` reduced (``_reduce``)."""
    values, counts = np.unique(np.stack([d, w]), axis=1, return_counts=True)
    n = int(counts.sum())
    draws = np.random.default_rng(seed).multinomial(n, counts / n, size=n_boot)
    reps = (draws @ values[0]) / (draws @ values[1]) / grid
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(reps, [tail, 1.0 - tail])
    return float(lo), float(hi)


def accuracy_ci(strata, *, n_boot: int = 10_000, level: float = 0.95,
                seed: int = 0) -> tuple[float, float, float]:
    """Accuracy of one configuration and its 95% CI over test images, runs averaged.

    ``strata``: one ``(paths, correct)`` per test set, ``correct`` boolean (runs, n). Each
    image's correctness is averaged over the runs on its test set, and images are
    resampled (percentile bootstrap; an image in several test sets is one unit as in
    ``paired_image_test``), so the interval covers
    test-set sampling however many seeds there are (a t-interval over seeds' accuracies on
    one test set measures training noise only, and is 0 wide for identical seeds). For one
    run on one test set use the Wilson interval (``wilson``).

    Returns:
        (accuracy over (image, test set) entries, low, high).
    """
    # The accuracy is the difference from a side that gets every image wrong.
    d, w, grid = _reduce(*_units([(p, np.zeros((1, len(p)), bool), c) for p, c in strata])[1:])
    return (float(d.sum() / w.sum() / grid), *_bootstrap(d, w, grid, n_boot, level, seed))


def wilson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for k right of n (scipy ``binomtest(...).proportion_ci``)."""
    ci = _st.binomtest(int(k), int(n)).proportion_ci(confidence_level=level, method="wilson")
    return float(ci.low), float(ci.high)


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
