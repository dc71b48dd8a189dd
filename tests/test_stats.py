"""minignn.stats: the t distribution against closed forms, the intervals against hand computations."""
import math

import pytest

from minignn import stats


@pytest.mark.parametrize("t", [-7.5, -2.0, -0.3, 0.0, 0.4, 1.0, 3.3, 12.0])
def test_t_cdf_matches_the_closed_forms_for_1_2_and_3_degrees_of_freedom(t):
    assert stats.t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-13)
    assert stats.t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-13)
    u = t / math.sqrt(3)
    assert stats.t_cdf(t, 3) == pytest.approx(0.5 + (math.atan(u) + u / (1 + u * u)) / math.pi, abs=1e-13)


@pytest.mark.parametrize("p", [0.6, 0.9, 0.975, 0.995])
def test_t_quantile_inverts_the_closed_forms(p):
    assert stats.t_quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-9)
    assert stats.t_quantile(p, 2) == pytest.approx((2 * p - 1) / math.sqrt(2 * p * (1 - p)), rel=1e-9)
    assert stats.t_quantile(1 - p, 7) == pytest.approx(-stats.t_quantile(p, 7), rel=1e-12)


def test_t_quantile_agrees_with_printed_tables_and_tends_to_the_normal():
    # two-sided 95% critical values as printed in every t table
    for df, t in [(3, 3.182446305), (4, 2.776445105), (9, 2.262157163), (30, 2.042272456)]:
        assert stats.t_quantile(0.975, df) == pytest.approx(t, abs=1e-8)
    assert stats.t_quantile(0.975, 1e7) == pytest.approx(1.959963985, abs=1e-6)


def test_mean_interval_by_hand():
    # 1, 2, 3: mean 2, sample sd 1, half-width t(0.975, 2) / sqrt(3) with t(0.975, 2) = 0.95 / sqrt(2 * 0.975 * 0.025)
    t2 = 0.95 / math.sqrt(2 * 0.975 * 0.025)
    m, lo, hi = stats.mean_interval([1.0, 2.0, 3.0])
    assert m == 2.0
    assert (lo, hi) == pytest.approx((2 - t2 / math.sqrt(3), 2 + t2 / math.sqrt(3)), rel=1e-10)
    assert stats.mean_interval([5.0]) == (5.0, None, None)
    m, lo, hi = stats.mean_interval([4.0, 4.0, 4.0])
    assert (m, lo, hi) == (4.0, 4.0, 4.0)


def test_paired_and_welch_differences_by_hand():
    # pairs (3, 1), (5, 2), (4, 3): differences 2, 3, 1, the same as mean_interval([2, 3, 1]) = 2 +- t2 / sqrt(3)
    t2 = 0.95 / math.sqrt(2 * 0.975 * 0.025)
    m, lo, hi = stats.paired_difference([3, 5, 4], [1, 2, 3])
    assert m == 2.0 and (lo, hi) == pytest.approx((2 - t2 / math.sqrt(3), 2 + t2 / math.sqrt(3)), rel=1e-10)
    # Welch with equal sizes and variances: df = 2n - 2 = 4, se = sqrt(1/3 + 1/3)
    m, lo, hi = stats.welch_difference([1, 2, 3], [4, 5, 6])
    half = 2.776445105 * math.sqrt(2 / 3)
    assert m == -3.0 and (lo, hi) == pytest.approx((-3 - half, -3 + half), abs=1e-8)
    with pytest.raises(ValueError, match="equally long"):
        stats.paired_difference([1, 2], [1])


def test_difference_pairs_common_seeds_and_falls_back_to_welch():
    d = stats.difference({0: 3.0, 1: 5.0, 2: 4.0, 7: 100.0}, {0: 1.0, 1: 2.0, 2: 3.0})
    assert d["method"] == "paired" and d["seeds"] == [0, 1, 2] and d["mean"] == 2.0
    d = stats.difference({0: 1.0, 1: 2.0, 2: 3.0}, {5: 4.0, 6: 5.0, 7: 6.0})
    assert d["method"] == "welch" and d["mean"] == -3.0
    assert stats.difference({0: 1.0}, {1: 2.0})["low"] is None


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="values: expected at least one"):
        stats.mean_interval([])
    with pytest.raises(ValueError, match="values: expected finite"):
        stats.mean_interval([1.0, float("nan")])
    with pytest.raises(ValueError, match="p: expected a probability"):
        stats.t_quantile(1.0, 3)
    with pytest.raises(ValueError, match="df: expected a number > 0"):
        stats.t_cdf(0.5, 0)
