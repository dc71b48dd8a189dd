"""minignn._fastmath: the vectorisable float64 exp, log and div of the CPU kernels, against math's
over their whole range (every binade), at the edges (overflow, underflow to subnormals and 0,
+-inf, NaN, zero divisors), compiled and (with NUMBA_DISABLE_JIT=1) as plain Python."""
import math

import numba
import numpy as np
import pytest

from minignn._fastmath import div, exp, log
from minignn._numba import njit

N = 2_000 if numba.config.DISABLE_JIT else 400_000


@njit
def _map_exp(v, out):
    for i in range(v.size):
        out[i] = exp(v[i])


@njit
def _map_log(u, out):
    for i in range(u.size):
        out[i] = log(u[i])


@njit
def _map_div(a, b, out):
    for i in range(a.size):
        out[i] = div(a[i], b[i])


def _ulps(got, want):
    return np.abs(got - want) / np.spacing(np.abs(want))


def test_exp_matches_math_exp_to_a_few_ulp_everywhere():
    rng = np.random.default_rng(0)
    v = np.concatenate([rng.uniform(-745.13, 709.78, N), rng.uniform(-1, 1, N // 4),
                        rng.uniform(-744.9, -708.5, N // 8),          # subnormal results
                        [0.0, -0.0, 1e-300, -1e-300, 709.782, -708.39, -745.13]])
    out = np.empty_like(v)
    _map_exp(v, out)
    want = np.array([math.exp(t) for t in v])
    normal = want >= np.finfo(np.float64).tiny
    assert _ulps(out[normal], want[normal]).max() <= 4
    sub = ~normal
    assert np.all(np.abs(out[sub] - want[sub]) <= 2 * 5e-324), "subnormal results within 2 of the smallest step"


def test_exp_edges():
    v = np.array([np.inf, -np.inf, np.nan, 709.79, 1e308, -745.14, -1e308, 0.0])
    out = np.empty_like(v)
    _map_exp(v, out)
    assert out[0] == np.inf and out[1] == 0.0 and np.isnan(out[2])
    assert out[3] == np.inf and out[4] == np.inf, "overflow is +inf"
    assert out[5] == 0.0 and out[6] == 0.0, "underflow is 0, not a NaN"
    assert out[7] == 1.0


def test_log_matches_math_log_to_a_few_ulp_everywhere():
    rng = np.random.default_rng(1)
    u = np.concatenate([np.exp(rng.uniform(-744, 709, N)), rng.uniform(0.5, 2.0, N // 4),
                        rng.uniform(1 - 1e-6, 1 + 1e-6, N // 8),
                        [5e-324, 1e-310, 2.2250738585072014e-308, np.finfo(np.float64).max, 2.0, 0.5]])
    out = np.empty_like(u)
    _map_log(u, out)
    want = np.array([math.log(t) for t in u])
    nonzero = want != 0
    # near u = 1 log u is tiny and its ulp too: there the error bound is absolute (a few ulp of 1)
    assert np.all((_ulps(out[nonzero], want[nonzero]) <= 4) | (np.abs(out[nonzero] - want[nonzero]) <= 4e-16))


def test_log_edges():
    u = np.array([0.0, -0.0, -1.0, -np.inf, np.inf, np.nan, 1.0])
    out = np.empty_like(u)
    _map_log(u, out)
    assert out[0] == -np.inf and out[1] == -np.inf
    assert np.isnan(out[2]) and np.isnan(out[3]) and np.isnan(out[5])
    assert out[4] == np.inf and out[6] == 0.0


def test_div_is_ieee_division():
    a = np.array([1.0, -1.0, 0.0, 3.0, np.inf, 6.0])
    b = np.array([0.0, 0.0, 0.0, 2.0, np.inf, -3.0])
    out = np.empty_like(a)
    _map_div(a, b, out)
    assert out[0] == np.inf and out[1] == -np.inf and np.isnan(out[2]) and np.isnan(out[4])
    assert out[3] == 1.5 and out[5] == -2.0


@pytest.mark.parametrize("fn, ref", [(exp, math.exp), (log, math.log)])
def test_scalar_call_from_python(fn, ref):
    """The functions are usable outside a kernel too (a compiled call, or plain Python)."""
    assert float(fn(0.7)) == pytest.approx(ref(0.7), rel=1e-15)
