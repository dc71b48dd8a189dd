"""Plain NumPy mixed and gated max-average pooling: slow, readable, the test oracle.

Padding is materialised (a -inf border for the max, a 0/1 mask for the mean and the gate's dot
product), the opposite choice to the kernels, which clip each window.
"""
from __future__ import annotations

import numpy as np


def _out(size, k, s, p):
    return (size + 2 * p - k) // s + 1


def _windows(x, kernel_size, stride, padding):
    """Every window of x as (N, C, Ho, Wo, K) arrays in float64: the values with -inf padding,
    the values with 0 padding, and the (K,) real-cell mask of each window (Ho, Wo, K)."""
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    n, c, h, w = x.shape
    ho, wo = _out(h, kh, sh, ph), _out(w, kw, sw, pw)
    x0 = np.zeros((n, c, h + 2 * ph, w + 2 * pw))
    x0[:, :, ph:ph + h, pw:pw + w] = x
    real = np.zeros((h + 2 * ph, w + 2 * pw), dtype=bool)
    real[ph:ph + h, pw:pw + w] = True
    vals = np.empty((n, c, ho, wo, kh * kw))
    mask = np.empty((ho, wo, kh * kw), dtype=bool)
    for i in range(ho):
        for j in range(wo):
            rows, cols = slice(i * sh, i * sh + kh), slice(j * sw, j * sw + kw)
            vals[:, :, i, j] = x0[:, :, rows, cols].reshape(n, c, kh * kw)
            mask[i, j] = real[rows, cols].ravel()
    return vals, mask


def _max_avg(vals, mask):
    """Per window: the max (first maximum; a NaN propagates), its offset, the mean of the real cells."""
    neg = np.where(mask, vals, -np.inf)
    arg = np.argmax(neg, axis=-1)                      # the first maximum, or the first NaN
    m = np.take_along_axis(neg, arg[..., None], axis=-1)[..., 0]
    v = (vals * mask).sum(axis=-1) / mask.sum(axis=-1)
    return m, arg, v


def _sigmoid(z):
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def _a4(a, n, c):
    a = np.asarray(a, dtype=np.float64)
    return {0: lambda: a.reshape(1, 1, 1, 1), 1: lambda: a.reshape(1, c, 1, 1),
            2: lambda: a.reshape(n, c, 1, 1)}[a.ndim]()


def mixed_pool2d_forward_ref(x, a, kernel_size, stride, padding):
    """y = a max + (1 - a) avg, a broadcast per (sample,) channel."""
    vals, mask = _windows(x, kernel_size, stride, padding)
    m, _, v = _max_avg(vals, mask)
    a4 = _a4(a, *x.shape[:2])
    return (a4 * m + (1 - a4) * v).astype(x.dtype)


def mixed_pool2d_backward_ref(x, a, gy, kernel_size, stride, padding):
    """(gx, ga): gx_q = gy (a [q is the argmax] + (1 - a) / |R|), ga = sum gy (max - avg)."""
    vals, mask = _windows(x, kernel_size, stride, padding)
    m, arg, v = _max_avg(vals, mask)
    a4 = _a4(a, *x.shape[:2])
    gy = gy.astype(np.float64)
    onehot = np.arange(vals.shape[-1]) == arg[..., None]
    gwin = gy[..., None] * (a4[..., None] * onehot + ((1 - a4) / mask.sum(axis=-1))[..., None] * mask)
    ga = (gy * (m - v))
    ga = {0: lambda: float(ga.sum()), 1: lambda: ga.sum(axis=(0, 2, 3)), 2: lambda: ga.sum(axis=(2, 3))}[np.ndim(a)]()
    return _scatter(gwin, x.shape, kernel_size, stride, padding).astype(gy.dtype), ga


def gated_pool2d_forward_ref(x, omega, kernel_size, stride, padding):
    """g = sigmoid(omega . x_R) per window (padded cells count as 0), y = g max + (1 - g) avg."""
    vals, mask = _windows(x, kernel_size, stride, padding)
    m, _, v = _max_avg(vals, mask)
    g = _sigmoid(vals @ np.asarray(omega, np.float64))
    return (g * m + (1 - g) * v).astype(x.dtype)


def gated_pool2d_backward_ref(x, omega, gy, kernel_size, stride, padding):
    """(gx, gomega): gx_q = gy (g [q is the argmax] + (1 - g)/|R| + (max - avg) g (1 - g) omega_q),
    gomega_q = sum over windows of gy (max - avg) g (1 - g) x_q."""
    vals, mask = _windows(x, kernel_size, stride, padding)
    m, arg, v = _max_avg(vals, mask)
    om = np.asarray(omega, np.float64)
    g = _sigmoid(vals @ om)
    gy = gy.astype(np.float64)
    onehot = np.arange(vals.shape[-1]) == arg[..., None]
    t = gy * (m - v) * g * (1 - g)
    gwin = (gy[..., None] * (g[..., None] * onehot + ((1 - g) / mask.sum(axis=-1))[..., None] * mask)
            + t[..., None] * om * mask)
    gomega = (t[..., None] * vals).reshape(-1, vals.shape[-1]).sum(axis=0)
    return _scatter(gwin, x.shape, kernel_size, stride, padding).astype(gy.dtype), gomega


def _scatter(gwin, x_shape, kernel_size, stride, padding):
    """Add each window's (K,) gradient back onto its cells (padding dropped)."""
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    n, c, h, w = x_shape
    gxp = np.zeros((n, c, h + 2 * ph, w + 2 * pw))
    for i in range(gwin.shape[2]):
        for j in range(gwin.shape[3]):
            gxp[:, :, i * sh:i * sh + kh, j * sw:j * sw + kw] += gwin[:, :, i, j].reshape(n, c, kh, kw)
    return gxp[:, :, ph:ph + h, pw:pw + w]
