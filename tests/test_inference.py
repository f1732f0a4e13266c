"""tripletlab.inference: the fixed query sample of the per-epoch evaluation."""

from __future__ import annotations

import numpy as np

from tripletlab.inference import query_sample


def test_query_sample_is_fixed_sorted_and_distinct():
    a = query_sample(10_000, 2000)
    assert a is not None and a.shape == (2000,)
    assert np.array_equal(a, query_sample(10_000, 2000))  # the same queries every epoch
    assert np.all(np.diff(a) > 0) and a[0] >= 0 and a[-1] < 10_000
    assert not np.array_equal(a, query_sample(10_000, 2000, seed=1))
    # spread over the whole split, not its first rows
    assert a[-1] > 9_000 and a[0] < 1_000


def test_no_sample_means_every_query():
    assert query_sample(500, None) is None
    assert query_sample(500, 500) is None
    assert query_sample(500, 10_000) is None
