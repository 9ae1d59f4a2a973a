"""Statistics over seeds, in plain Python (float64): summaries with Student-t confidence
intervals, the paired t-test, and how many seeds a paired comparison needs.

The Student-t distribution function is the regularized incomplete beta function (a continued
fraction, evaluated by the modified Lentz method as in Numerical Recipes §6.4); its quantiles are
found by bisection. tests/test_stats.py checks every function against SciPy on fixed inputs.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

CONFIDENCE = 0.95
POWER = 0.8


def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        for numerator in (m * (b - m) * x / ((qam + 2 * m) * (a + 2 * m)),
                          -(a + m) * (qab + m) * x / ((a + 2 * m) * (qap + 2 * m))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b), for a, b > 0 and 0 <= x <= 1."""
    if x <= 0.0 or x >= 1.0:
        return 0.0 if x <= 0.0 else 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_fraction(a, b, x) / a
    return 1.0 - front * _beta_fraction(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` degrees of freedom."""
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_ppf(p: float, df: float) -> float:
    """The `p` quantile of Student's t with `df` degrees of freedom (0 < p < 1), by bisection."""
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_ppf(1.0 - p, df)
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:
        low, high = high, 2.0 * high
    for _ in range(200):
        middle = 0.5 * (low + high)
        if t_cdf(middle, df) < p:
            low = middle
        else:
            high = middle
        if high - low <= 1e-14 * max(1.0, high):
            break
    return 0.5 * (low + high)


def describe(values: Sequence[float]) -> dict[str, Any]:
    """n, mean, standard deviation (n - 1), standard error, 95% confidence interval of the mean
    (Student t, n - 1 degrees of freedom), min and max; spreads are None for fewer than 2 values.
    None values (a diverged run's null) are left out and counted in `missing`."""
    present = [float(v) for v in values if v is not None]
    n = len(present)
    result: dict[str, Any] = {"n": n, "missing": len(values) - n, "mean": None, "std": None, "sem": None,
                              "ci95": None, "min": min(present, default=None), "max": max(present, default=None)}
    if n == 0:
        return result
    result["mean"] = statistics.fmean(present)
    if n > 1:
        std = statistics.stdev(present)
        sem = std / math.sqrt(n)
        half = t_ppf(0.5 + CONFIDENCE / 2, n - 1) * sem
        result.update(std=std, sem=sem, ci95=[result["mean"] - half, result["mean"] + half])
    return result


def paired(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """The paired comparison of `a` and `b` (one value per seed each, in the same seed order):
    the differences a - b described (`describe`), the paired t statistic, its two-sided p-value,
    and `seeds_needed` to detect the observed mean difference (`seeds_needed`)."""
    if len(a) != len(b):
        raise ValueError(f"paired values need one value per seed on both sides, got {len(a)} and {len(b)}")
    result = describe([x - y for x, y in zip(a, b) if x is not None and y is not None])
    result.update(t=None, p_value=None, seeds_needed=None)
    if result["std"] is None:
        return result
    mean, std, n = result["mean"], result["std"], result["n"]
    if std > 0:
        result["t"] = mean / result["sem"]
        result["p_value"] = min(1.0, 2.0 * (1.0 - t_cdf(abs(result["t"]), n - 1)))
    else:
        result["p_value"] = 1.0 if mean == 0 else 0.0
    result["seeds_needed"] = seeds_needed(mean, std)
    return result


def seeds_needed(mean_difference: float, std_difference: float, alpha: float = 1 - CONFIDENCE,
                 power: float = POWER, limit: int = 100_000) -> int | None:
    """The smallest number of seeds n for which a two-sided paired t-test at level `alpha` detects
    a true mean difference of `mean_difference` with probability `power`, when the differences
    have standard deviation `std_difference`: the fixed point of
    n = ((t[1 - alpha/2, n-1] + t[power, n-1]) / d)^2, d = |mean| / std, from the normal
    approximation (z instead of t) upwards. None when there is no difference to detect, or more
    than `limit` seeds would be needed."""
    if mean_difference == 0 or math.isnan(mean_difference):
        return None
    if std_difference == 0:
        return 2
    effect = abs(mean_difference) / std_difference
    normal = statistics.NormalDist()
    needed = lambda n: math.ceil(((t_ppf(1 - alpha / 2, n - 1) + t_ppf(power, n - 1)) / effect) ** 2)
    n = max(2, math.ceil(((normal.inv_cdf(1 - alpha / 2) + normal.inv_cdf(power)) / effect) ** 2))
    while n <= limit and needed(n) > n:
        n = needed(n)
    while n > 2 and needed(n - 1) <= n - 1:  # the jumps may pass the smallest such n
        n -= 1
    return n if n <= limit else None
