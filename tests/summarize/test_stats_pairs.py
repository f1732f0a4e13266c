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
