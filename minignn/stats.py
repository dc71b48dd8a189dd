"""Small statistics for studies over seeds: Student t intervals, paired and Welch differences.

Plain Python and NumPy (no SciPy): the t distribution's CDF is the regularized incomplete beta
function, evaluated by its continued fraction, and its quantile is found by bisection.

>>> round(t_quantile(0.975, 2), 6)
4.302653
>>> m, lo, hi = mean_interval([76.1, 76.5, 75.9])
>>> round(m, 4), round(hi - m, 4)
(76.1667, 0.7589)

For n values with mean m and sample standard deviation s (divisor n - 1), the 95% interval of the
mean is ``m +- t(0.975, n - 1) s / sqrt(n)``. It needs n >= 2; with one value the interval is
unknown (None). A difference between two variants run on the same seeds is *paired*: the interval
of the mean of the per-seed differences. Without common seeds it is Welch's: standard error
``sqrt(s1^2/n1 + s2^2/n2)`` with the Welch-Satterthwaite degrees of freedom.
"""
from __future__ import annotations

import math

__all__ = ["t_cdf", "t_quantile", "mean_interval", "paired_difference", "welch_difference", "difference"]


def _betacf(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz's method)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 1000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b) for a, b > 0, 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    ln_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    front = math.exp(ln_front)
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` > 0 degrees of freedom (df may be fractional)."""
    if not df > 0:
        raise ValueError(f"df: expected a number > 0, got {df!r}")
    x = df / (df + t * t)
    tail = 0.5 * _betainc(df / 2.0, 0.5, x)   # P(T > |t|)
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The t with P(T <= t) = p, for 0 < p < 1 and df > 0 (bisection on :func:`t_cdf`)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p: expected a probability in (0, 1), got {p!r}")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2.0
        if hi > 1e12:
            return math.inf
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-13 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


def _mean_sd(values) -> tuple[int, float, float]:
    v = [float(x) for x in values]
    n = len(v)
    if n == 0:
        raise ValueError("values: expected at least one number, got none")
    if not all(math.isfinite(x) for x in v):
        raise ValueError(f"values: expected finite numbers, got {v!r}")
    m = math.fsum(v) / n
    sd = math.sqrt(math.fsum((x - m) ** 2 for x in v) / (n - 1)) if n > 1 else math.nan
    return n, m, sd


def mean_interval(values, level: float = 0.95) -> tuple[float, float | None, float | None]:
    """(mean, low, high): the Student t interval of the mean at ``level``; (mean, None, None) for one value."""
    n, m, sd = _mean_sd(values)
    if n < 2:
        return m, None, None
    half = t_quantile(0.5 + level / 2.0, n - 1) * sd / math.sqrt(n)
    return m, m - half, m + half


def paired_difference(a, b, level: float = 0.95) -> tuple[float, float | None, float | None]:
    """(mean, low, high) of the per-pair differences ``a_i - b_i`` (same length: the same seeds)."""
    a, b = list(a), list(b)
    if len(a) != len(b):
        raise ValueError(f"paired_difference: expected two equally long lists, got {len(a)} and {len(b)} values")
    return mean_interval([x - y for x, y in zip(a, b)], level)


def welch_difference(a, b, level: float = 0.95) -> tuple[float, float | None, float | None]:
    """(mean(a) - mean(b), low, high) by Welch's t interval (unpaired, unequal variances)."""
    na, ma, sa = _mean_sd(a)
    nb, mb, sb = _mean_sd(b)
    d = ma - mb
    if na < 2 or nb < 2:
        return d, None, None
    va, vb = sa * sa / na, sb * sb / nb
    se = math.sqrt(va + vb)
    if se == 0.0:
        return d, d, d
    df = (va + vb) ** 2 / (va * va / (na - 1) + vb * vb / (nb - 1))
    half = t_quantile(0.5 + level / 2.0, df) * se
    return d, d - half, d + half


def difference(a: dict, b: dict, level: float = 0.95) -> dict:
    """The difference of two variants' results, ``a`` minus ``b``, each a {seed: value} dict.

    Paired over the seeds both have when there are at least two of them, else Welch's interval
    over all their values. Returns ``{"mean", "low", "high", "method", "seeds"}`` (low and high
    None where the interval is unknown)."""
    common = sorted(set(a) & set(b))
    if len(common) >= 2:
        m, lo, hi = paired_difference([a[s] for s in common], [b[s] for s in common], level)
        return {"mean": m, "low": lo, "high": hi, "method": "paired", "seeds": common}
    if not a or not b:
        return {"mean": None, "low": None, "high": None, "method": None, "seeds": common}
    m, lo, hi = welch_difference(list(a.values()), list(b.values()), level)
    return {"mean": m, "low": lo, "high": hi, "method": "welch", "seeds": common}
