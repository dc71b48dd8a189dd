r"""Plain-NumPy oracles of local importance pooling and instance normalisation, for the tests.

Written independently of the kernels: the pooling builds every window of zero-padded x and
logit copies as an (N, C, Ho, Wo, K) array with a mask of the real cells, works in float64, and
forms the softmax over a window's real cells with ``-inf`` at the padded ones (the kernels clip
the window instead)::

    w_q = e^{L_q - m} / sum_R e^{L_q' - m},  m = max_R L      y = sum_R w_q x_q
    dy/dx_q = w_q                          dy/dL_q = w_q (x_q - y)

(overlapping windows add their contributions, by a scatter over the kh x kw offsets). Instance
normalisation is the textbook formula per (n, c) plane over its H*W values, with NumPy's own
mean and var::

    xhat = (x - mean) / sqrt(var + eps),  y = gamma xhat + beta
    gx = gamma / sqrt(var + eps) (gy - mean(gy) - xhat mean(gy xhat)),  ggamma = sum gy xhat, gbeta = sum gy
"""
from __future__ import annotations

import numpy as np


def _pair(v):
    return (v, v) if np.isscalar(v) else tuple(v)


def _geometry(x_shape, kernel_size, stride, padding):
    kh, kw = _pair(kernel_size)
    sh, sw = _pair((kh, kw) if stride is None else stride)
    ph, pw = _pair(padding)
    H, W = x_shape[2:]
    return kh, kw, sh, sw, ph, pw, (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1


def _windows(a, geo, fill):
    """a's windows as (N, C, Ho, Wo, K) float64 (``fill`` at padded cells) and the real-cell mask
    (Ho, Wo, K); K = kh*kw offsets, row-major."""
    kh, kw, sh, sw, ph, pw, Ho, Wo = geo
    N, C, H, W = a.shape
    pad = np.full((N, C, H + 2 * ph, W + 2 * pw), fill)
    pad[:, :, ph:ph + H, pw:pw + W] = a
    real = np.zeros((H + 2 * ph, W + 2 * pw), dtype=bool)
    real[ph:ph + H, pw:pw + W] = True
    out = np.empty((N, C, Ho, Wo, kh * kw))
    mask = np.empty((Ho, Wo, kh * kw), dtype=bool)
    for i in range(kh):
        for j in range(kw):
            rows = slice(i, i + sh * (Ho - 1) + 1, sh)
            cols = slice(j, j + sw * (Wo - 1) + 1, sw)
            out[..., i * kw + j] = pad[:, :, rows, cols]
            mask[..., i * kw + j] = real[rows, cols]
    return out, mask


def _softmax_windows(x, logit, geo):
    """(xw, w, y): the windows of x (0 at padded cells), the weights (0 at padded cells) and y."""
    xw, _ = _windows(np.asarray(x, dtype=np.float64), geo, 0.0)
    lw, mask = _windows(np.asarray(logit, dtype=np.float64), geo, 0.0)
    lw = np.where(mask, lw, -np.inf)
    if lw.size == 0:
        return xw, np.zeros_like(lw), np.zeros(lw.shape[:-1])
    z = lw - lw.max(axis=-1, keepdims=True)
    e = np.exp(z)
    w = e / e.sum(axis=-1, keepdims=True)
    return xw, w, (w * xw).sum(axis=-1)


def lip_pool2d_forward_ref(x, logit, kernel_size=3, stride=2, padding=1):
    """y (N, C, Ho, Wo) in x's dtype."""
    geo = _geometry(x.shape, kernel_size, stride, padding)
    return _softmax_windows(x, logit, geo)[2].astype(x.dtype)


def lip_pool2d_backward_ref(x, logit, gy, kernel_size=3, stride=2, padding=1):
    """(gx, glogit), both (N, C, H, W) in x's dtype."""
    geo = _geometry(x.shape, kernel_size, stride, padding)
    kh, kw, sh, sw, ph, pw, Ho, Wo = geo
    N, C, H, W = x.shape
    xw, w, y = _softmax_windows(x, logit, geo)
    g = np.asarray(gy, dtype=np.float64)[..., None]
    per_x = g * w                                   # gy dy/dx_q per window and offset
    per_l = g * w * (xw - y[..., None])             # gy dy/dL_q
    gx = np.zeros((N, C, H + 2 * ph, W + 2 * pw))
    gl = np.zeros_like(gx)
    for i in range(kh):
        for j in range(kw):
            rows = slice(i, i + sh * (Ho - 1) + 1, sh)
            cols = slice(j, j + sw * (Wo - 1) + 1, sw)
            gx[:, :, rows, cols] += per_x[..., i * kw + j]
            gl[:, :, rows, cols] += per_l[..., i * kw + j]
    crop = (slice(None), slice(None), slice(ph, ph + H), slice(pw, pw + W))
    return gx[crop].astype(x.dtype), gl[crop].astype(x.dtype)


# ------------------------------------------------------------------------- instance normalisation
def instance_norm2d_forward_ref(x, gamma=None, beta=None, eps=1e-5):
    """y (N, C, H, W) in x's dtype; gamma, beta (C,) or None (no affine)."""
    x64 = np.asarray(x, dtype=np.float64)
    mean = x64.mean(axis=(2, 3), keepdims=True)
    var = x64.var(axis=(2, 3), keepdims=True)
    xhat = (x64 - mean) / np.sqrt(var + eps)
    y = xhat
    if gamma is not None:
        y = y * np.asarray(gamma, dtype=np.float64)[None, :, None, None]
    if beta is not None:
        y = y + np.asarray(beta, dtype=np.float64)[None, :, None, None]
    return y.astype(x.dtype)


def instance_norm2d_backward_ref(x, gamma, gy, eps=1e-5, affine=True):
    """(gx, ggamma, gbeta) in x's dtype; ggamma and gbeta None without the affine."""
    x64 = np.asarray(x, dtype=np.float64)
    g = np.asarray(gy, dtype=np.float64)
    mean = x64.mean(axis=(2, 3), keepdims=True)
    var = x64.var(axis=(2, 3), keepdims=True)
    xhat = (x64 - mean) / np.sqrt(var + eps)
    scale = np.ones(x.shape[1]) if gamma is None else np.asarray(gamma, dtype=np.float64)
    gxhat = g * scale[None, :, None, None]
    gx = (gxhat - gxhat.mean(axis=(2, 3), keepdims=True)
          - xhat * (gxhat * xhat).mean(axis=(2, 3), keepdims=True)) / np.sqrt(var + eps)
    if not affine:
        return gx.astype(x.dtype), None, None
    return gx.astype(x.dtype), (g * xhat).sum(axis=(0, 2, 3)).astype(x.dtype), g.sum(axis=(0, 2, 3)).astype(x.dtype)
