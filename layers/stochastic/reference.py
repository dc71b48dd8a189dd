"""Stochastic pooling in plain NumPy: the readable truth the kernels are tested against.

Slow on purpose and used by the tests only: every window is an (N, C, Ho, Wo, K) float64 array
of the zero-padded input with a mask of its real cells (K = kh*kw offsets, row-major), and each
rule is written with whole-array NumPy operations, window by window in none of them::

    train  p_q = a_q / sum_R a,  k = the first real cell q with a_q > 0 and cumsum_q p > u
           (the last cell with a_q > 0 if rounding leaves none; a window of zeros: the cell
           floor(u |R|) of its real cells, where y = 0; a NaN or inf in the window: the first
           maximum, the first NaN winning), y = x_k, dy/dx = 1 at k
    eval   y = sum_R a^2 / sum_R a,   dy/dx_q = (2 a_q - y) / sum_R a
           (a window of zeros: y = 0, dy/dx_q = 1/|R|)

The cumulative sums are of ``a / max_R a`` (the kernels' normalisation: the choice of k does not
change, but the rounding of the thresholds is then the same as theirs).
"""
from __future__ import annotations

import numpy as np

from ..lppool.reference import _geometry, _windows


def _first_max(xw, valid):
    """Index of each window's first maximum over its real cells (the first NaN wins)."""
    filled = np.where(valid, xw, -np.inf)
    nan = np.isnan(filled)
    first_nan = np.argmax(nan, axis=-1)
    with np.errstate(invalid="ignore"):
        first_max = np.argmax(np.where(nan, -np.inf, filled), axis=-1)
    return np.where(nan.any(axis=-1), first_nan, first_max)


def stochastic_pool2d_forward_ref(x, u, kernel_size=2, stride=None, padding=0):
    """(y, k): y (N, C, Ho, Wo) in x's dtype and k, the chosen offset of each window in the
    kh x kw window (row-major, padding included in the numbering, as max pooling's argmax).
    ``u`` None is the eval rule (k is then None)."""
    xw, valid = _windows(np.asarray(x, dtype=np.float64), kernel_size, stride, padding)
    valid = np.broadcast_to(valid, xw.shape)
    first = _first_max(xw, valid)
    m = np.take_along_axis(xw, first[..., None], axis=-1)[..., 0]
    ordinary = np.isfinite(m) & (m > 0)
    safe = np.where(ordinary, m, 1.0)[..., None]
    a = np.where(valid & ordinary[..., None], xw / safe, 0.0)     # a / max in [0, 1]
    total = a.sum(axis=-1)
    if u is None:
        y = np.where(ordinary, m * (a * a).sum(axis=-1) / np.where(ordinary, total, 1.0), m)
        return y.astype(x.dtype), None
    u = np.asarray(u, dtype=np.float64)
    cum = np.cumsum(a, axis=-1)
    hit = (a > 0) & (cum > (u * total)[..., None])
    last_pos = a.shape[-1] - 1 - np.argmax((a > 0)[..., ::-1], axis=-1)
    k = np.where(hit.any(axis=-1), np.argmax(hit, axis=-1), last_pos)
    # a window of zeros: the floor(u |R|)-th of its real cells
    count = valid.sum(axis=-1)
    r = np.minimum(np.floor(u * count).astype(np.int64), count - 1)
    rank = np.cumsum(valid, axis=-1) - 1                          # rank of each real cell
    zero_k = np.argmax(valid & (rank == r[..., None]), axis=-1)
    k = np.where(ordinary, k, np.where(m == 0, zero_k, first))
    y = np.take_along_axis(xw, k[..., None], axis=-1)[..., 0]
    return y.astype(x.dtype), k


def stochastic_pool2d_backward_ref(x, u, gy, kernel_size=2, stride=None, padding=0):
    """gx (N, C, H, W) in x's dtype for the upstream gradient ``gy``."""
    kh, kw, sh, sw, ph, pw, Ho, Wo = _geometry(x.shape, kernel_size, stride, padding)
    N, C, H, W = x.shape
    xw, valid = _windows(np.asarray(x, dtype=np.float64), kernel_size, stride, padding)
    valid = np.broadcast_to(valid, xw.shape)
    g = np.asarray(gy, dtype=np.float64)[..., None]
    if u is None:
        y = stochastic_pool2d_forward_ref(x.astype(np.float64), None, kernel_size, stride, padding)[0]
        total = np.where(valid, xw, 0.0).sum(axis=-1)
        count = valid.sum(axis=-1)
        pos = (total > 0)[..., None]
        with np.errstate(invalid="ignore", divide="ignore"):
            dydx = np.where(pos, (2 * xw - y[..., None]) / np.where(pos, total[..., None], 1.0),
                            1.0 / count[..., None])
        dydx = np.where(np.isfinite(total)[..., None], dydx, np.nan)   # a NaN or inf in the window
        gxw = np.where(valid, g * dydx, 0.0)
    else:
        k = stochastic_pool2d_forward_ref(x, u, kernel_size, stride, padding)[1]
        gxw = np.where(np.arange(kh * kw) == k[..., None], g, 0.0)
    gxpad = np.zeros((N, C, H + 2 * ph, W + 2 * pw))
    for i in range(kh):                                           # overlapping windows accumulate
        for j in range(kw):
            gxpad[:, :, i:i + sh * (Ho - 1) + 1:sh, j:j + sw * (Wo - 1) + 1:sw] += gxw[..., i * kw + j]
    return gxpad[:, :, ph:ph + H, pw:pw + W].astype(x.dtype)
