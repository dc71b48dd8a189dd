"""Power-average (Lp) pooling in plain NumPy: the readable truth the kernels are tested against.

Slow on purpose and used by the tests only. It materialises the padding (a padded copy of x and a
mask of the real cells), works in float64 with every window as an (N, C, Ho, Wo, K) array, and
writes the gradients in terms of ``r_q = x_q / y`` (the kernels use the max-normalised
``u_q = x_q / m`` instead), so it shares no code and no formulation with the kernels it checks::

    y       = m (1/|R| sum_q (x_q / m)^p)^(1/p),  m = max_R x   (y = 0 for an all-zero window)
    dy/dx_q = 1/|R| r_q^(p-1)                      (1/|R| for an all-zero window)
    dy/dp   = y/p 1/|R| sum_q r_q^p log r_q        (0 log 0 = 0; 0 for an all-zero window)
"""
from __future__ import annotations

import numpy as np


def _geometry(x_shape, kernel_size, stride, padding):
    kh, kw = (kernel_size, kernel_size) if np.isscalar(kernel_size) else kernel_size
    if stride is None:
        stride = (kh, kw)
    sh, sw = (stride, stride) if np.isscalar(stride) else stride
    ph, pw = (padding, padding) if np.isscalar(padding) else padding
    H, W = x_shape[2:]
    Ho = (H + 2 * ph - kh) // sh + 1
    Wo = (W + 2 * pw - kw) // sw + 1
    return kh, kw, sh, sw, ph, pw, Ho, Wo


def _windows(x, kernel_size, stride, padding):
    """Every window of the zero-padded x as ``(xw, valid)``: xw (N, C, Ho, Wo, K) float64 (0 at
    padded cells), valid (Ho, Wo, K) True at the real cells; K = kh*kw offsets, row-major."""
    kh, kw, sh, sw, ph, pw, Ho, Wo = _geometry(x.shape, kernel_size, stride, padding)
    N, C, H, W = x.shape
    xpad = np.zeros((N, C, H + 2 * ph, W + 2 * pw))
    xpad[:, :, ph:ph + H, pw:pw + W] = x
    mask = np.zeros((H + 2 * ph, W + 2 * pw), dtype=bool)
    mask[ph:ph + H, pw:pw + W] = True
    xw = np.empty((N, C, Ho, Wo, kh * kw))
    valid = np.empty((Ho, Wo, kh * kw), dtype=bool)
    for i in range(kh):
        for j in range(kw):
            q = i * kw + j
            xw[..., q] = xpad[:, :, i:i + sh * (Ho - 1) + 1:sh, j:j + sw * (Wo - 1) + 1:sw]
            valid[..., q] = mask[i:i + sh * (Ho - 1) + 1:sh, j:j + sw * (Wo - 1) + 1:sw]
    return xw, valid


def _p_per_window(p, C):
    """p (a float, a 0-d array or (C,)) as a float64 array broadcasting against (N, C, Ho, Wo)."""
    p = np.asarray(p, dtype=np.float64)
    return np.broadcast_to(p.reshape(-1), (C,))[None, :, None, None]


def _pool(x, p, kernel_size, stride, padding):
    """(xw, valid, count, p4, y) in float64: the windows, the real-cell mask and count |R|, p as
    (1, C, 1, 1) and the pooled y (N, C, Ho, Wo)."""
    xw, valid = _windows(np.asarray(x, dtype=np.float64), kernel_size, stride, padding)
    count = valid.sum(axis=-1)                                  # |R| per window, (Ho, Wo)
    p4 = _p_per_window(p, x.shape[1])
    m = np.where(valid, xw, 0.0).max(axis=-1)                   # x >= 0: a 0 fill never wins
    safe_m = np.where(m > 0, m, 1.0)
    with np.errstate(under="ignore"):
        mean = np.where(valid, (xw / safe_m[..., None]) ** p4[..., None], 0.0).sum(axis=-1) / count
    y = np.where(m > 0, safe_m * mean ** (1.0 / p4), 0.0)
    return xw, valid, count, p4, y


def lp_pool2d_forward_ref(x, p, kernel_size=2, stride=None, padding=0):
    """y (N, C, Ho, Wo) in x's dtype."""
    return _pool(x, p, kernel_size, stride, padding)[-1].astype(x.dtype)


def lp_pool2d_backward_ref(x, p, gy, kernel_size=2, stride=None, padding=0):
    """(gx, gp) for upstream gradient ``gy``: gx (N, C, H, W) in x's dtype; gp a Python float for
    a scalar p (a float or a 0-d array), else (C,) in x's dtype."""
    xw, valid, count, p4, y = _pool(x, p, kernel_size, stride, padding)
    kh, kw, sh, sw, ph, pw, Ho, Wo = _geometry(x.shape, kernel_size, stride, padding)
    N, C, H, W = x.shape
    pos = (y > 0)[..., None]
    r = np.where(valid & pos, xw / np.where(pos, y[..., None], 1.0), 0.0)      # x_q / y at real cells
    pq = p4[..., None]
    g = np.asarray(gy, dtype=np.float64)[..., None]
    with np.errstate(under="ignore"):
        dydx = np.where(pos, r ** (pq - 1.0), 1.0) / count[..., None]        # all-zero window: 1/|R|
        rlogr = np.where(r > 0, r ** pq * np.log(np.where(r > 0, r, 1.0)), 0.0)   # 0 log 0 = 0
    gxw = np.where(valid, g * dydx, 0.0)
    gxpad = np.zeros((N, C, H + 2 * ph, W + 2 * pw))
    for i in range(kh):                                         # overlapping windows accumulate
        for j in range(kw):
            gxpad[:, :, i:i + sh * (Ho - 1) + 1:sh, j:j + sw * (Wo - 1) + 1:sw] += gxw[..., i * kw + j]
    gx = gxpad[:, :, ph:ph + H, pw:pw + W].astype(x.dtype)

    dydp = y / p4 * rlogr.sum(axis=-1) / count                  # 0 where y = 0 (rlogr is 0 there)
    gp_pos = np.asarray(gy, dtype=np.float64) * dydp
    if np.ndim(p) == 0:
        return gx, float(gp_pos.sum())
    return gx, gp_pos.sum(axis=(0, 2, 3)).astype(x.dtype)
