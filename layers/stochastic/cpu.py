"""Numba kernels of stochastic pooling (NCHW, C-contiguous arrays).

Every kernel runs in parallel over the ``N*C`` image planes (``prange``); an iteration reads and
writes only its own plane, so the eval backward's accumulation into ``gx`` (overlapping windows)
is race-free. A window's real cells are found by clipping it to the input
(:func:`~minignn.layers._window.real_offsets`); padding is never materialised nor counted.

Per window, in float64, with m = the window's first maximum (the first NaN wins, the rule of every
max-like kernel of minignn) and u_q = a_q / m in [0, 1] when 0 < m < inf (the "ordinary" case)::

    train  S = sum u_q, t = u S (u the window's uniform draw in [0, 1)); k = the first cell, in
           row-major window order, with u_q > 0 and u_1 + ... + u_q > t (the last cell with
           u_q > 0 if rounding leaves none); y = x_k and arg = k's offset di*kw + dj in the
           kh x kw window, the format of max pooling's argmax, whose backward kernels route gy.
           m = 0 (all zeros): k = the floor(u |R|)-th real cell (the limit of equal cells), y = 0.
           m = inf or NaN: k = the first maximum, y = m.
    eval   y = m Q / S with Q = sum u_q^2 (= sum a^2 / sum a); dy/dx_q = (2 u_q - Q/S) / S
           m = 0: y = 0, dy/dx_q = 1/|R|;  m = inf or NaN: y = m, NaN gradients.

The 2x2 / stride 2 / no padding case has its own plane bodies (four fixed cells, |R| = 4); the
eval backward of the general body zeroes its gx plane just before scattering into it, the 2x2
one writes each cell once (an odd last row or column, in no window, gets 0).

S3 pooling's training pair is here too: the 2x2 max over each output's kept rows and columns,
read in place (no gathered copy of x), and its adjoint.
"""
from __future__ import annotations

import math

import numpy as np

from minignn._numba import njit, pjit, prange
from minignn.layers._window import is_2x2, real_offsets
from minignn.layers.pooling.cpu import _zero_plane, max4, window_max

_INF = np.inf
_NAN = np.nan


@njit(inline='always')
def _ordinary(m):
    return (m > 0.0) & (m < _INF)


@njit(inline='always')
def _window_sums(x, n, c, h0, w0, i0, i1, j0, j1, m):
    """(S, Q) = (sum u_q, sum u_q^2), u_q = x_q / m."""
    s = 0.0
    q = 0.0
    for di in range(i0, i1):
        for dj in range(j0, j1):
            v = np.float64(x[n, c, h0 + di, w0 + dj]) / m
            s += v
            q += v * v
    return s, q


# -------------------------------------------------------------------------------- train forward
@njit(inline='always')
def _draw(x, n, c, h0, w0, i0, i1, j0, j1, kw, u):
    """The offset di*kw + dj of the drawn cell (see the module docstring)."""
    m, kmax = window_max(x, n, c, h0, w0, i0, i1, j0, j1, kw)
    if m == 0.0:
        cols = j1 - j0
        r = min(int(math.floor(u * ((i1 - i0) * cols))), (i1 - i0) * cols - 1)
        return (i0 + r // cols) * kw + j0 + r % cols
    if not _ordinary(m):
        return kmax
    s = 0.0
    for di in range(i0, i1):
        for dj in range(j0, j1):
            s += np.float64(x[n, c, h0 + di, w0 + dj]) / m
    t = u * s
    cum = 0.0
    last = kmax
    for di in range(i0, i1):
        for dj in range(j0, j1):
            v = np.float64(x[n, c, h0 + di, w0 + dj]) / m
            if v > 0.0:
                cum += v
                last = di * kw + dj
                if cum > t:
                    return last
    return last


@njit(inline='always')
def _train_plane(x, u, n, c, kh, kw, sh, sw, ph, pw, y, arg):
    h_in, w_in = x.shape[2], x.shape[3]
    for oh in range(y.shape[2]):
        h0 = oh * sh - ph
        i0, i1 = real_offsets(h0, kh, h_in)
        for ow in range(y.shape[3]):
            w0 = ow * sw - pw
            j0, j1 = real_offsets(w0, kw, w_in)
            k = _draw(x, n, c, h0, w0, i0, i1, j0, j1, kw, u[n, c, oh, ow])
            di = k // kw
            y[n, c, oh, ow] = x[n, c, h0 + di, w0 + k - di * kw]
            arg[n, c, oh, ow] = k


@njit(inline='always')
def _train_plane_2x2(x, u, n, c, y, arg):
    for oh in range(y.shape[2]):
        h0 = 2 * oh
        for ow in range(y.shape[3]):
            w0 = 2 * ow
            a = np.float64(x[n, c, h0, w0])
            b = np.float64(x[n, c, h0, w0 + 1])
            d = np.float64(x[n, c, h0 + 1, w0])
            e = np.float64(x[n, c, h0 + 1, w0 + 1])
            m, k = max4(a, b, d, e)
            uu = u[n, c, oh, ow]
            if m == 0.0:
                k = min(int(math.floor(uu * 4.0)), 3)
            elif _ordinary(m):
                a, b, d, e = a / m, b / m, d / m, e / m
                t = uu * (((a + b) + d) + e)
                k = 3 if e > 0.0 else (2 if d > 0.0 else (1 if b > 0.0 else 0))   # the last positive
                if a > 0.0 and a > t:
                    k = 0
                elif b > 0.0 and a + b > t:
                    k = 1
                elif d > 0.0 and (a + b) + d > t:
                    k = 2
            di = k >> 1
            y[n, c, oh, ow] = x[n, c, h0 + di, w0 + (k & 1)]
            arg[n, c, oh, ow] = k


@pjit
def stochastic_train_fwd_cpu(x, u, kh, kw, sh, sw, ph, pw, y, arg):
    """y[n, c, oh, ow] = the window cell drawn with probability a_q / sum a by u[n, c, oh, ow];
    arg = its offset di*kw + dj (max pooling's argmax format)."""
    n_ch = x.shape[1]
    fast = is_2x2(kh, kw, sh, sw, ph, pw)
    for plane in prange(x.shape[0] * n_ch):
        n = plane // n_ch
        c = plane - n * n_ch
        if fast:
            _train_plane_2x2(x, u, n, c, y, arg)
        else:
            _train_plane(x, u, n, c, kh, kw, sh, sw, ph, pw, y, arg)


# --------------------------------------------------------------------------------- eval forward
@njit(inline='always')
def _eval_plane(x, n, c, kh, kw, sh, sw, ph, pw, y):
    h_in, w_in = x.shape[2], x.shape[3]
    for oh in range(y.shape[2]):
        h0 = oh * sh - ph
        i0, i1 = real_offsets(h0, kh, h_in)
        for ow in range(y.shape[3]):
            w0 = ow * sw - pw
            j0, j1 = real_offsets(w0, kw, w_in)
            m = window_max(x, n, c, h0, w0, i0, i1, j0, j1, kw)[0]
            v = m
            if _ordinary(m):
                s, q = _window_sums(x, n, c, h0, w0, i0, i1, j0, j1, m)
                v = m * (q / s)
            y[n, c, oh, ow] = v


@njit(inline='always')
def _eval_plane_2x2(x, n, c, y):
    for oh in range(y.shape[2]):
        h0 = 2 * oh
        for ow in range(y.shape[3]):
            w0 = 2 * ow
            a = np.float64(x[n, c, h0, w0])
            b = np.float64(x[n, c, h0, w0 + 1])
            d = np.float64(x[n, c, h0 + 1, w0])
            e = np.float64(x[n, c, h0 + 1, w0 + 1])
            m = max4(a, b, d, e)[0]
            v = m
            if _ordinary(m):
                a, b, d, e = a / m, b / m, d / m, e / m
                v = m * (((a * a + b * b) + (d * d + e * e)) / ((a + b) + (d + e)))
            y[n, c, oh, ow] = v


@pjit
def stochastic_eval_fwd_cpu(x, kh, kw, sh, sw, ph, pw, y):
    """y[n, c, oh, ow] = sum a^2 / sum a over the window's real cells (0 for an all-zero window)."""
    n_ch = x.shape[1]
    fast = is_2x2(kh, kw, sh, sw, ph, pw)
    for plane in prange(x.shape[0] * n_ch):
        n = plane // n_ch
        c = plane - n * n_ch
        if fast:
            _eval_plane_2x2(x, n, c, y)
        else:
            _eval_plane(x, n, c, kh, kw, sh, sw, ph, pw, y)


# -------------------------------------------------------------------------------- eval backward
@njit(inline='always')
def _eval_bwd_plane(x, gy, n, c, kh, kw, sh, sw, ph, pw, gx):
    h_in, w_in = x.shape[2], x.shape[3]
    _zero_plane(gx, n, c)
    for oh in range(gy.shape[2]):
        h0 = oh * sh - ph
        i0, i1 = real_offsets(h0, kh, h_in)
        for ow in range(gy.shape[3]):
            w0 = ow * sw - pw
            j0, j1 = real_offsets(w0, kw, w_in)
            g = np.float64(gy[n, c, oh, ow])
            m = window_max(x, n, c, h0, w0, i0, i1, j0, j1, kw)[0]
            # gx_q += g (2 u_q - Q/S) / S = ca u_q + cb
            ca = _NAN
            cb = _NAN
            if _ordinary(m):
                s, q = _window_sums(x, n, c, h0, w0, i0, i1, j0, j1, m)
                ca = 2.0 * g / s
                cb = -g * (q / s) / s
            elif m == 0.0:
                ca = 0.0
                cb = g / ((i1 - i0) * (j1 - j0))
            for di in range(i0, i1):
                for dj in range(j0, j1):
                    v = np.float64(x[n, c, h0 + di, w0 + dj]) / m if ca != 0.0 else 0.0
                    gx[n, c, h0 + di, w0 + dj] += ca * v + cb


@njit(inline='always')
def _eval_bwd_plane_2x2(x, gy, n, c, gx):
    for oh in range(gy.shape[2]):
        h0 = 2 * oh
        for ow in range(gy.shape[3]):
            w0 = 2 * ow
            a = np.float64(x[n, c, h0, w0])
            b = np.float64(x[n, c, h0, w0 + 1])
            d = np.float64(x[n, c, h0 + 1, w0])
            e = np.float64(x[n, c, h0 + 1, w0 + 1])
            g = np.float64(gy[n, c, oh, ow])
            m = max4(a, b, d, e)[0]
            if _ordinary(m):
                a, b, d, e = a / m, b / m, d / m, e / m
                s = (a + b) + (d + e)
                ca = 2.0 * g / s
                cb = -g * (((a * a + b * b) + (d * d + e * e)) / s) / s
                ga, gb, gd, ge = ca * a + cb, ca * b + cb, ca * d + cb, ca * e + cb
            elif m == 0.0:
                ga = gb = gd = ge = 0.25 * g
            else:
                ga = gb = gd = ge = _NAN
            gx[n, c, h0, w0] = ga
            gx[n, c, h0, w0 + 1] = gb
            gx[n, c, h0 + 1, w0] = gd
            gx[n, c, h0 + 1, w0 + 1] = ge
        for w in range(2 * gy.shape[3], gx.shape[3]):        # an odd last column: in no window
            gx[n, c, h0, w] = 0
            gx[n, c, h0 + 1, w] = 0
    for h in range(2 * gy.shape[2], gx.shape[2]):            # an odd last row
        for w in range(gx.shape[3]):
            gx[n, c, h, w] = 0


@pjit
def stochastic_eval_bwd_cpu(x, gy, kh, kw, sh, sw, ph, pw, gx):
    """gx = sum over the windows holding each cell of gy (2 a_q - y) / sum a (gy / |R| for an
    all-zero window)."""
    n_ch = x.shape[1]
    fast = is_2x2(kh, kw, sh, sw, ph, pw)
    for plane in prange(x.shape[0] * n_ch):
        n = plane // n_ch
        c = plane - n * n_ch
        if fast:
            _eval_bwd_plane_2x2(x, gy, n, c, gx)
        else:
            _eval_bwd_plane(x, gy, n, c, kh, kw, sh, sw, ph, pw, gx)


# ------------------------------------------------------------------------------ S3, training
@pjit
def s3_train_fwd_cpu(x, rows, rows2, cols, cols2, y, arg):
    """S3's training forward on the kept cells only: y[n, c, i, j] = the first maximum (the first
    NaN wins) of x at rows (rows[i], rows2[i]) x columns (cols[j], cols2[j]) in row-major order,
    rows2 = min(rows + 1, H - 1) (likewise cols2), and arg its offset 0..3 (2 di + dj). A clipped
    second row or column repeats the first, so the first of the tie keeps it."""
    n_ch = x.shape[1]
    for plane in prange(x.shape[0] * n_ch):
        n = plane // n_ch
        c = plane - n * n_ch
        for i in range(y.shape[2]):
            r0 = rows[i]
            r1 = rows2[i]
            for j in range(y.shape[3]):
                c0 = cols[j]
                c1 = cols2[j]
                m, k = max4(x[n, c, r0, c0], x[n, c, r0, c1], x[n, c, r1, c0], x[n, c, r1, c1])
                y[n, c, i, j] = m
                arg[n, c, i, j] = k


@pjit
def s3_train_bwd_cpu(gy, arg, rows, rows2, cols, cols2, gx):
    """The adjoint of :func:`s3_train_fwd_cpu`: gx (zeroed plane by plane, while in cache) gets
    each gy at its output's argmax cell, summed where kept rows or columns share a cell."""
    n_ch = gx.shape[1]
    for plane in prange(gx.shape[0] * n_ch):
        n = plane // n_ch
        c = plane - n * n_ch
        _zero_plane(gx, n, c)
        for i in range(gy.shape[2]):
            for j in range(gy.shape[3]):
                k = arg[n, c, i, j]
                r = rows2[i] if k >= 2 else rows[i]
                q = cols2[j] if (k & 1) else cols[j]
                gx[n, c, r, q] += gy[n, c, i, j]
