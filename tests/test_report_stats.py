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


def _test(a, b, paths=None):
    paths = paths or [f"img{i:04d}.png" for i in range(np.shape(a)[-1])]
    return stats.paired_image_test([(paths, a, b)])


def test_interval_degenerate_cases_are_exact():
    a, b = _pairs(10, gain=10, loss=0)           # every image: b right, a wrong
    t = _test(a, b)
    assert (t.diff, t.low, t.high, t.worse, t.better) == (1.0, 1.0, 1.0, 0, 10)
    a, b = _pairs(20, gain=0, loss=0)            # identical predictions
    t = _test(a, b)
    assert (t.diff, t.low, t.high, t.p_value) == (0.0, 0.0, 0.0, 1.0)


def test_interval_is_the_normal_interval_over_images():
    # n=1000, 150 gains, 100 losses: diff = 0.05; per-image d in {-1, 0, 1}
    # var(d) = 0.25 - 0.05**2 = 0.2475, se = sqrt(0.2475/1000) = 0.015732
    a, b = _pairs(1000, gain=150, loss=100)
    t = _test(a, b)
    se = math.sqrt((0.25 - 0.05 ** 2) / 1000)
    assert t.diff == pytest.approx(0.05)
    assert (t.low, t.high) == pytest.approx((0.05 - 1.959964 * se, 0.05 + 1.959964 * se), abs=1e-6)
    assert (t.worse, t.better, t.n_images, t.n_test_sets) == (100, 150, 1000, 1)


@pytest.mark.parametrize("b, c", [(12, 3), (3, 12), (0, 5), (5, 5), (1, 6), (40, 20), (0, 0)])
def test_one_run_per_side_is_the_exact_mcnemar_test(b, c):
    a, bb = _pairs(80, gain=c, loss=b)
    assert _test(a, bb).p_value == pytest.approx(stats.mcnemar_exact(b, c), rel=1e-12)


def test_identical_seeds_give_exactly_the_numbers_of_one_seed():
    """Issue 19: three copies of one seed with b=12, c=3 gave p=0.0001 (b, c summed: 36, 9);
    the same information must give the same test."""
    a, b = _pairs(60, gain=3, loss=12)
    one = _test(a, b)
    for k in (3, 5):
        many = _test(np.stack([a] * k), np.stack([b] * k))
        assert (many.diff, many.low, many.high, many.p_value, many.worse, many.better) == (
            one.diff, one.low, one.high, one.p_value, one.worse, one.better)
    assert one.p_value == pytest.approx(0.03515625)


def test_sign_flip_matches_enumerating_every_sign():
    """Seeds averaged per image give differences on a grid (here thirds): the exact null
    distribution against all 2^12 sign patterns."""
    import itertools

    d = np.array([3, 2, 2, 1, 1, 1, -1, 3, 0, -2, 2, 1])  # thirds: 3 seeds per side
    obs = abs(d.sum())
    signs = np.array(list(itertools.product((-1, 1), repeat=d.size)))
    brute = np.mean(np.abs(signs @ d) >= obs)
    assert stats.sign_flip_p(d) == pytest.approx(brute, rel=1e-12)
    assert stats.sign_flip_p(5 * d) == stats.sign_flip_p(d)  # scale-free (gcd)
    assert stats.sign_flip_p([0, 0]) == 1.0


def test_seeds_are_averaged_per_image_and_test_sets_are_strata():
    rng = np.random.default_rng(3)
    a, b = rng.random((3, 50)) < 0.6, rng.random((3, 50)) < 0.7
    t = _test(a, b)
    per_image = b.mean(axis=0) - a.mean(axis=0)
    assert t.diff == pytest.approx(per_image.mean())
    assert t.p_value == pytest.approx(stats.sign_flip_p(np.round(per_image * 3).astype(int)))
    assert (t.worse, t.better) == (int(np.sum(per_image < 0)), int(np.sum(per_image > 0)))
    # two test sets sharing 10 images (split seeds): 90 units, an image's two differences
    # summed and flipped together (never counted as two independent images)
    p1 = [f"img{i}" for i in range(50)]
    p2 = [f"img{i}" for i in range(40, 90)]
    a2, b2 = rng.random((1, 50)) < 0.6, rng.random((1, 50)) < 0.7
    two = stats.paired_image_test([(p1, a, b), (p2, a2, b2)])
    assert (two.n_images, two.n_test_sets, two.runs) == (90, 2, ((3, 3), (1, 1)))
    units = dict(zip(p1, np.round(per_image * 3).astype(int)))
    for path, x in zip(p2, 3 * (b2[0].astype(int) - a2[0].astype(int))):
        units[path] = units.get(path, 0) + x
    assert two.p_value == pytest.approx(stats.sign_flip_p(list(units.values())))
    assert two.diff == pytest.approx(sum(units.values()) / 3 / 100)  # 100 (image, set) entries


def test_image_test_rejects_bad_input():
    with pytest.raises(ValueError, match="need"):
        stats.paired_image_test([(["x", "y"], [[1, 0]], [[1]])])
    with pytest.raises(ValueError, match="no test set"):
        stats.paired_image_test([])


def test_accuracy_interval_covers_test_images_not_only_seeds():
    """Issue 19: a t-interval over identical seeds' test accuracies is 0 wide. Averaged per
    image and resampled over images, identical seeds give one run's interval, about as wide
    as its Wilson interval."""
    paths = [f"img{i}" for i in range(60)]
    ok = np.arange(60) < 48  # 0.8
    acc, lo, hi = stats.accuracy_ci([(paths, np.stack([ok] * 3))])
    assert acc == pytest.approx(0.8)
    assert (acc, lo, hi) == stats.accuracy_ci([(paths, ok[None])])
    w_lo, w_hi = stats.wilson(48, 60)
    assert (w_lo, w_hi) == pytest.approx((0.682, 0.882), abs=5e-4)
    assert hi - lo == pytest.approx(w_hi - w_lo, abs=0.03)
    old = stats.t_interval([0.8, 0.8, 0.8])  # what the report used to show
    assert old.high - old.low == pytest.approx(0, abs=1e-12)


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
