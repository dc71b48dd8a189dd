"""Numba kernels of local importance pooling (NCHW, C-contiguous x and logit of one shape).

Both kernels run in parallel over the ``N*C`` planes (``prange``): an iteration reads and writes
only its own plane of every array, so the backward's accumulation into ``gx`` and ``glogit``
(overlapping windows) is race-free. A window's real cells are found by clipping it to the input
(:func:`~minignn.layers._window.real_offsets`): padding is never materialised, never weighted.

Per window, in float64 whatever the dtype (every value is read as ``np.float64``, so the
plain-Python run of ``NUMBA_DISABLE_JIT=1`` computes in float64 too)::

    m   = max_R L                       (the first NaN wins, as in every max-like kernel)
    e_q = e^{L_q - m}, and e_q = 1 where L_q = m   (so infinite logits take their limits)
    S   = sum_R e_q  (>= 1),   y = (sum_R e_q x_q) / S,   w_q = e_q / S

A cell of weight 0 (an exp that underflows, or L_q = -inf) adds nothing, not 0 * x_q (no NaN
from an infinite x there). The backward recomputes m, e and y from x and logit (nothing else is
saved; the window's e are kept in a small per-plane scratch between the two passes over it) and
adds, for every window holding q::

    gx_q += gy w_q,     glogit_q += gy w_q (x_q - y)

Two plane bodies per kernel: the general one (any kernel, stride and padding) and the one of
3x3 windows, stride 2, padding 1 (the LIP models' geometry). That one takes one exp per *cell*,
not per (window, cell): it subtracts the plane's largest logit M instead of each window's
(e^{L_q - M} / sum_R e^{L - M} is the same w_q), keeps E = e^{L - M} and E x in two per-plane
scratch arrays (the exps from :mod:`minignn._fastmath`, in a loop LLVM vectorises) and sums them
over the windows separably: 3-wide row sums at stride 2, then three of those rows per window
row. Its backward is the transpose, a gather instead of a scatter: per window A = gy / S and
B = A y, their sums SA, SB over the windows holding each cell (down the columns, then along
the rows), and ``gx_q = E_q SA_q``, ``glogit_q = E_q (x_q SA_q - SB_q)`` (0 where E_q = 0), each
cell written once. A plane with a NaN or infinite logit, and a plane with a window whose E all
underflow to 0 (logits more than ~700 apart in one plane), take the per-window path above,
whose backward zeroes its two planes just before scattering into them, while they are in cache.
"""
from __future__ import annotations

import math

import numpy as np

from minignn._fastmath import exp
from minignn._numba import njit, pjit, prange
from minignn.layers._window import real_offsets
from minignn.layers.pooling.cpu import _takes_over


@njit(inline="always")
def is_3x3s2p1(kh, kw, sh, sw, ph, pw):
    """The LIP models' window: 3x3, stride 2, padding 1."""
    return kh == 3 and kw == 3 and sh == 2 and sw == 2 and ph == 1 and pw == 1


@njit(inline="always")
def _window(x, lg, n, c, h0, w0, i0, i1, j0, j1, kw, e):
    """One window's softmax over its real cells [i0, i1) x [j0, j1) (offsets from (h0, w0)):
    fills ``e[di*kw + dj]`` with e_q and returns (S, sum e_q x_q)."""
    m = np.float64(lg[n, c, h0 + i0, w0 + j0])
    for di in range(i0, i1):
        for dj in range(j0, j1):
            v = np.float64(lg[n, c, h0 + di, w0 + dj])
            if _takes_over(v, m):
                m = v
    s = 0.0
    t = 0.0
    for di in range(i0, i1):
        for dj in range(j0, j1):
            v = np.float64(lg[n, c, h0 + di, w0 + dj])
            ev = 1.0 if v == m else math.exp(v - m)
            e[di * kw + dj] = ev
            s += ev
            if ev != 0.0:
                t += ev * np.float64(x[n, c, h0 + di, w0 + dj])
    return s, t


@njit(inline="always")
def _scatter(x, n, c, h0, w0, i0, i1, j0, j1, kw, e, s, t, g, gx, gl):
    """Add one window's gy dy/dx_q and gy dy/dL_q into the gx and glogit planes."""
    y = t / s
    gs = g / s
    for di in range(i0, i1):
        for dj in range(j0, j1):
            ev = e[di * kw + dj]
            if ev != 0.0:
                gw = gs * ev
                h = h0 + di
                w = w0 + dj
                gx[n, c, h, w] += gw
                gl[n, c, h, w] += gw * (np.float64(x[n, c, h, w]) - y)


@njit(inline="always")
def _zero_planes(gx, gl, n, c):
    for h in range(gx.shape[2]):
        for w in range(gx.shape[3]):
            gx[n, c, h, w] = 0
            gl[n, c, h, w] = 0


# -------------------------------------------------------------------------------------- forward
@njit(inline="always")
def _fwd_plane(x, lg, n, c, kh, kw, sh, sw, ph, pw, y, e):
    H, W = x.shape[2], x.shape[3]
    for oh in range(y.shape[2]):
        h0 = oh * sh - ph
        i0, i1 = real_offsets(h0, kh, H)
        for ow in range(y.shape[3]):
            w0 = ow * sw - pw
            j0, j1 = real_offsets(w0, kw, W)
            s, t = _window(x, lg, n, c, h0, w0, i0, i1, j0, j1, kw, e)
            y[n, c, oh, ow] = t / s


@njit(inline="always")
def _plane_exp(x, lg, n, c, E, EX):
    """E = e^{L - M} and EX = E x over the whole plane, M the plane's largest logit: one exp per
    cell instead of one per (window, cell), from :func:`minignn._fastmath.exp` in a branch-free
    loop that LLVM runs in SIMD lanes. False (E unused) when M is not finite or a logit is NaN:
    the per-window path then takes the plane."""
    H, W = x.shape[2], x.shape[3]
    M = -np.inf
    nan = False
    for h in range(H):
        for w in range(W):
            v = np.float64(lg[n, c, h, w])
            nan = nan | (v != v)
            M = v if v > M else M
    if nan or not (M < np.inf and M > -np.inf):
        return False
    for h in range(H):
        for w in range(W):
            ev = exp(np.float64(lg[n, c, h, w]) - M)
            E[h, w] = ev
            EX[h, w] = ev * np.float64(x[n, c, h, w]) if ev != 0.0 else 0.0   # weight 0: nothing
    return True


@njit(inline="always")
def _taps_3s2p1(a, b):
    """Sums along a row of 3-wide, stride-2, padding-1 windows: b[o] = a[2o - 1] + a[2o] + a[2o + 1]
    over the cells that exist (len(a) cells, len(b) windows)."""
    n = a.shape[0]
    no = b.shape[0]
    b[0] = a[0] + (a[1] if n > 1 else 0.0)
    for o in range(1, no - 1):
        b[o] = (a[2 * o - 1] + a[2 * o]) + a[2 * o + 1]
    if no > 1:
        o = no - 1
        b[o] = (a[2 * o - 1] + a[2 * o]) + (a[2 * o + 1] if 2 * o + 1 < n else 0.0)


@njit(inline="always")
def _spread_3s2p1(b, a):
    """The transpose of :func:`_taps_3s2p1`: a[w] = the sum of b[o] over the windows o holding
    cell w (w = 2o: window o alone; w = 2o + 1: o and o + 1, where that exists)."""
    n = a.shape[0]
    no = b.shape[0]
    for o in range(no - 1):
        a[2 * o] = b[o]
        a[2 * o + 1] = b[o] + b[o + 1]
    o = no - 1
    a[2 * o] = b[o]
    if 2 * o + 1 < n:
        a[2 * o + 1] = b[o]


@njit(inline="always")
def _rows_3s2p1(R, h, H):
    """The rows of R that window row h // 2's window takes besides row h (even h): h - 1 and h + 1
    where they exist (returned with a flag each: False where the row is padding)."""
    lo = h - 1 if h > 0 else h
    hi = h + 1 if h + 1 < H else h
    return lo, lo != h, hi, hi != h


@njit(inline="always")
def _sums_3x3s2p1(E, EX, RS, RT, S, T):
    """Every window's S = sum_R E and T = sum_R E x, separably: the 3-wide row sums RS, RT (H, Wo)
    first, then three of their rows per window row. Returns whether every S > 0 (False: some
    window's E all underflowed, and the plane takes the per-window path)."""
    H = E.shape[0]
    Ho, Wo = S.shape
    for h in range(H):
        _taps_3s2p1(E[h], RS[h])
        _taps_3s2p1(EX[h], RT[h])
    ok = True
    for oh in range(Ho):
        h = 2 * oh
        lo, wl, hi, wh = _rows_3s2p1(RS, h, H)
        for ow in range(Wo):
            s = (RS[h, ow] + (RS[lo, ow] if wl else 0.0)) + (RS[hi, ow] if wh else 0.0)
            S[oh, ow] = s
            T[oh, ow] = (RT[h, ow] + (RT[lo, ow] if wl else 0.0)) + (RT[hi, ow] if wh else 0.0)
            ok = ok & (s > 0.0)
    return ok


@njit(inline="always")
def _fast_scratch(H, W, Ho, Wo):
    """The separable path's per-plane scratch: E, EX (H, W); RS, RT (H, Wo); S, T (Ho, Wo)."""
    return (np.empty((H, W)), np.empty((H, W)), np.empty((H, Wo)), np.empty((H, Wo)),
            np.empty((Ho, Wo)), np.empty((Ho, Wo)))


@njit(inline="always")
def _fwd_plane_3x3s2p1(x, lg, n, c, y, e):
    H, W = x.shape[2], x.shape[3]
    Ho, Wo = y.shape[2], y.shape[3]
    E, EX, RS, RT, S, T = _fast_scratch(H, W, Ho, Wo)
    if not (_plane_exp(x, lg, n, c, E, EX) and _sums_3x3s2p1(E, EX, RS, RT, S, T)):
        _fwd_plane(x, lg, n, c, 3, 3, 2, 2, 1, 1, y, e)
        return
    for oh in range(Ho):
        for ow in range(Wo):
            y[n, c, oh, ow] = T[oh, ow] / S[oh, ow]


@pjit
def lip_pool2d_fwd_cpu(x, lg, kh, kw, sh, sw, ph, pw, y):
    """y[n, c, oh, ow] = sum_R x e^{L - m} / sum_R e^{L - m} over the window's real cells R
    (float64 arithmetic)."""
    n_ch = x.shape[1]
    fast = is_3x3s2p1(kh, kw, sh, sw, ph, pw)
    for plane in prange(x.shape[0] * n_ch):
        n = plane // n_ch
        c = plane - n * n_ch
        e = np.empty(kh * kw)
        if fast:
            _fwd_plane_3x3s2p1(x, lg, n, c, y, e)
        else:
            _fwd_plane(x, lg, n, c, kh, kw, sh, sw, ph, pw, y, e)


# ------------------------------------------------------------------------------------- backward
@njit(inline="always")
def _bwd_plane(x, lg, gy, n, c, kh, kw, sh, sw, ph, pw, gx, gl, e):
    H, W = x.shape[2], x.shape[3]
    _zero_planes(gx, gl, n, c)
    for oh in range(gy.shape[2]):
        h0 = oh * sh - ph
        i0, i1 = real_offsets(h0, kh, H)
        for ow in range(gy.shape[3]):
            w0 = ow * sw - pw
            j0, j1 = real_offsets(w0, kw, W)
            s, t = _window(x, lg, n, c, h0, w0, i0, i1, j0, j1, kw, e)
            _scatter(x, n, c, h0, w0, i0, i1, j0, j1, kw, e, s, t, np.float64(gy[n, c, oh, ow]), gx, gl)


@njit(inline="always")
def _bwd_plane_3x3s2p1(x, lg, gy, n, c, gx, gl, e):
    """The separable backward. Per window A = gy / S and B = A y; per cell, SA and SB, the sums of
    A and B over the windows holding it (spread down the columns into RS and RT, then along each
    row into a row scratch); then gx_q = E_q SA_q and glogit_q = E_q (x_q SA_q - SB_q), 0 where
    E_q = 0. Every cell is in a window, so gx and glogit are written whole."""
    H, W = x.shape[2], x.shape[3]
    Ho, Wo = gy.shape[2], gy.shape[3]
    E, EX, RS, RT, S, T = _fast_scratch(H, W, Ho, Wo)
    if not (_plane_exp(x, lg, n, c, E, EX) and _sums_3x3s2p1(E, EX, RS, RT, S, T)):
        _bwd_plane(x, lg, gy, n, c, 3, 3, 2, 2, 1, 1, gx, gl, e)
        return
    for oh in range(Ho):                      # S, T become A, B
        for ow in range(Wo):
            a = np.float64(gy[n, c, oh, ow]) / S[oh, ow]
            T[oh, ow] = a * (T[oh, ow] / S[oh, ow])
            S[oh, ow] = a
    for h in range(H):                        # down the columns: row h is in window rows h // 2
        oh = h // 2                           # and, for odd h, h // 2 + 1 where it exists
        nxt = oh + 1 if (h & 1) and oh + 1 < Ho else oh
        two = nxt != oh
        for ow in range(Wo):
            RS[h, ow] = S[oh, ow] + (S[nxt, ow] if two else 0.0)
            RT[h, ow] = T[oh, ow] + (T[nxt, ow] if two else 0.0)
    sa = np.empty(W)                          # one row of SA and SB at a time
    sb = np.empty(W)
    for h in range(H):
        _spread_3s2p1(RS[h], sa)
        _spread_3s2p1(RT[h], sb)
        for w in range(W):
            ev = E[h, w]
            xv = np.float64(x[n, c, h, w])
            gx[n, c, h, w] = ev * sa[w]
            gl[n, c, h, w] = ev * (xv * sa[w] - sb[w]) if ev != 0.0 else 0.0


@pjit
def lip_pool2d_bwd_cpu(x, lg, gy, kh, kw, sh, sw, ph, pw, gx, gl):
    """gx = sum over windows of gy w_q, glogit = sum over windows of gy w_q (x_q - y); both
    written whole (zeros included)."""
    n_ch = x.shape[1]
    fast = is_3x3s2p1(kh, kw, sh, sw, ph, pw)
    for plane in prange(x.shape[0] * n_ch):
        n = plane // n_ch
        c = plane - n * n_ch
        e = np.empty(kh * kw)
        if fast:
            _bwd_plane_3x3s2p1(x, lg, gy, n, c, gx, gl, e)
        else:
            _bwd_plane(x, lg, gy, n, c, kh, kw, sh, sw, ph, pw, gx, gl, e)
