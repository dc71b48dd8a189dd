"""``exp``, ``log`` and ``div`` in float64 for the CPU kernels, written so that LLVM can vectorise them.

Numba compiles ``math.exp`` and ``math.log`` to calls into the C library, one value at a time
(about 9 ns each here). The two functions below are plain arithmetic on the float's bits (a
range reduction and a polynomial), so a loop over many windows runs them in SIMD lanes: about
3x faster in a plain loop, and the pooling kernels that take an exp or log per cell gain the
most. Both are accurate to a few units in the last place of float64 over their whole range
(tests/test_fastmath.py checks them against ``math`` on every binade and on the edges), which
is far below what a float32 kernel can see.

``exp(v)``
    ``v = k ln 2 + r`` with ``k = round(v / ln 2)`` and ``|r| <= ln 2 / 2`` (``ln 2`` split in
    a head with zeros in its low bits and a tail, so ``k ln2_hi`` is exact), ``e^r`` by its
    Taylor series to degree 12 (the next term is below 2e-16 relative), and ``2^k`` built in
    the exponent bits, in two halves so that results down to the smallest subnormal are right.
    ``v > 709.78`` gives +inf, ``v < -745.13`` (``-inf`` included) gives 0, NaN gives NaN.
``log(u)``
    ``u = 2^e m`` with ``m`` in ``[sqrt(1/2), sqrt(2))`` read from the bits (a subnormal ``u`` is
    first scaled by ``2^54``), then ``log m = 2 atanh(s)``, ``s = (m - 1) / (m + 1)``,
    ``|s| <= 0.172``, by its odd series to ``s^21`` and ``log u = e ln 2 + log m``. ``u = 0``
    gives -inf, ``u < 0`` NaN, ``+inf`` +inf, NaN NaN.

``div(a, b)`` is ``a / b`` without Numba's zero check (IEEE: ``x / 0`` is +-inf or NaN), for the same
reason: the check is a branch that raises.

Each edge is a select (``a if cond else b``) on the computed value, not an early return, so the
function body stays one basic block that LLVM can if-convert. The bit casts are NumPy scalar
views (``np.int64(b).view(np.float64)``), which Numba compiles to a register move, so with
``NUMBA_DISABLE_JIT=1`` the same arithmetic runs as plain Python. (Max-entropy pooling has its
own float32 ``exp`` for v <= 0, ``minignn.layers.maxent.cpu.exp_nonpos_f32``, on the same plan.)
"""
from __future__ import annotations

import numba
import numpy as np

from minignn._numba import njit

_LN2_HI = 0.693145751953125           # ln 2 with its low 32 bits of mantissa zero
_LN2_LO = 1.4286068203094172321e-06   # ln 2 - _LN2_HI
_INV_LN2 = 1.4426950408889634
_EXP_MAX = 709.782712893384           # log(largest float64)
_EXP_MIN = -745.1332191019412         # log(smallest subnormal / 2): below it exp rounds to 0
_SQRT2 = 1.4142135623730951
_TINY = 2.2250738585072014e-308       # smallest normal float64
_MANT = (1 << 52) - 1
_ONE_BITS = 1023 << 52

if numba.config.DISABLE_JIT:
    def div(a, b):
        """a / b in float64 with IEEE results for b = 0 (plain-Python run)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.float64(a) / np.float64(b)
else:
    from llvmlite import ir
    from numba import types
    from numba.extending import intrinsic

    @intrinsic
    def _fdiv(typingctx, a, b):
        def codegen(context, builder, signature, args):
            return builder.fdiv(args[0], args[1])
        return types.float64(types.float64, types.float64), codegen

    @njit(inline='always')
    def div(a, b):
        """a / b in float64 with IEEE results (+-inf or NaN for b = 0): Numba's ``/`` checks b for
        zero to raise ZeroDivisionError, and that branch stops a loop from being vectorised."""
        return _fdiv(np.float64(a), np.float64(b))


@njit(inline='always')
def _pow2(k):
    """2^k for an integer k in [-1022, 1023], from its exponent bits."""
    return np.int64((k + 1023) << 52).view(np.float64)


@njit(inline='always')
def exp(v):
    """e^v in float64, a few ulp from math.exp; +inf above 709.78, 0 below -745.13, NaN for NaN."""
    v = np.float64(v)
    # below _EXP_MIN (-inf included) and NaN the result is selected at the end: compute at 0 there,
    # so that no multiply underflows into subnormals (slow on x86) for the common exp(-inf) = 0
    c = min(v, _EXP_MAX) if v >= _EXP_MIN else 0.0
    k = np.floor(c * _INV_LN2 + 0.5)
    r = (c - k * _LN2_HI) - k * _LN2_LO
    p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6 + r * (1.0 / 24 + r * (1.0 / 120 + r * (
        1.0 / 720 + r * (1.0 / 5040 + r * (1.0 / 40320 + r * (1.0 / 362880 + r * (
            1.0 / 3628800 + r * (1.0 / 39916800 + r * (1.0 / 479001600))))))))))))
    ki = np.int64(k)
    k1 = ki >> 1                      # 2^k = 2^k1 2^(k - k1): each half a normal float
    out = (p * _pow2(k1)) * _pow2(ki - k1)
    out = np.inf if v > _EXP_MAX else out
    out = 0.0 if v < _EXP_MIN else out
    return v if v != v else out


@njit(inline='always')
def log(u):
    """log u in float64, a few ulp from math.log; -inf at 0, NaN below 0 and for NaN, +inf at +inf."""
    u = np.float64(u)
    sub = u < _TINY
    scaled = u * 18014398509481984.0 if sub else u            # 2^54: a subnormal becomes normal
    w = scaled if (scaled == scaled) & (scaled < np.inf) & (scaled > 0.0) else 1.0  # edges: below
    bits = np.float64(w).view(np.int64)
    e = ((bits >> 52) & 0x7FF) - 1023 - (54 if sub else 0)
    m = np.int64((bits & _MANT) | _ONE_BITS).view(np.float64)  # [1, 2)
    big = m > _SQRT2
    m = m * 0.5 if big else m
    e = e + 1 if big else e
    s = div(m - 1.0, m + 1.0)
    z = s * s
    t = s * (2.0 + z * (2.0 / 3 + z * (2.0 / 5 + z * (2.0 / 7 + z * (2.0 / 9 + z * (2.0 / 11 + z * (
        2.0 / 13 + z * (2.0 / 15 + z * (2.0 / 17 + z * (2.0 / 19 + z * (2.0 / 21)))))))))))
    fe = np.float64(e)
    out = fe * _LN2_HI + (fe * _LN2_LO + t)
    out = -np.inf if u == 0.0 else out
    out = np.inf if u == np.inf else out
    return np.nan if (u < 0.0) | (u != u) else out
