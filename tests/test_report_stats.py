"""Hand-computed checks of the report's statistics (McNemar, bootstrap, t-intervals)."""

import math

import numpy as np
import pytest
from scipy import stats as st

from transferlab.report import stats


@pytest.mark.parametrize("b, c, expected", [
    (1, 6, 2 * st.binom.cdf(1, 7, 0.5)),   # = 2 * 8/128 = 0.125
    (6, 1, 0.125),
    (0, 0, 1.0),
    (0, 5, 2 / 32),                        # 2 * 0.5**5 = 0.0625
    (3, 3, 1.0),                           # 2 * cdf > 1 is capped
    (0, 10, 2 / 1024),
])
def test_mcnemar_exact_hand_computed(b, c, expected):
    assert stats.mcnemar_exact(b, c) == pytest.approx(expected, abs=1e-12)
    assert stats.mcnemar_exact(1, 6) == pytest.approx(0.125, abs=1e-12)


def test_mcnemar_rejects_negative_counts():
    with pytest.raises(ValueError):
        stats.mcnemar_exact(-1, 3)


def test_discordant_counts():
    a = [1, 1, 0, 0, 1, 0]
    b = [1, 0, 1, 1, 1, 0]
    assert stats.discordant(a, b) == (1, 2)


def _pairs(n, gain, loss):
    """Paired correctness: ``gain`` images only b gets right, ``loss`` only a."""
    a = np.zeros(n, bool)
    b = np.zeros(n, bool)
    b[:gain] = True
    a[gain:gain + loss] = True
    both = n // 2
    a[gain + loss:gain + loss + both] = b[gain + loss:gain + loss + both] = True
    return a, b


def test_bootstrap_degenerate_case_is_exact():
    a, b = _pairs(10, gain=10, loss=0)           # every image: b right, a wrong
    assert stats.paired_bootstrap_ci(a, b) == (1.0, 1.0, 1.0)
    a, b = _pairs(20, gain=0, loss=0)            # identical predictions
    assert stats.paired_bootstrap_ci(a, b) == (0.0, 0.0, 0.0)


def test_bootstrap_matches_normal_approximation_and_brackets_truth():
    # n=1000, 150 gains, 100 losses: diff = 0.05; per-image d in {-1, 0, 1}
    # var(d) = 0.25 - 0.05**2 = 0.2475, se = sqrt(0.2475/1000) = 0.015732
    a, b = _pairs(1000, gain=150, loss=100)
    diff, lo, hi = stats.paired_bootstrap_ci(a, b, n_boot=20_000, seed=0)
    se = math.sqrt((0.25 - 0.05 ** 2) / 1000)
    assert diff == pytest.approx(0.05)
    assert lo < 0.05 < hi
    assert lo == pytest.approx(0.05 - 1.96 * se, abs=0.004)   # ~0.0192
    assert hi == pytest.approx(0.05 + 1.96 * se, abs=0.004)   # ~0.0808


def test_bootstrap_is_deterministic_and_seeded():
    a, b = _pairs(200, gain=20, loss=12)
    first = stats.paired_bootstrap_ci(a, b)
    assert stats.paired_bootstrap_ci(a, b) == first
    assert first[1] < first[0] < first[2]


def test_bootstrap_equals_index_resampling_in_distribution():
    # the multinomial shortcut and classic index resampling give the same interval
    a, b = _pairs(300, gain=40, loss=25)
    d = b.astype(int) - a.astype(int)
    rng = np.random.default_rng(123)
    reps = d[rng.integers(0, d.size, size=(20_000, d.size))].mean(axis=1)
    lo_ref, hi_ref = np.quantile(reps, [0.025, 0.975])
    _, lo, hi = stats.paired_bootstrap_ci(a, b, n_boot=20_000)
    assert lo == pytest.approx(lo_ref, abs=0.006)
    assert hi == pytest.approx(hi_ref, abs=0.006)


def test_bootstrap_rejects_bad_input():
    with pytest.raises(ValueError):
        stats.paired_bootstrap_ci([1, 0], [1])
    with pytest.raises(ValueError):
        stats.paired_bootstrap_ci([], [])


def test_t_interval_hand_computed():
    iv = stats.t_interval([0.90, 0.92, 0.94])
    # mean 0.92, sd 0.02, half = t(0.975, 2) * 0.02 / sqrt(3) = 4.302653 * 0.011547
    assert iv.mean == pytest.approx(0.92)
    assert iv.std == pytest.approx(0.02)
    assert iv.low == pytest.approx(0.92 - 4.302653 * 0.02 / math.sqrt(3), abs=1e-6)
    assert iv.high == pytest.approx(0.92 + 4.302653 * 0.02 / math.sqrt(3), abs=1e-6)
    assert iv.contains_zero is False
    one = stats.t_interval([0.5])
    assert (one.std, one.low, one.high, one.n) == (None, None, None, 1)


def test_welch_interval_matches_scipy():
    a, b = [0.70, 0.72, 0.71, 0.69], [0.80, 0.83, 0.78]
    iv = stats.welch_interval(a, b)
    res = st.ttest_ind(b, a, equal_var=False)
    ci = res.confidence_interval(0.95)
    assert iv.mean == pytest.approx(np.mean(b) - np.mean(a))
    assert iv.low == pytest.approx(ci.low)
    assert iv.high == pytest.approx(ci.high)


def test_distinguishable_needs_test_and_interval():
    assert stats.distinguishable(0.01, 0.02, 0.10)
    assert not stats.distinguishable(0.065, 0.02, 0.10)      # p >= 0.05
    assert not stats.distinguishable(0.01, -0.01, 0.10)      # CI contains 0
    assert not stats.distinguishable(1.0, None, None)


def test_pareto_front_keeps_what_nothing_beats_on_cost_and_accuracy():
    from transferlab.report.plots import pareto

    pts = [(10.0, 0.80), (5.0, 0.70), (20.0, 0.79), (5.0, 0.60), (30.0, 0.90), (1.0, 0.5)]
    assert pareto(pts) == [(1.0, 0.5), (5.0, 0.70), (10.0, 0.80), (30.0, 0.90)]
