"""Plain NumPy max and average pooling: slow, readable, the test oracle (used by tests only).

Padding is materialised here (with -inf for max pooling, with a mask for average pooling), the
opposite choice to the kernels, which clip each window: the two meet only if both are right.
"""
from __future__ import annotations

import numpy as np


def _out(size, k, s, p):
    return (size + 2 * p - k) // s + 1


def maxpool2d_forward_ref(x, kernel_size, stride, padding):
    """Returns ``y`` (N, C, Ho, Wo) and ``argmax`` (N, C, Ho, Wo): the flat index ``h*W + w`` in the
    unpadded input plane of the first maximum of each window (row-major window order)."""
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    n, c, h, w = x.shape
    ho, wo = _out(h, kh, sh, ph), _out(w, kw, sw, pw)
    xp = np.full((n, c, h + 2 * ph, w + 2 * pw), -np.inf, dtype=x.dtype)
    xp[:, :, ph:ph + h, pw:pw + w] = x
    y = np.empty((n, c, ho, wo), dtype=x.dtype)
    argmax = np.empty((n, c, ho, wo), dtype=np.int64)
    for i in range(ho):
        for j in range(wo):
            win = xp[:, :, i * sh:i * sh + kh, j * sw:j * sw + kw].reshape(n, c, kh * kw)
            a = np.argmax(win, axis=2)  # first maximum (and first NaN, if any)
            y[:, :, i, j] = np.take_along_axis(win, a[:, :, None], axis=2)[:, :, 0]
            di, dj = a // kw, a % kw
            argmax[:, :, i, j] = (i * sh + di - ph) * w + (j * sw + dj - pw)
    return y, argmax


def maxpool2d_backward_ref(gy, argmax, x_shape):
    """gx: each gy value added to its window's argmax cell."""
    n, c, h, w = x_shape
    gx = np.zeros((n, c, h * w), dtype=gy.dtype)
    for i in range(n):
        for j in range(c):
            np.add.at(gx[i, j], argmax[i, j].ravel(), gy[i, j].ravel())
    return gx.reshape(x_shape)


def _real_mask(h, w, ph, pw):
    m = np.zeros((h + 2 * ph, w + 2 * pw))
    m[ph:ph + h, pw:pw + w] = 1.0
    return m


def avgpool2d_forward_ref(x, kernel_size, stride, padding):
    """y = sum of each window's real cells / number of real cells."""
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    n, c, h, w = x.shape
    ho, wo = _out(h, kh, sh, ph), _out(w, kw, sw, pw)
    xp = np.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=np.float64)
    xp[:, :, ph:ph + h, pw:pw + w] = x
    mask = _real_mask(h, w, ph, pw)
    y = np.empty((n, c, ho, wo), dtype=np.float64)
    for i in range(ho):
        for j in range(wo):
            rows, cols = slice(i * sh, i * sh + kh), slice(j * sw, j * sw + kw)
            y[:, :, i, j] = xp[:, :, rows, cols].sum(axis=(2, 3)) / mask[rows, cols].sum()
    return y.astype(x.dtype)


def avgpool2d_backward_ref(gy, x_shape, kernel_size, stride, padding):
    """gx: each gy value spread evenly over its window's real cells."""
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    n, c, h, w = x_shape
    mask = _real_mask(h, w, ph, pw)
    gxp = np.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=np.float64)
    for i in range(gy.shape[2]):
        for j in range(gy.shape[3]):
            rows, cols = slice(i * sh, i * sh + kh), slice(j * sw, j * sw + kw)
            m = mask[rows, cols]
            gxp[:, :, rows, cols] += gy[:, :, i, j][:, :, None, None] * m / m.sum()
    return gxp[:, :, ph:ph + h, pw:pw + w].astype(gy.dtype)


def global_avgpool2d_forward_ref(x):
    """(N, C, H, W) -> (N, C): the mean over H and W."""
    return x.astype(np.float64).mean(axis=(2, 3)).astype(x.dtype)


def global_avgpool2d_backward_ref(gy, x_shape):
    n, c, h, w = x_shape
    return np.repeat(np.repeat(gy[:, :, None, None] / (h * w), h, axis=2), w, axis=3).astype(gy.dtype)
