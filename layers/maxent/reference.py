"""Max-entropy pooling in plain NumPy: the readable truth the fast kernels are tested against.

Slow on purpose (it materialises every window as an (N, C, Ho, Wo, K) array) and used by the
tests only. It takes ``lam`` and ``rho`` in any of their accepted forms and does its own
broadcasting and reductions, so it shares no code with the kernels it checks.

    W_q = exp(lam X_q + rho_q) / sum_q' exp(lam X_q' + rho_q')   over the real (unpadded) cells
    Y   = sum_q W_q X_q
    dY/dX_q = W_q (1 + lam (X_q - Y)),  dY/dlam = sum_q W_q (X_q - Y)^2,  dY/drho_q = W_q (X_q - Y)
"""
from __future__ import annotations

import numpy as np


def _geometry(x, kernel_size, stride, padding):
    kh, kw = (kernel_size, kernel_size) if np.isscalar(kernel_size) else kernel_size
    if stride is None:
        stride = (kh, kw)
    sh, sw = (stride, stride) if np.isscalar(stride) else stride
    ph, pw = (padding, padding) if np.isscalar(padding) else padding
    H, W = x.shape[2:]
    Ho = (H + 2 * ph - kh) // sh + 1
    Wo = (W + 2 * pw - kw) // sw + 1
    return kh, kw, sh, sw, ph, pw, Ho, Wo


def _windows(x, kernel_size, stride, padding):
    """Every window as ``(xw, valid)``: xw (N, C, Ho, Wo, K) with 0 at padded cells, valid (Ho, Wo, K)."""
    kh, kw, sh, sw, ph, pw, Ho, Wo = _geometry(x, kernel_size, stride, padding)
    N, C, H, W = x.shape
    xpad = np.zeros((N, C, H + 2 * ph, W + 2 * pw), dtype=x.dtype)
    xpad[:, :, ph:ph + H, pw:pw + W] = x
    mask = np.zeros((H + 2 * ph, W + 2 * pw), dtype=bool)
    mask[ph:ph + H, pw:pw + W] = True
    xw = np.empty((N, C, Ho, Wo, kh * kw), dtype=x.dtype)
    valid = np.empty((Ho, Wo, kh * kw), dtype=bool)
    for i in range(kh):
        for j in range(kw):
            q = i * kw + j  # row-major offset inside the window
            xw[..., q] = xpad[:, :, i:i + sh * (Ho - 1) + 1:sh, j:j + sw * (Wo - 1) + 1:sw]
            valid[..., q] = mask[i:i + sh * (Ho - 1) + 1:sh, j:j + sw * (Wo - 1) + 1:sw]
    return xw, valid


def _lam_per_window(lam, N, C, Ho, Wo, dtype):
    """lam as an (N, C, Ho, Wo) array from any accepted form."""
    lam = np.asarray(lam, dtype=dtype)
    if lam.ndim == 0:
        return np.full((N, C, Ho, Wo), lam, dtype=dtype)
    if lam.ndim == 1:  # (C,)
        return np.tile(lam[None, :, None, None], (N, 1, Ho, Wo))
    if lam.ndim == 2:  # (N, C)
        return np.tile(lam[:, :, None, None], (1, 1, Ho, Wo))
    return lam.copy()  # (N, C, Ho, Wo)


def _rho_per_window(rho, N, C, K, dtype):
    """rho as an (N, C, K) array (zeros for None)."""
    if rho is None:
        return np.zeros((N, C, K), dtype=dtype)
    rho = np.asarray(rho, dtype=dtype)
    return np.tile(rho[None], (N, 1, 1)) if rho.ndim == 2 else rho.copy()


def _weights(x, lam, rho, kernel_size, stride, padding):
    """The softmax weights W (N, C, Ho, Wo, K) (0 at padded cells), the windows, and Y."""
    xw, valid = _windows(x, kernel_size, stride, padding)
    N, C, Ho, Wo, K = xw.shape
    lam4 = _lam_per_window(lam, N, C, Ho, Wo, x.dtype)
    rho3 = _rho_per_window(rho, N, C, K, x.dtype)
    z = lam4[..., None] * xw + rho3[:, :, None, None, :]
    z = np.where(valid, z, -np.inf)
    z = z - z.max(axis=-1, keepdims=True)      # shift by each window's own max: no overflow
    e = np.where(valid, np.exp(z), 0.0).astype(x.dtype)
    w = e / e.sum(axis=-1, keepdims=True)
    y = (w * xw).sum(axis=-1)
    return w, xw, valid, lam4, y


def maxent_pool2d_forward_ref(x, lam, rho=None, kernel_size=2, stride=2, padding=0):
    """Y (N, C, Ho, Wo) of max-entropy pooling; ``lam`` a float, (C,), (N, C) or (N, C, Ho, Wo);
    ``rho`` None, (C, K) or (N, C, K)."""
    return _weights(x, lam, rho, kernel_size, stride, padding)[-1]


def maxent_pool2d_backward_ref(x, lam, rho, gy, kernel_size=2, stride=2, padding=0):
    """(gx, glam, grho) for upstream gradient ``gy``; glam and grho in the forms lam and rho had
    (a Python float for a scalar lam, None for rho=None)."""
    w, xw, valid, lam4, y = _weights(x, lam, rho, kernel_size, stride, padding)
    kh, kw, sh, sw, ph, pw, Ho, Wo = _geometry(x, kernel_size, stride, padding)
    N, C, H, W = x.shape
    dev = xw - y[..., None]                                   # X_q - Y
    g = gy[..., None]
    gxw = g * w * (1.0 + lam4[..., None] * dev)               # Eq. 8, per window and offset
    gxpad = np.zeros((N, C, H + 2 * ph, W + 2 * pw), dtype=x.dtype)
    for i in range(kh):                                       # overlapping windows accumulate
        for j in range(kw):
            gxpad[:, :, i:i + sh * (Ho - 1) + 1:sh, j:j + sw * (Wo - 1) + 1:sw] += gxw[..., i * kw + j]
    gx = gxpad[:, :, ph:ph + H, pw:pw + W].copy()

    glam_pos = gy * (w * dev * dev).sum(axis=-1)              # Eq. 9, per window
    lam_a = np.asarray(lam)
    if lam_a.ndim == 0:
        glam = float(glam_pos.sum())
    elif lam_a.ndim == 1:
        glam = glam_pos.sum(axis=(0, 2, 3))
    elif lam_a.ndim == 2:
        glam = glam_pos.sum(axis=(2, 3))
    else:
        glam = glam_pos

    grho = None
    if rho is not None:
        grho_pos = g * w * dev                                # Eq. 10, per window and offset
        grho = grho_pos.sum(axis=(2, 3))
        if np.asarray(rho).ndim == 2:
            grho = grho.sum(axis=0)
    return gx, glam, grho
