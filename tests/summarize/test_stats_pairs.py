"""tripletlab.summarize.stats.compare: the cases mutation testing found unchecked (issue 27)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sp

from tripletlab.summarize import stats


def test_a_seed_without_a_result_on_one_side_still_pairs_the_others():
    """Seed 2 failed in a (no metric: None) and never ran in b: the three seeds both have
    are paired. Bug: a missing value kept (None or NaN) breaks the pairing (or raises)."""
    for missing in (None, float("nan")):
        a, seeds_a = [0.80, missing, 0.90, 0.85], [1, 2, 3, 4]
        b, seeds_b = [0.70, 0.86, 0.80], [1, 3, 4]
        c = stats.compare(a, b, seeds_a, seeds_b)
        assert (c.test, c.df, c.n_a, c.n_b) == ("paired", 2.0, 3, 3)
        assert c.p == pytest.approx(sp.ttest_rel([0.80, 0.90, 0.85], [0.70, 0.86, 0.80]).pvalue)


def test_welch_reports_the_difference_of_the_means():
    """Bug: the Welch branch's difference lost (the table's diff column empty)."""
    a, b = [0.91, 0.93, 0.90], [0.88, 0.89, 0.90, 0.86]
    c = stats.compare(a, b)
    assert c.test == "welch" and c.diff == pytest.approx(np.mean(a) - np.mean(b))
    assert (c.low + c.high) / 2 == pytest.approx(c.diff)


def test_seeds_that_are_not_one_per_value_are_refused():
    """Bug: zip without strict=True silently pairs values with the wrong seeds."""
    with pytest.raises(ValueError):
        stats.compare([0.8, 0.9], [0.7, 0.6], [1, 2, 3], [1, 2])
    with pytest.raises(ValueError):
        stats.compare([0.8, 0.9, 0.7], [0.7, 0.6], [1, 2], [1, 2])


def test_values_whose_sums_overflow_give_no_numbers_and_no_verdict():
    """|values| near 1e308 (a corrupt summary): the mean, std and interval overflow to
    inf or NaN, which are no numbers: all NaN, and the comparison's verdict "no value".
    Bug: "inf ± inf", an interval "[-inf, +nan]" and "not distinguishable" from p = NaN."""
    import math

    d = stats.describe([1e308, 1e308])
    assert d.n == 2 and all(math.isnan(v) for v in (d.mean, d.std, d.low, d.high))
    for c in (
        stats.compare([1e308, 1e308], [0.5, 0.6], [1, 2], [1, 2]),
        stats.compare([1e308, 1e308], [0.5, 0.6, 0.7]),
    ):
        assert all(math.isnan(v) for v in (c.diff, c.low, c.high, c.p))
        assert stats.verdict(c, c.p) == stats.NO_RESULT
    fine = stats.compare([1e150, 2e150], [0.5, 0.6])  # large but finite: still a result
    assert math.isfinite(fine.p) and stats.verdict(fine, fine.p) == stats.NOT_DISTINGUISHABLE


def test_runs_without_a_known_seed_are_not_paired():
    """A run whose seed is unknown (None or NaN: a summary.csv with an empty seed cell) on
    each side: Welch, not a pair of two unknown seeds. A run without a seed and without a
    value does not stop the others pairing. Bug: None matched None as one seed."""
    for unknown in (None, float("nan")):
        a, b = [0.80, 0.90, 0.85], [0.70, 0.86, 0.80]
        c = stats.compare(a, b, [unknown, 1, 2], [unknown, 1, 2])
        assert c.test == "welch"
        assert c.p == pytest.approx(sp.ttest_ind(a, b, equal_var=False).pvalue)
    c = stats.compare([None, 0.90, 0.85], [0.86, 0.80], [None, 1, 2], [1, 2])
    assert c.test == "paired"
