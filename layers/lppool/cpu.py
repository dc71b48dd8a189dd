"""Numba kernels of power-average (Lp) pooling (NCHW, C-contiguous arrays).

Both kernels run in parallel over the ``N*C`` image planes (``prange``): an iteration reads and
writes only its own plane of each array (and its own entry of the per-plane ``dp`` sums), so the
backward's accumulation into ``gx`` (overlapping windows) is race-free. A window's real cells
are found by clipping it to the input (:func:`~minignn.layers._window.real_offsets`), so padding
is never materialised and never counted in |R|. ``p`` arrives as a (C,) array (a scalar p is
broadcast by the glue); plane (n, c) reads ``p[c]``.

Per window, in float64 whatever x's dtype (every value is read as ``np.float64``, so that also
the plain-Python run of ``NUMBA_DISABLE_JIT=1`` computes in float64: under NumPy 2's promotion a
float32 scalar divided by a Python float stays float32)::

    m = max_R x   (the first NaN wins, as in every max-like kernel of minignn)
    u_q = x_q / m in [0, 1],   A = 1/|R| sum_q u_q^p   in [1/|R|, 1]
    y = m A^(1/p)                                     when 0 < m < inf, else y = m

so an all-zero window gives 0 (no division), +inf gives +inf and NaN propagates; no power of a
value above 1 is ever taken, so x^p cannot overflow (float32 values near 1e30 with p = 6 are
fine). The backward recomputes m and A from x (nothing but x is saved) and forms, with
B = 1/|R| sum_q u_q^p log u_q (0 log 0 = 0)::

    dy/dx_q = 1/|R| u_q^(p-1) A^(1/p - 1)    (= 1/|R| (x_q / y)^(p-1))
    dy/dp   = y/p (B/A - log(A)/p)            (= y/p 1/|R| sum_q r_q^p log r_q, r_q = x_q / y)

and for an all-zero window dy/dx_q = 1/|R|, dy/dp = 0; a window with m = inf or NaN gets NaN.
``u ** (p - 1)`` is 1 at u = 0 for p = 1 (0^0 = 1: average pooling's gradient) and 0 for p > 1.
The 2x2 bodies work in the log domain, ``u_q^p = exp(p (log x_q - log m))``, so the forward
divides nothing and the backward forms each cell's three powers from one log, one exp and one
division (:func:`_fpowers`); divisions are as dear as the polynomials here (the forward took
35 ms with ``x_q / m``, 25 ms without, at (128, 64, 32, 32)).
Both 2x2 bodies take their logs and exps from :mod:`minignn._fastmath` and select (not branch)
on the window's kind, so LLVM runs their window loops in SIMD lanes: the forward directly (3.5x
faster than ``**``), the backward on a row of windows de-interleaved into a unit-stride scratch,
its dp terms summed after the row (a running float sum inside the loop would not vectorise;
1.5x faster than libm window by window).
``log`` is only taken of u > 0 (plain Python's math.log(0) raises).

Two plane bodies per kernel: the general one (any kernel, stride and padding, window by window)
and the 2x2 / stride 2 / no padding one (four fixed cells, |R| = 4). The general backward zeroes
its ``gx`` plane just before scattering into it, while the plane is in cache; the 2x2 backward
writes every ``gx`` cell exactly once (the odd last row or column, in no window, gets 0). Either
way gx is streamed once, with no separate memset. The per-plane ``dp`` sum is a float64
(N, C) array that the glue reduces to p's shape.
"""
from __future__ import annotations

import math

import numpy as np

from minignn._fastmath import div, exp, log
from minignn._numba import njit, pjit, prange
from minignn.layers._window import is_2x2, real_offsets
from minignn.layers.pooling.cpu import (_zero_plane, gather_row_2x2, max4, scatter_row_2x2, window_max,
                                       zero_trailing)

_INF = np.inf


@njit(inline='always')
def _ordinary(m):
    """A window whose max is positive and finite: the only kind that needs the power mean."""
    return (m > 0.0) & (m < _INF)


@njit(inline='always')
def _ulogu(u, up):
    """u^p log u given up = u^p, with 0 log 0 = 0."""
    return up * math.log(u) if u > 0.0 else 0.0


# -------------------------------------------------------------------------------------- forward
@njit(inline='always')
def _upow(v, lm, pc):
    """u^p = (v / m)^p for v in [0, m], given lm = log m: ``exp(p (log v - lm))``, 0 at v = 0
    (a little above 1 by rounding is fine; garbage when m is not ordinary, and not used then)."""
    return exp(pc * (log(v) - lm))


@njit(inline='always')
def _fwd_plane(x, p, n, c, kh, kw, sh, sw, ph, pw, y):
    h_in, w_in = x.shape[2], x.shape[3]
    pc = np.float64(p[c])
    inv_p = 1.0 / pc
    for oh in range(y.shape[2]):
        h0 = oh * sh - ph
        i0, i1 = real_offsets(h0, kh, h_in)
        for ow in range(y.shape[3]):
            w0 = ow * sw - pw
            j0, j1 = real_offsets(w0, kw, w_in)
            m = window_max(x, n, c, h0, w0, i0, i1, j0, j1, kw)[0]
            v = m
            if _ordinary(m):
                s = 0.0
                for di in range(i0, i1):
                    for dj in range(j0, j1):
                        s += (np.float64(x[n, c, h0 + di, w0 + dj]) / m) ** pc
                v = m * (s / ((i1 - i0) * (j1 - j0))) ** inv_p
            y[n, c, oh, ow] = v


@njit(inline='always')
def _fwd_plane_2x2(x, p, n, c, y):
    pc = np.float64(p[c])
    inv_p = 1.0 / pc
    for oh in range(y.shape[2]):
        h0 = 2 * oh
        for ow in range(y.shape[3]):
            w0 = 2 * ow
            a = np.float64(x[n, c, h0, w0])
            b = np.float64(x[n, c, h0, w0 + 1])
            d = np.float64(x[n, c, h0 + 1, w0])
            e = np.float64(x[n, c, h0 + 1, w0 + 1])
            m = max4(a, b, d, e)[0]
            # branch-free: the power mean is formed always, and kept when m is ordinary; in the log
            # domain, u^p = e^(p (log x - log m)), which needs no division
            lm = log(m)
            s = (_upow(a, lm, pc) + _upow(b, lm, pc)) + (_upow(d, lm, pc) + _upow(e, lm, pc))
            v = m * exp(inv_p * log(s * 0.25))
            y[n, c, oh, ow] = v if _ordinary(m) else m


@pjit
def lppool2d_fwd_cpu(x, p, kh, kw, sh, sw, ph, pw, y):
    """y[n, c, oh, ow] = m (1/|R| sum (x/m)^p)^(1/p) over the window's real cells R, p = p[c]
    (0 for an all-zero window, m itself for m = inf or NaN); float64 arithmetic."""
    n_ch = x.shape[1]
    fast = is_2x2(kh, kw, sh, sw, ph, pw)
    for plane in prange(x.shape[0] * n_ch):
        n = plane // n_ch
        c = plane - n * n_ch
        if fast:
            _fwd_plane_2x2(x, p, n, c, y)
        else:
            _fwd_plane(x, p, n, c, kh, kw, sh, sw, ph, pw, y)


# ------------------------------------------------------------------------------------- backward
@njit(inline='always')
def _bwd_plane(x, p, gy, n, c, kh, kw, sh, sw, ph, pw, gx):
    """Scatter every window's dy/dx_q gy into gx's plane; returns the plane's sum of gy dy/dp."""
    h_in, w_in = x.shape[2], x.shape[3]
    pc = np.float64(p[c])
    inv_p = 1.0 / pc
    _zero_plane(gx, n, c)
    dp = 0.0
    for oh in range(gy.shape[2]):
        h0 = oh * sh - ph
        i0, i1 = real_offsets(h0, kh, h_in)
        for ow in range(gy.shape[3]):
            w0 = ow * sw - pw
            j0, j1 = real_offsets(w0, kw, w_in)
            cnt = (i1 - i0) * (j1 - j0)
            g = np.float64(gy[n, c, oh, ow])
            m = window_max(x, n, c, h0, w0, i0, i1, j0, j1, kw)[0]
            if _ordinary(m):
                sa = 0.0
                sb = 0.0
                for di in range(i0, i1):
                    for dj in range(j0, j1):
                        u = np.float64(x[n, c, h0 + di, w0 + dj]) / m
                        up = u ** pc
                        sa += up
                        sb += _ulogu(u, up)
                a = sa / cnt
                coef = g * a ** (inv_p - 1.0) / cnt
                for di in range(i0, i1):
                    for dj in range(j0, j1):
                        u = np.float64(x[n, c, h0 + di, w0 + dj]) / m
                        gx[n, c, h0 + di, w0 + dj] += coef * u ** (pc - 1.0)
                yv = m * a ** inv_p
                dp += g * (yv * inv_p) * ((sb / cnt) / a - math.log(a) * inv_p)
            else:               # all zeros: the average's gradient, dy/dp = 0; inf or NaN: NaN
                coef = g / cnt if m == 0.0 else np.nan
                for di in range(i0, i1):
                    for dj in range(j0, j1):
                        gx[n, c, h0 + di, w0 + dj] += coef
                if m != 0.0:
                    dp += np.nan
    return dp


@njit(inline='always')
def _fpowers(v, m, lm, pc):
    """``(u^p, u^p log u, u^(p-1))`` for u = v / m in [0, 1], given lm = log m, from one log, one
    exp of :mod:`minignn._fastmath` and one division (``u^(p-1) = u^p m / v``; ``0^(p-1)`` is 1
    for p = 1, else 0; ``0 log 0 = 0``), branch-free (selects), so a loop over windows can run it
    in SIMD lanes."""
    lu = log(v) - lm
    up = exp(pc * lu)
    pos = v > 0.0
    return up, (up * lu if pos else 0.0), (div(up * m, v) if pos else (1.0 if pc == 1.0 else 0.0))


@njit(inline='always')
def _bwd_row_2x2(sc, wo, pc, inv_p):
    """One output row's windows, from the de-interleaved scratch rows (0..3: the cells a, b, d, e;
    4: gy) to rows 5..8 (the four cells' gradients) and 9 (each window's gy dy/dp). Unit-stride
    and branch-free, so LLVM vectorises it."""
    for ow in range(wo):
        g = sc[4, ow]
        a = sc[0, ow]
        b = sc[1, ow]
        d = sc[2, ow]
        e = sc[3, ow]
        m = max4(a, b, d, e)[0]
        lm = log(m)
        pa, la, qa = _fpowers(a, m, lm, pc)
        pb, lb, qb = _fpowers(b, m, lm, pc)
        pd, ld, qd = _fpowers(d, m, lm, pc)
        pe, le, qe = _fpowers(e, m, lm, pc)
        mean = ((pa + pb) + (pd + pe)) * 0.25
        sb = ((la + lb) + (ld + le)) * 0.25
        lmean = log(mean)
        root = exp(lmean * inv_p)                          # mean^(1/p); mean^(1/p - 1) = root / mean
        inv_mean = div(1.0, mean)
        coef = g * (root * inv_mean) * 0.25
        ok = _ordinary(m)
        other = g * 0.25 if m == 0.0 else np.nan           # all zeros: the average's; inf or NaN: NaN
        sc[5, ow] = coef * qa if ok else other
        sc[6, ow] = coef * qb if ok else other
        sc[7, ow] = coef * qd if ok else other
        sc[8, ow] = coef * qe if ok else other
        dpw = g * (m * root * inv_p) * (sb * inv_mean - lmean * inv_p)
        sc[9, ow] = dpw if ok else (0.0 if m == 0.0 else np.nan)


@njit(inline='always')
def _bwd_plane_2x2(x, p, gy, n, c, gx, sc):
    """The 2x2 backward of one plane, a row of windows at a time: the row's cells and gy are
    de-interleaved into the float64 scratch ``sc`` (10, Wo) (strided reads), the windows computed
    by :func:`_bwd_row_2x2` (unit stride, vectorised), then the gradients written back (strided
    writes) and the row's dy/dp terms summed in order."""
    pc = np.float64(p[c])
    inv_p = 1.0 / pc
    dp = 0.0
    wo = gy.shape[3]
    for oh in range(gy.shape[2]):
        gather_row_2x2(x, gy, n, c, oh, sc)
        _bwd_row_2x2(sc, wo, pc, inv_p)
        scatter_row_2x2(gx, n, c, oh, wo, sc)
        for ow in range(wo):
            dp += sc[9, ow]
    zero_trailing(gx, n, c, 2 * gy.shape[2], 2 * wo)
    return dp


@pjit
def lppool2d_bwd_cpu(x, p, gy, kh, kw, sh, sw, ph, pw, gx, gpp):
    """gx = sum over windows of gy dy/dx_q (gx is written whole, zeros included); gpp[n, c] (float64)
    = the plane's sum over windows of gy dy/dp, for the glue to reduce to p's shape."""
    n_ch = x.shape[1]
    fast = is_2x2(kh, kw, sh, sw, ph, pw)
    for plane in prange(x.shape[0] * n_ch):
        n = plane // n_ch
        c = plane - n * n_ch
        if fast:
            gpp[n, c] = _bwd_plane_2x2(x, p, gy, n, c, gx, np.empty((10, gy.shape[3])))
        else:
            gpp[n, c] = _bwd_plane(x, p, gy, n, c, kh, kw, sh, sw, ph, pw, gx)
