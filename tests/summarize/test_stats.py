"""tripletlab.summarize.stats against scipy.stats and hand-worked cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sp

from tripletlab.summarize import stats


def test_describe_matches_scipys_t_interval():
    x = [0.80, 0.84, 0.91]
    d = stats.describe(x)
    # mean 0.85, sample std sqrt(0.0062 / 2) = 0.05568 (tests/test_summarize.py works it out)
    assert (d.n, d.mean, d.std) == (3, pytest.approx(0.85), pytest.approx(math.sqrt(0.0031)))
    low, high = sp.t.interval(0.95, 2, loc=np.mean(x), scale=sp.sem(x))
    assert (d.low, d.high) == (pytest.approx(low), pytest.approx(high))
    # By hand: t(0.975, 2) = 4.3027, so the half width is 4.3027 * 0.05568 / sqrt(3) = 0.1383.
    assert d.high - d.mean == pytest.approx(0.1383, abs=1e-4)


def test_describe_of_two_values_one_value_none_and_nan():
    two = stats.describe([0.5, 0.7])
    # n = 2: std = 0.1414, t(0.975, 1) = 12.706: half width 12.706 * 0.1414 / sqrt(2) = 1.2706.
    assert two.high - two.mean == pytest.approx(1.2706, abs=1e-4)
    one = stats.describe([0.9])
    assert (one.n, one.mean) == (1, 0.9)
    assert math.isnan(one.std) and math.isnan(one.low) and math.isnan(one.high)
    # A missing metric (None, NaN) is missing: not a 0 that would pull the mean down.
    assert stats.describe([0.6, None, math.nan, 0.8]) == stats.describe([0.6, 0.8])
    empty = stats.describe([None, math.nan])
    assert empty.n == 0 and math.isnan(empty.mean)


def test_equal_values_give_a_zero_width_interval_and_no_nan():
    d = stats.describe([0.9, 0.9, 0.9])
    assert (d.std, d.low, d.high) == (0.0, 0.9, 0.9)
    # Equal in both: the difference is 0 with no spread: p = 1 where scipy says NaN.
    same = stats.compare([0.9, 0.9], [0.9, 0.9], [1, 2], [1, 2])
    assert np.isnan(sp.ttest_rel([0.9, 0.9], [0.9, 0.9]).pvalue)
    assert (same.test, same.diff, same.low, same.high, same.p) == ("paired", 0.0, 0.0, 0.0, 1.0)
    assert stats.verdict(same, same.p) == stats.NOT_DISTINGUISHABLE
    # The same gap on every seed: no spread, p = 0 as scipy's t = inf gives.
    shifted = stats.compare([0.5, 0.25], [0.25, 0.0], [1, 2], [1, 2])
    assert sp.ttest_rel([0.5, 0.25], [0.25, 0.0]).pvalue == 0.0
    assert (shifted.diff, shifted.low, shifted.high, shifted.p) == (0.25, 0.25, 0.25, 0.0)
    # Welch with no spread on either side.
    flat = stats.compare([1.0, 1.0], [0.5, 0.5, 0.5])
    assert (flat.test, flat.p, flat.low, flat.high) == ("welch", 0.0, 0.5, 0.5)


def test_paired_by_seed_when_both_ran_the_same_seeds():
    a, seeds_a = [0.91, 0.93, 0.90], [42, 1, 2]
    b, seeds_b = [0.88, 0.89, 0.90], [2, 42, 1]  # the same seeds, in another order
    c = stats.compare(a, b, seeds_a, seeds_b)
    # Matched by seed: seed 1: 0.93 - 0.90, seed 2: 0.90 - 0.88, seed 42: 0.91 - 0.89.
    ref = sp.ttest_rel([0.93, 0.90, 0.91], [0.90, 0.88, 0.89])
    interval = ref.confidence_interval(0.95)
    assert c.test == "paired" and c.df == 2
    assert c.p == pytest.approx(ref.pvalue)
    assert (c.low, c.high) == (pytest.approx(interval.low), pytest.approx(interval.high))
    assert c.diff == pytest.approx(np.mean([0.03, 0.02, 0.02]))
    # Pairing matters: the same numbers unpaired (Welch) give another p-value.
    assert stats.compare(a, b).p != pytest.approx(c.p)


def test_welch_when_the_seeds_differ_or_a_value_is_missing():
    a, b = [0.91, 0.93, 0.90], [0.88, 0.89, 0.90, 0.86]
    c = stats.compare(a, b, [1, 2, 3], [1, 2, 3, 4])
    ref = sp.ttest_ind(a, b, equal_var=False)
    interval = ref.confidence_interval(0.95)
    assert c.test == "welch" and c.df == pytest.approx(ref.df)
    assert c.p == pytest.approx(ref.pvalue)
    assert (c.low, c.high) == (pytest.approx(interval.low), pytest.approx(interval.high))
    # Seed 3's metric is missing in b: the seeds left differ, so Welch on what is there.
    gap = stats.compare(a, [0.88, 0.89, math.nan], [1, 2, 3], [1, 2, 3])
    assert gap.test == "welch" and gap.n_b == 2
    assert gap.p == pytest.approx(sp.ttest_ind(a, [0.88, 0.89], equal_var=False).pvalue)


def test_one_seed_has_no_interval_and_says_so():
    c = stats.compare([0.95], [0.7, 0.8, 0.9], [1], [1, 2, 3])
    assert c.test == "" and c.diff == pytest.approx(0.15)
    assert math.isnan(c.low) and math.isnan(c.p)
    assert stats.verdict(c, math.nan) == stats.ONE_SEED == "one seed: no interval"
    missing = stats.compare([math.nan], [0.7, 0.8])
    assert stats.verdict(missing, math.nan) == stats.NO_RESULT and math.isnan(missing.diff)


def test_holm_orders_multiplies_and_keeps_monotone():
    # By hand, m = 4 finite p-values: sorted 0.01, 0.02, 0.03, 0.5 -> x4, x3, x2, x1 =
    # 0.04, 0.06, 0.06, 0.5; each at least the previous one; NaN left out of m and as is.
    adjusted = stats.holm([0.03, 0.5, math.nan, 0.01, 0.02])
    assert adjusted[:2] == [pytest.approx(0.06), pytest.approx(0.5)]
    assert math.isnan(adjusted[2])
    assert adjusted[3:] == [pytest.approx(0.04), pytest.approx(0.06)]
    # Monotone: 0.01 x 3 = 0.03, then 0.04 x 2 = 0.08, then max(0.08, 0.045) = 0.08; cap at 1.
    assert stats.holm([0.01, 0.04, 0.045]) == pytest.approx([0.03, 0.08, 0.08])
    assert stats.holm([0.6, 0.7]) == [1.0, 1.0]
    assert stats.holm([]) == []


def test_verdict_reads_the_adjusted_p_value():
    c = stats.compare([0.91, 0.93, 0.90], [0.80, 0.82, 0.81], [1, 2, 3], [1, 2, 3])
    assert c.p < 0.05
    assert stats.verdict(c, c.p) == stats.DISTINGUISHABLE == "distinguishable at 95%"
    assert stats.verdict(c, 0.06) == stats.NOT_DISTINGUISHABLE
