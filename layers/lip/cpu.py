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
scratch arrays and sums them over each window. A plane with a NaN or infinite logit, and a
window whose E all underflow to 0 (logits more than ~700 apart in one plane), take the
per-window path above. The backward zeroes its two planes just before
scattering into them, while they are in cache.
"""
from __future__ import annotations

import math

import numpy as np

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
    cell instead of one per (window, cell). False (E unused) when M is not finite or a logit is
    NaN: the per-window path then takes the plane. A window whose E all underflow (a logit range
    of more than ~700 in the plane) has S = 0, and takes the per-window path too."""
    H, W = x.shape[2], x.shape[3]
    M = -np.inf
    for h in range(H):
        for w in range(W):
            v = np.float64(lg[n, c, h, w])
            if v != v:
                return False
            if v > M:
                M = v
    if not (M < np.inf and M > -np.inf):
        return False
    for h in range(H):
        for w in range(W):
            ev = math.exp(np.float64(lg[n, c, h, w]) - M)
            E[h, w] = ev
            EX[h, w] = ev * np.float64(x[n, c, h, w]) if ev != 0.0 else 0.0
    return True


@njit(inline="always")
def _sums(E, EX, h0, w0, i0, i1, j0, j1):
    s = 0.0
    t = 0.0
    for di in range(i0, i1):
        for dj in range(j0, j1):
            s += E[h0 + di, w0 + dj]
            t += EX[h0 + di, w0 + dj]
    return s, t


@njit(inline="always")
def _fwd_plane_3x3s2p1(x, lg, n, c, y, e, E, EX):
    if not _plane_exp(x, lg, n, c, E, EX):
        _fwd_plane(x, lg, n, c, 3, 3, 2, 2, 1, 1, y, e)
        return
    H, W = x.shape[2], x.shape[3]
    for oh in range(y.shape[2]):
        h0 = 2 * oh - 1
        i0, i1 = real_offsets(h0, 3, H)
        full_rows = i0 == 0 and i1 == 3
        for ow in range(y.shape[3]):
            w0 = 2 * ow - 1
            if full_rows and w0 >= 0 and w0 + 3 <= W:
                j0, j1 = 0, 3
                s, t = _sums(E, EX, h0, w0, 0, 3, 0, 3)
            else:
                j0, j1 = real_offsets(w0, 3, W)
                s, t = _sums(E, EX, h0, w0, i0, i1, j0, j1)
            if not s > 0.0:                       # every e underflowed: this window's own max
                s, t = _window(x, lg, n, c, h0, w0, i0, i1, j0, j1, 3, e)
            y[n, c, oh, ow] = t / s


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
            _fwd_plane_3x3s2p1(x, lg, n, c, y, e, np.empty(x.shape[2:]), np.empty(x.shape[2:]))
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
def _bwd_plane_3x3s2p1(x, lg, gy, n, c, gx, gl, e, E, EX):
    if not _plane_exp(x, lg, n, c, E, EX):
        _bwd_plane(x, lg, gy, n, c, 3, 3, 2, 2, 1, 1, gx, gl, e)
        return
    H, W = x.shape[2], x.shape[3]
    _zero_planes(gx, gl, n, c)
    for oh in range(gy.shape[2]):
        h0 = 2 * oh - 1
        i0, i1 = real_offsets(h0, 3, H)
        full_rows = i0 == 0 and i1 == 3
        for ow in range(gy.shape[3]):
            w0 = 2 * ow - 1
            g = np.float64(gy[n, c, oh, ow])
            if full_rows and w0 >= 0 and w0 + 3 <= W:
                j0, j1 = 0, 3
                s, t = _sums(E, EX, h0, w0, 0, 3, 0, 3)
            else:
                j0, j1 = real_offsets(w0, 3, W)
                s, t = _sums(E, EX, h0, w0, i0, i1, j0, j1)
            if not s > 0.0:                       # every e underflowed: this window's own max
                s, t = _window(x, lg, n, c, h0, w0, i0, i1, j0, j1, 3, e)
                _scatter(x, n, c, h0, w0, i0, i1, j0, j1, 3, e, s, t, g, gx, gl)
                continue
            yv = t / s
            gs = g / s
            for di in range(i0, i1):
                for dj in range(j0, j1):
                    h = h0 + di
                    w = w0 + dj
                    gw = gs * E[h, w]
                    if gw != 0.0:
                        gx[n, c, h, w] += gw
                        gl[n, c, h, w] += gw * (np.float64(x[n, c, h, w]) - yv)


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
            _bwd_plane_3x3s2p1(x, lg, gy, n, c, gx, gl, e, np.empty(x.shape[2:]), np.empty(x.shape[2:]))
        else:
            _bwd_plane(x, lg, gy, n, c, kh, kw, sh, sw, ph, pw, gx, gl, e)
