"""Numba kernels of max and average pooling (NCHW, C-contiguous arrays).

Every kernel runs in parallel over the ``N*C`` image planes (``prange``): an iteration reads and
writes only its own plane of each array, so the backward's accumulation into ``gx`` (overlapping
windows) is race-free. A window's real cells are found by clipping it to the input, so padding is
never materialised: for max pooling a padded cell never wins (padding with -inf), for average
pooling it is left out of the count (PyTorch's ``count_include_pad=False``).

Window geometry, shared by all four kernels and by every other pooling (the window template of
:mod:`minignn.layers._window`): output cell ``(oh, ow)`` covers input rows ``oh*sh - ph + di``
for ``di in [0, kh)`` and columns ``ow*sw - pw + dj`` for ``dj in [0, kw)``; ``real_offsets``
clips a window to its real cells, ``valid_range`` gives the outputs whose offset is real.

The max-pool forward stores the argmax as the offset ``di*kw + dj`` inside the window (int8 when
``kh*kw <= 127``), so the backward reads one byte per output instead of recomputing from ``x``.

Each kernel has one plane loop and two plane bodies: the general one (any kernel, stride and
padding) and one for the common 2x2, stride 2, no-padding case, whose fixed offsets let the
compiler keep everything in registers. The general backward zeroes its ``gx`` plane just before
scattering into it, while the plane is in cache; the 2x2 backward writes every ``gx`` cell exactly
once (zeros included). Either way ``gx`` is streamed to memory once, with no separate memset pass.

The plane bodies index the 4-D arrays directly (``x[n, c, h, w]``): taking a 2-D view per plane
(``x[n, c]``) is slower (timings: ``benchmarks/results/kernel-history.md``).
"""
from __future__ import annotations

import numpy as np

from minignn._numba import njit, pjit, prange
from minignn.layers._window import is_2x2, real_offsets, valid_range


# ------------------------------------------------------------------------------------------ max
@njit(inline='always')
def _takes_over(v, best):
    """Whether v replaces the running max ``best``: larger, or the first NaN (the rule of every
    max-like kernel: the first maximum stays, the first NaN wins and propagates)."""
    return (v > best) | ((v != v) & (best == best))


@njit(inline='always')
def gather_row_2x2(x, gy, n, c, oh, sc):
    """De-interleave output row ``oh`` of plane (n, c) for a 2x2 / stride-2 backward: its windows'
    four cells into scratch rows 0..3 (top-left, top-right, bottom-left, bottom-right) and gy into
    row 4, as float64, so that the row's windows can then be computed at unit stride (the loop
    LLVM vectorises; lppool and dpp use it)."""
    h0 = 2 * oh
    for ow in range(gy.shape[3]):
        sc[0, ow] = x[n, c, h0, 2 * ow]
        sc[1, ow] = x[n, c, h0, 2 * ow + 1]
        sc[2, ow] = x[n, c, h0 + 1, 2 * ow]
        sc[3, ow] = x[n, c, h0 + 1, 2 * ow + 1]
        sc[4, ow] = gy[n, c, oh, ow]


@njit(inline='always')
def scatter_row_2x2(gx, n, c, oh, wo, sc):
    """The way back of :func:`gather_row_2x2`: scratch rows 5..8 (the four cells' gradients, in
    the same order) written to the ``wo`` windows of output row ``oh`` in gx's plane (n, c)."""
    h0 = 2 * oh
    for ow in range(wo):
        gx[n, c, h0, 2 * ow] = sc[5, ow]
        gx[n, c, h0, 2 * ow + 1] = sc[6, ow]
        gx[n, c, h0 + 1, 2 * ow] = sc[7, ow]
        gx[n, c, h0 + 1, 2 * ow + 1] = sc[8, ow]


@njit(inline='always')
def window_max(x, n, c, h0, w0, i0, i1, j0, j1, kw):
    """``(max, offset)`` over the real cells ``[i0, i1) x [j0, j1)`` of the window at (h0, w0) of
    plane (n, c), read as float64, by :func:`_takes_over` (the first maximum stays, the first NaN
    wins); offset ``di * kw + dj`` as max pooling's argmax. The general-window paths of the
    max-like kernels (stochastic, lppool) share it."""
    m = np.float64(x[n, c, h0 + i0, w0 + j0])
    k = i0 * kw + j0
    for di in range(i0, i1):
        for dj in range(j0, j1):
            v = np.float64(x[n, c, h0 + di, w0 + dj])
            if _takes_over(v, m):
                m = v
                k = di * kw + dj
    return m, k


@njit(inline='always')
def max4(v0, v1, v2, v3):
    """``(max, index)`` of four values in order, by :func:`_takes_over` (the first maximum stays,
    the first NaN wins): a 2x2 window's max and its offset, for every 2x2 fast path."""
    best = v0
    bi = 0
    if _takes_over(v1, best):
        best = v1
        bi = 1
    if _takes_over(v2, best):
        best = v2
        bi = 2
    if _takes_over(v3, best):
        best = v3
        bi = 3
    return best, bi


@njit(inline='always')
def _max_plane(x, n, c, kh, kw, sh, sw, ph, pw, y, arg):
    """Any geometry, offset by offset: for each window offset (di, dj), in row-major order, one
    pass over the outputs whose cell at that offset is real (a block of rows and columns, found
    by :func:`valid_range`), updating the running max and argmax with selects instead of
    branches: on real data the comparison is unpredictable, and a branch-free pass over a row of
    outputs is a loop the compiler can vectorise, which a window-by-window loop with a branch per
    cell is not (timings: ``benchmarks/results/kernel-history.md``).
    ``arg < 0`` marks "no real cell seen yet": the first real cell always enters, later ones
    when larger (the first maximum stays) or NaN while no NaN has entered yet (the first NaN
    wins and propagates, as for every max-like kernel of the project)."""
    h_in, w_in = x.shape[2], x.shape[3]
    h_out, w_out = y.shape[2], y.shape[3]
    for oh in range(h_out):
        for ow in range(w_out):
            y[n, c, oh, ow] = 0
            arg[n, c, oh, ow] = -1
    for di in range(kh):
        oh0, oh1 = valid_range(di, sh, ph, h_in, h_out)
        for dj in range(kw):
            q = di * kw + dj
            lo, hi = valid_range(dj, sw, pw, w_in, w_out)
            for oh in range(oh0, oh1):
                r = oh * sh - ph + di
                for ow in range(lo, hi):
                    v = x[n, c, r, ow * sw + dj - pw]
                    b = y[n, c, oh, ow]
                    a = arg[n, c, oh, ow]
                    take = _takes_over(v, b) | (a < 0)
                    y[n, c, oh, ow] = v if take else b
                    arg[n, c, oh, ow] = q if take else a


@njit(inline='always')
def _max_plane_2x2(x, n, c, y, arg):
    for oh in range(y.shape[2]):
        h0 = 2 * oh
        for ow in range(y.shape[3]):
            w0 = 2 * ow
            best, bi = max4(x[n, c, h0, w0], x[n, c, h0, w0 + 1], x[n, c, h0 + 1, w0], x[n, c, h0 + 1, w0 + 1])
            y[n, c, oh, ow] = best
            arg[n, c, oh, ow] = bi


@pjit
def maxpool2d_fwd_cpu(x, kh, kw, sh, sw, ph, pw, y, arg):
    """y[n, c, oh, ow] = max of the window's real cells; arg = offset ``di*kw + dj`` of the first
    maximum in row-major window order (a NaN wins and propagates: the first NaN of the window)."""
    n_ch = x.shape[1]
    fast = is_2x2(kh, kw, sh, sw, ph, pw)
    for plane in prange(x.shape[0] * n_ch):
        n = plane // n_ch
        c = plane - n * n_ch
        if fast:
            _max_plane_2x2(x, n, c, y, arg)
        else:
            _max_plane(x, n, c, kh, kw, sh, sw, ph, pw, y, arg)


@njit(inline='always')
def _zero_plane(gx, n, c):
    for h in range(gx.shape[2]):
        for w in range(gx.shape[3]):
            gx[n, c, h, w] = 0


@njit(inline='always')
def zero_trailing(gx, n, c, hk, wk):
    """gx = 0 at the rows >= hk and the columns >= wk of plane (n, c): the cells in no window of a
    backward that writes the windows' cells itself (an odd last row or column of a 2x2 / stride 2
    pooling, hk = 2 Ho and wk = 2 Wo)."""
    for h in range(hk):
        for w in range(wk, gx.shape[3]):
            gx[n, c, h, w] = 0
    for h in range(hk, gx.shape[2]):
        for w in range(gx.shape[3]):
            gx[n, c, h, w] = 0


@njit(inline='always')
def _max_bwd_plane(gy, arg, n, c, kw, sh, sw, ph, pw, gx):
    _zero_plane(gx, n, c)
    for oh in range(gy.shape[2]):
        h0 = oh * sh - ph
        for ow in range(gy.shape[3]):
            a = arg[n, c, oh, ow]
            di = a // kw
            gx[n, c, h0 + di, ow * sw - pw + (a - di * kw)] += gy[n, c, oh, ow]


@njit(inline='always')
def _max_bwd_plane_2x2(gy, arg, n, c, gx):
    for oh in range(gy.shape[2]):
        for di in range(2):
            h = 2 * oh + di
            for ow in range(gy.shape[3]):
                a = arg[n, c, oh, ow] - 2 * di
                g = gy[n, c, oh, ow]
                gx[n, c, h, 2 * ow] = g if a == 0 else 0
                gx[n, c, h, 2 * ow + 1] = g if a == 1 else 0
            for w in range(2 * gy.shape[3], gx.shape[3]):  # odd W: last column is in no window
                gx[n, c, h, w] = 0
    for h in range(2 * gy.shape[2], gx.shape[2]):  # odd H: last row is in no window
        for w in range(gx.shape[3]):
            gx[n, c, h, w] = 0


@pjit
def maxpool2d_bwd_cpu(gy, arg, kh, kw, sh, sw, ph, pw, gx):
    """gx = 0, then gx[argmax cell of window (oh, ow)] += gy[oh, ow] for every window."""
    n_ch = gx.shape[1]
    fast = is_2x2(kh, kw, sh, sw, ph, pw)
    for plane in prange(gx.shape[0] * n_ch):
        n = plane // n_ch
        c = plane - n * n_ch
        if fast:
            _max_bwd_plane_2x2(gy, arg, n, c, gx)
        else:
            _max_bwd_plane(gy, arg, n, c, kw, sh, sw, ph, pw, gx)


# -------------------------------------------------------------------------------------- average
@njit(inline='always')
def _avg_plane(x, n, c, kh, kw, sh, sw, ph, pw, y):
    h_in, w_in = x.shape[2], x.shape[3]
    for oh in range(y.shape[2]):
        h0 = oh * sh - ph
        i0, i1 = real_offsets(h0, kh, h_in)
        for ow in range(y.shape[3]):
            w0 = ow * sw - pw
            j0, j1 = real_offsets(w0, kw, w_in)
            s = 0.0  # float64 accumulator
            for di in range(i0, i1):
                for dj in range(j0, j1):
                    s += x[n, c, h0 + di, w0 + dj]
            y[n, c, oh, ow] = s / ((i1 - i0) * (j1 - j0))


@njit(inline='always')
def _avg_plane_2x2(x, n, c, y):
    for oh in range(y.shape[2]):
        h0 = 2 * oh
        for ow in range(y.shape[3]):
            w0 = 2 * ow
            s = 0.0
            s += x[n, c, h0, w0]
            s += x[n, c, h0, w0 + 1]
            s += x[n, c, h0 + 1, w0]
            s += x[n, c, h0 + 1, w0 + 1]
            y[n, c, oh, ow] = s * 0.25


@pjit
def avgpool2d_fwd_cpu(x, kh, kw, sh, sw, ph, pw, y):
    """y[n, c, oh, ow] = mean of the window's real cells (padded cells excluded from the count).
    Sums accumulate in float64."""
    n_ch = x.shape[1]
    fast = is_2x2(kh, kw, sh, sw, ph, pw)
    for plane in prange(x.shape[0] * n_ch):
        n = plane // n_ch
        c = plane - n * n_ch
        if fast:
            _avg_plane_2x2(x, n, c, y)
        else:
            _avg_plane(x, n, c, kh, kw, sh, sw, ph, pw, y)


@njit(inline='always')
def _avg_bwd_plane(gy, n, c, kh, kw, sh, sw, ph, pw, gx):
    h_in, w_in = gx.shape[2], gx.shape[3]
    _zero_plane(gx, n, c)
    for oh in range(gy.shape[2]):
        h0 = oh * sh - ph
        i0, i1 = real_offsets(h0, kh, h_in)
        for ow in range(gy.shape[3]):
            w0 = ow * sw - pw
            j0, j1 = real_offsets(w0, kw, w_in)
            g = gy[n, c, oh, ow] / ((i1 - i0) * (j1 - j0))
            for di in range(i0, i1):
                for dj in range(j0, j1):
                    gx[n, c, h0 + di, w0 + dj] += g


@njit(inline='always')
def _avg_bwd_plane_2x2(gy, n, c, gx):
    for oh in range(gy.shape[2]):
        for di in range(2):
            h = 2 * oh + di
            for ow in range(gy.shape[3]):
                g = gy[n, c, oh, ow] * 0.25
                gx[n, c, h, 2 * ow] = g
                gx[n, c, h, 2 * ow + 1] = g
            for w in range(2 * gy.shape[3], gx.shape[3]):
                gx[n, c, h, w] = 0
    for h in range(2 * gy.shape[2], gx.shape[2]):
        for w in range(gx.shape[3]):
            gx[n, c, h, w] = 0


@pjit
def avgpool2d_bwd_cpu(gy, kh, kw, sh, sw, ph, pw, gx):
    """gx = 0, then every real cell of window (oh, ow) gets gy[oh, ow] / (its number of real cells)."""
    n_ch = gx.shape[1]
    fast = is_2x2(kh, kw, sh, sw, ph, pw)
    for plane in prange(gx.shape[0] * n_ch):
        n = plane // n_ch
        c = plane - n * n_ch
        if fast:
            _avg_bwd_plane_2x2(gy, n, c, gx)
        else:
            _avg_bwd_plane(gy, n, c, kh, kw, sh, sw, ph, pw, gx)
