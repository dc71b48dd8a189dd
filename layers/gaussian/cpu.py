"""Numba kernels of Gaussian-based pooling (NCHW, C-contiguous arrays).

Both kernels run in parallel over the ``N*C`` image planes (``prange``): an iteration reads and
writes only its own plane of each array, so the backward's accumulation into ``gx`` (overlapping
windows) is race-free. A window's real cells are found by clipping it to the input
(:func:`~minignn.layers._window.real_offsets`): padding is never materialised and never counted
in K. ``eta`` is (N, C, Ho, Wo), one value per window (the layer broadcasts its own forms).

Per window, in float64 whatever x's dtype (every value is read as ``np.float64``, so that the
plain-Python run of ``NUMBA_DISABLE_JIT=1`` computes in float64 too)::

    mu    = 1/K sum_R x_q                    first pass
    v     = 1/K sum_R (x_q - mu)^2           second pass (no cancellation: v >= 0 always)
    sigma = max(sqrt(v), SIGMA_MIN)          = sqrt(max(v, EPS)) exactly (sqrt is monotone and
                                               correctly rounded); a NaN v stays NaN
    y     = mu + eta sigma

The forward writes mu and sigma (float64, (N, C, Ho, Wo)) for the backward, which does not
recompute them::

    gx_q += gy (1/K + slope (x_q - mu)),  slope = eta / (K sigma), 0 where sigma <= SIGMA_MIN
    geta  = gy sigma

(the test ``sigma <= SIGMA_MIN`` is ``v <= EPS`` but for v within an ulp above EPS, where
sqrt(v) rounds down to SIGMA_MIN: the kink itself). A window holding a NaN or an infinity has
mu or v NaN, so y, its geta and the gradient of its cells are NaN (the slope test is false for
a NaN sigma). No ``fastmath``.

Two plane bodies per kernel: the general one (any kernel, stride and padding) and the 2x2 /
stride 2 / no padding one (four fixed cells, K = 4). The general backward zeroes its ``gx``
plane just before scattering into it; the 2x2 backward writes every ``gx`` cell exactly once,
row by row (an odd last row or column, in no window, gets 0).
"""
from __future__ import annotations

import math

import numpy as np

from minignn._numba import njit, pjit, prange
from minignn.layers._window import is_2x2, real_offsets
from minignn.layers.pooling.cpu import _zero_plane, zero_trailing

from .reference import EPS

#: sqrt(EPS): the sigma of a flat window.
SIGMA_MIN = math.sqrt(EPS)


@njit(inline='always')
def _floor_sigma(v):
    """max(sqrt(v), SIGMA_MIN), NaN for a NaN v."""
    s = math.sqrt(v)
    return SIGMA_MIN if s < SIGMA_MIN else s


@njit(inline='always')
def _slope(e, s, cnt):
    """eta / (K sigma), or 0 for a flat window (sigma at its floor); NaN for a NaN sigma."""
    return 0.0 if s <= SIGMA_MIN else e / (cnt * s)


# -------------------------------------------------------------------------------------- forward
@njit(inline='always')
def _fwd_plane(x, eta, n, c, kh, kw, sh, sw, ph, pw, y, mu, sigma):
    h_in, w_in = x.shape[2], x.shape[3]
    for oh in range(y.shape[2]):
        h0 = oh * sh - ph
        i0, i1 = real_offsets(h0, kh, h_in)
        for ow in range(y.shape[3]):
            w0 = ow * sw - pw
            j0, j1 = real_offsets(w0, kw, w_in)
            cnt = (i1 - i0) * (j1 - j0)
            s = 0.0
            for di in range(i0, i1):
                for dj in range(j0, j1):
                    s += np.float64(x[n, c, h0 + di, w0 + dj])
            m = s / cnt
            q = 0.0
            for di in range(i0, i1):
                for dj in range(j0, j1):
                    d = np.float64(x[n, c, h0 + di, w0 + dj]) - m
                    q += d * d
            sg = _floor_sigma(q / cnt)
            mu[n, c, oh, ow] = m
            sigma[n, c, oh, ow] = sg
            y[n, c, oh, ow] = m + np.float64(eta[n, c, oh, ow]) * sg


@njit(inline='always')
def _fwd_plane_2x2(x, eta, n, c, y, mu, sigma):
    for oh in range(y.shape[2]):
        h0 = 2 * oh
        for ow in range(y.shape[3]):
            w0 = 2 * ow
            a = np.float64(x[n, c, h0, w0])
            b = np.float64(x[n, c, h0, w0 + 1])
            d = np.float64(x[n, c, h0 + 1, w0])
            e = np.float64(x[n, c, h0 + 1, w0 + 1])
            m = ((a + b) + (d + e)) * 0.25
            da, db, dd, de = a - m, b - m, d - m, e - m
            sg = _floor_sigma(((da * da + db * db) + (dd * dd + de * de)) * 0.25)
            mu[n, c, oh, ow] = m
            sigma[n, c, oh, ow] = sg
            y[n, c, oh, ow] = m + np.float64(eta[n, c, oh, ow]) * sg


@pjit
def gausspool2d_fwd_cpu(x, eta, kh, kw, sh, sw, ph, pw, y, mu, sigma):
    """y = mu + eta sigma per window over its real cells; mu and sigma (float64) written too."""
    n_ch = x.shape[1]
    fast = is_2x2(kh, kw, sh, sw, ph, pw)
    for plane in prange(x.shape[0] * n_ch):
        n = plane // n_ch
        c = plane - n * n_ch
        if fast:
            _fwd_plane_2x2(x, eta, n, c, y, mu, sigma)
        else:
            _fwd_plane(x, eta, n, c, kh, kw, sh, sw, ph, pw, y, mu, sigma)


# ------------------------------------------------------------------------------------- backward
@njit(inline='always')
def _bwd_plane(x, eta, gy, mu, sigma, n, c, kh, kw, sh, sw, ph, pw, gx, geta):
    h_in, w_in = x.shape[2], x.shape[3]
    _zero_plane(gx, n, c)
    for oh in range(gy.shape[2]):
        h0 = oh * sh - ph
        i0, i1 = real_offsets(h0, kh, h_in)
        for ow in range(gy.shape[3]):
            w0 = ow * sw - pw
            j0, j1 = real_offsets(w0, kw, w_in)
            cnt = (i1 - i0) * (j1 - j0)
            g = np.float64(gy[n, c, oh, ow])
            m = mu[n, c, oh, ow]
            sg = sigma[n, c, oh, ow]
            base = g / cnt
            gs = g * _slope(np.float64(eta[n, c, oh, ow]), sg, cnt)
            for di in range(i0, i1):
                for dj in range(j0, j1):
                    gx[n, c, h0 + di, w0 + dj] += base + gs * (np.float64(x[n, c, h0 + di, w0 + dj]) - m)
            geta[n, c, oh, ow] = g * sg


@njit(inline='always')
def _bwd_plane_2x2(x, eta, gy, mu, sigma, n, c, gx, geta):
    """Row by row (each gx row is written left to right, which Numba vectorises; the window's
    coefficients are formed again for its second row, cheaper than the interleaved two-row
    writes)."""
    for oh in range(gy.shape[2]):
        for ow in range(gy.shape[3]):
            geta[n, c, oh, ow] = np.float64(gy[n, c, oh, ow]) * sigma[n, c, oh, ow]
        for h in range(2 * oh, 2 * oh + 2):
            for ow in range(gy.shape[3]):
                g = np.float64(gy[n, c, oh, ow])
                m = mu[n, c, oh, ow]
                base = g * 0.25
                gs = g * _slope(np.float64(eta[n, c, oh, ow]), sigma[n, c, oh, ow], 4)
                gx[n, c, h, 2 * ow] = base + gs * (np.float64(x[n, c, h, 2 * ow]) - m)
                gx[n, c, h, 2 * ow + 1] = base + gs * (np.float64(x[n, c, h, 2 * ow + 1]) - m)
    zero_trailing(gx, n, c, 2 * gy.shape[2], 2 * gy.shape[3])


@pjit
def gausspool2d_bwd_cpu(x, eta, gy, mu, sigma, kh, kw, sh, sw, ph, pw, gx, geta):
    """gx = sum over windows of gy dy/dx_q (written whole, zeros included); geta = gy sigma."""
    n_ch = x.shape[1]
    fast = is_2x2(kh, kw, sh, sw, ph, pw)
    for plane in prange(x.shape[0] * n_ch):
        n = plane // n_ch
        c = plane - n * n_ch
        if fast:
            _bwd_plane_2x2(x, eta, gy, mu, sigma, n, c, gx, geta)
        else:
            _bwd_plane(x, eta, gy, mu, sigma, n, c, kh, kw, sh, sw, ph, pw, gx, geta)
