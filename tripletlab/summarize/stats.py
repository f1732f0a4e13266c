"""The statistics of a comparison over seeds: numbers in, numbers out (numpy and scipy).

- :func:`describe`: n, mean, sample std (ddof 1) and a Student-t 95% confidence interval of
  the mean, ``mean ± t(0.975, n - 1) · std / √n``;
- :func:`compare`: the difference of two configurations' means, with its 95% interval and
  two-sided p-value: paired by seed (a t-test on the per-seed differences) when both ran
  the same seeds, Welch's t-test (unequal variances) otherwise;
- :func:`holm`: Holm's step-down adjustment of several p-values (one family);
- :func:`verdict`: the words for a comparison.

Missing values (None, NaN) are dropped, never counted as 0. With one value there is no
std and no interval (NaN). With a std of 0 (every seed gave the same number) the interval
has width 0; a difference whose spread is 0 gets p = 0 when it is not 0 (the t statistic is
infinite, as scipy has it) and p = 1 when it is 0 (scipy: NaN), so no NaN stands for a
result. Statistics that overflow (|values| above about 1e154, a corrupt summary) are NaN,
and such a comparison's verdict is "no value".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats as _scipy

LEVEL = 0.95
# 0.05, not 1 - LEVEL (0.050000000000000044): a Holm p of exactly 0.05 is not below it.
ALPHA = round(1.0 - LEVEL, 12)
DISTINGUISHABLE = "distinguishable at 95%"
NOT_DISTINGUISHABLE = "not distinguishable"
ONE_SEED = "one seed: no interval"
NO_RESULT = "no value"
REFERENCE = "reference"

__all__ = [
    "ALPHA",
    "LEVEL",
    "Comparison",
    "Description",
    "compare",
    "describe",
    "holm",
    "verdict",
]


@dataclass(frozen=True)
class Description:
    """One configuration's metric over its seeds; NaN where undefined (std and interval
    for n < 2, everything for n = 0)."""

    n: int
    mean: float
    std: float
    low: float
    high: float


@dataclass(frozen=True)
class Comparison:
    """``a - b``: test is "paired", "welch", or "" when a side has fewer than 2 values
    (then only ``diff`` may be a number); ``df``: the t distribution's degrees of freedom."""

    test: str
    diff: float
    low: float
    high: float
    p: float
    df: float
    n_a: int
    n_b: int


def _finite(values: Sequence[float | None]) -> np.ndarray:
    x = np.array([math.nan if v is None else float(v) for v in values], dtype=np.float64)
    return x[np.isfinite(x)]


def _t_half_width(se: float, df: float) -> float:
    return float(_scipy.t.ppf(0.5 + LEVEL / 2, df)) * se


def describe(values: Sequence[float | None]) -> Description:
    """n, mean, sample std and the Student-t interval of the mean of ``values`` [n]."""
    x = _finite(values)
    n = len(x)
    if n == 0:
        return Description(0, math.nan, math.nan, math.nan, math.nan)
    mean = float(x.mean())
    if n == 1:
        return Description(1, mean, math.nan, math.nan, math.nan)
    std = float(x.std(ddof=1))
    half = _t_half_width(std / math.sqrt(n), n - 1)
    if not math.isfinite(mean + std + half):  # overflow (|values| near 1e308): no number
        return Description(n, math.nan, math.nan, math.nan, math.nan)
    return Description(n, mean, std, mean - half, mean + half)


def _t_test(diff: float, se: float, df: float) -> tuple[float, float, float]:
    """(low, high, p) for a difference with standard error ``se`` (0: see the module)."""
    if se == 0.0:
        return diff, diff, 1.0 if diff == 0.0 else 0.0
    half = _t_half_width(se, df)
    p = float(2.0 * _scipy.t.sf(abs(diff) / se, df))
    return diff - half, diff + half, p


def _missing_seed(seed: Any) -> bool:
    return seed is None or (isinstance(seed, float) and math.isnan(seed))


def _pairs(
    a: Sequence[float | None], seeds_a: Sequence | None, b: Sequence[float | None], seeds_b
) -> tuple[np.ndarray, np.ndarray] | None:
    """The values of a and b matched by seed, when both have the same seeds (each once,
    every value finite) and at least 2; else None."""
    if seeds_a is None or seeds_b is None:
        return None
    keep_a = {s: v for s, v in zip(seeds_a, a, strict=True) if v is not None and math.isfinite(v)}
    keep_b = {s: v for s, v in zip(seeds_b, b, strict=True) if v is not None and math.isfinite(v)}
    if any(_missing_seed(s) for s in [*keep_a, *keep_b]):
        return None  # a run whose seed is not known is not the same seed as another's
    if len(keep_a) != len(_finite(a)) or len(keep_b) != len(_finite(b)):
        return None  # a seed ran twice: no one-to-one pairing
    if set(keep_a) != set(keep_b) or len(keep_a) < 2:
        return None
    order = sorted(keep_a, key=str)
    return np.array([keep_a[s] for s in order]), np.array([keep_b[s] for s in order])


def _defined(c: Comparison) -> Comparison:
    """``c``, or with NaN numbers when one overflowed (|values| near 1e308): an infinite
    difference or a NaN p is no result (:func:`verdict` says "no value")."""
    if c.test and not math.isfinite(c.diff + c.low + c.high + c.p):
        nan = math.nan
        return Comparison(c.test, nan, nan, nan, nan, c.df, c.n_a, c.n_b)
    return c


def compare(
    a: Sequence[float | None],
    b: Sequence[float | None],
    seeds_a: Sequence | None = None,
    seeds_b: Sequence | None = None,
) -> Comparison:
    """``mean(a) - mean(b)`` with its 95% interval and p-value; paired by seed when
    ``seeds_a`` and ``seeds_b`` (one per value) hold the same seeds, Welch otherwise."""
    xa, xb = _finite(a), _finite(b)
    na, nb = len(xa), len(xb)
    diff = float(xa.mean() - xb.mean()) if na and nb else math.nan
    pairs = _pairs(a, seeds_a, b, seeds_b)
    if pairs is not None:
        d = pairs[0] - pairs[1]
        n = len(d)
        se = float(d.std(ddof=1)) / math.sqrt(n)
        low, high, p = _t_test(float(d.mean()), se, n - 1)
        return _defined(Comparison("paired", float(d.mean()), low, high, p, float(n - 1), na, nb))
    if na < 2 or nb < 2:
        return Comparison("", diff, math.nan, math.nan, math.nan, math.nan, na, nb)
    va, vb = float(xa.var(ddof=1)) / na, float(xb.var(ddof=1)) / nb
    se = math.sqrt(va + vb)
    # Welch-Satterthwaite, (va + vb)^2 / (va^2 / (na - 1) + vb^2 / (nb - 1)), written with
    # the shares of va + vb: the squares of large variances would overflow (a float ** that
    # does raises). With both variances 0 the df does not matter (se = 0).
    if not se:
        df = float(na + nb - 2)
    elif math.isfinite(se):
        share_a, share_b = va / (va + vb), vb / (va + vb)
        df = 1.0 / (share_a * share_a / (na - 1) + share_b * share_b / (nb - 1))
    else:  # the variances overflowed: no df, no result (_defined)
        df = math.nan
    low, high, p = _t_test(diff, se, df)
    return _defined(Comparison("welch", diff, low, high, p, float(df), na, nb))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's adjusted p-values, in the given order: the i-th smallest of the m finite
    ones is multiplied by m - i (i from 0), then made non-decreasing and capped at 1; NaN
    stays NaN (not counted in m)."""
    p = np.array([math.nan if v is None else float(v) for v in pvalues], dtype=np.float64)
    finite = np.flatnonzero(np.isfinite(p))
    out = np.full(len(p), math.nan)
    order = finite[np.argsort(p[finite], kind="stable")]
    m = len(order)
    running = 0.0
    for i, index in enumerate(order):
        running = max(running, min(1.0, (m - i) * p[index]))
        out[index] = running
    return [float(v) for v in out]


def verdict(comparison: Comparison, p_adjusted: float) -> str:
    """The words for a comparison whose p-value, adjusted, is ``p_adjusted``."""
    if comparison.n_a == 0 or comparison.n_b == 0:
        return NO_RESULT
    if comparison.test and math.isnan(p_adjusted):  # the numbers overflowed (_defined)
        return NO_RESULT
    if not comparison.test:
        return ONE_SEED
    return DISTINGUISHABLE if p_adjusted < ALPHA else NOT_DISTINGUISHABLE
