"""Gaussian-based pooling in plain NumPy: the readable truth the kernels are tested against.

Slow on purpose and used by the tests only. It works in float64 on every window as an
(N, C, Ho, Wo, K) array built from a zero-padded copy of x and a mask of the real cells, and
writes the backward through the window's own deviations (``d_q = x_q - mu``, a whole-window
array) rather than the kernels' per-cell loops::

    mu      = 1/K sum_R x_q                     K = |R|, the real cells only
    v       = 1/K sum_R (x_q - mu)^2            (two-pass)
    sigma   = sqrt(max(v, EPS))
    y       = mu + eta sigma
    dy/dx_q = 1/K + eta d_q / (K sigma)         where v > EPS (or v is NaN), 1/K where v <= EPS
    dy/deta = sigma
"""
from __future__ import annotations

import numpy as np

#: The variance floor: sigma = sqrt(max(v, EPS)), so a flat window has sigma = 1e-3.
EPS = 1e-6


def _pairs(kernel_size, stride, padding):
    kh, kw = (kernel_size, kernel_size) if np.isscalar(kernel_size) else tuple(kernel_size)
    sh, sw = (kh, kw) if stride is None else ((stride, stride) if np.isscalar(stride) else tuple(stride))
    ph, pw = (padding, padding) if np.isscalar(padding) else tuple(padding)
    return kh, kw, sh, sw, ph, pw


def _windows(x, kernel_size, stride, padding):
    """``(xw, valid, geometry)``: xw (N, C, Ho, Wo, K) float64 with 0 at padded cells, valid
    (Ho, Wo, K) True at real cells, geometry (kh, kw, sh, sw, ph, pw, Ho, Wo)."""
    kh, kw, sh, sw, ph, pw = _pairs(kernel_size, stride, padding)
    N, C, H, W = x.shape
    Ho, Wo = (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1
    xpad = np.zeros((N, C, H + 2 * ph, W + 2 * pw))
    xpad[:, :, ph:ph + H, pw:pw + W] = x
    real = np.zeros((H + 2 * ph, W + 2 * pw), dtype=bool)
    real[ph:ph + H, pw:pw + W] = True
    xw = np.empty((N, C, Ho, Wo, kh * kw))
    valid = np.empty((Ho, Wo, kh * kw), dtype=bool)
    for i in range(kh):
        for j in range(kw):
            rows = slice(i, i + sh * (Ho - 1) + 1, sh)
            cols = slice(j, j + sw * (Wo - 1) + 1, sw)
            xw[..., i * kw + j] = xpad[:, :, rows, cols]
            valid[..., i * kw + j] = real[rows, cols]
    return xw, valid, (kh, kw, sh, sw, ph, pw, Ho, Wo)


def _stats(x, kernel_size, stride, padding):
    """(xw, valid, K, mu, v, sigma, geometry): the windows and their float64 statistics."""
    xw, valid, geo = _windows(np.asarray(x, dtype=np.float64), kernel_size, stride, padding)
    K = valid.sum(axis=-1)                                       # (Ho, Wo)
    mu = np.where(valid, xw, 0.0).sum(axis=-1) / K
    with np.errstate(invalid="ignore"):                          # inf - inf: NaN, as the math says
        d = np.where(valid, xw - mu[..., None], 0.0)
        v = (d * d).sum(axis=-1) / K
    sigma = np.sqrt(np.maximum(v, EPS))                          # np.maximum keeps a NaN
    return xw, valid, K, mu, v, sigma, geo


def gaussian_pool2d_forward_ref(x, eta, kernel_size=2, stride=None, padding=0):
    """y (N, C, Ho, Wo) = mu + eta sigma, in x's dtype."""
    _, _, _, mu, _, sigma, _ = _stats(x, kernel_size, stride, padding)
    with np.errstate(invalid="ignore"):
        y = mu + np.asarray(eta, dtype=np.float64) * sigma
    return y.astype(x.dtype)


def gaussian_pool2d_backward_ref(x, eta, gy, kernel_size=2, stride=None, padding=0):
    """(gx (N, C, H, W), geta (N, C, Ho, Wo)), both in x's dtype."""
    xw, valid, K, mu, v, sigma, geo = _stats(x, kernel_size, stride, padding)
    kh, kw, sh, sw, ph, pw, Ho, Wo = geo
    N, C, H, W = x.shape
    e = np.asarray(eta, dtype=np.float64)
    g = np.asarray(gy, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        d = np.where(valid, xw - mu[..., None], 0.0)
        slope = np.where(v <= EPS, 0.0, e / sigma)               # the clamp is flat where v <= EPS
        dydx = (1.0 + slope[..., None] * d) / K[..., None]
        gxw = np.where(valid, g[..., None] * dydx, 0.0)
    gxpad = np.zeros((N, C, H + 2 * ph, W + 2 * pw))
    for i in range(kh):                                          # overlapping windows add up
        for j in range(kw):
            gxpad[:, :, i:i + sh * (Ho - 1) + 1:sh, j:j + sw * (Wo - 1) + 1:sw] += gxw[..., i * kw + j]
    gx = gxpad[:, :, ph:ph + H, pw:pw + W].astype(x.dtype)
    return gx, (g * sigma).astype(x.dtype)

