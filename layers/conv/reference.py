"""Plain NumPy convolution: the readable test oracle (used by the tests only).

One ``einsum`` per kernel offset ``(i, j)`` on a zero-padded copy of the input; no lowering, no
buffers, nothing clever, so it is easy to check by eye against the definition

    y[n, o, oh, ow] = b[o] + sum_{c, i, j} w[o, c, i, j] * xpad[n, c, oh*sh + i, ow*sw + j].
"""
from __future__ import annotations

import numpy as np


def _window(a, i, j, ho, wo, sh, sw):
    """The strided (ho, wo) slice of ``a`` (..., Hp, Wp) seen by kernel offset (i, j)."""
    return a[:, :, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw]


def conv2d_forward_ref(x, w, b=None, stride=(1, 1), padding=(0, 0)):
    """x (N, C, H, W), w (O, C, kh, kw), b (O,) or None -> y (N, O, Ho, Wo)."""
    sh, sw = stride
    ph, pw = padding
    kh, kw = w.shape[2:]
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    ho = (xp.shape[2] - kh) // sh + 1
    wo = (xp.shape[3] - kw) // sw + 1
    y = np.zeros((x.shape[0], w.shape[0], ho, wo), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            y += np.einsum("nchw,oc->nohw", _window(xp, i, j, ho, wo, sh, sw), w[:, :, i, j])
    if b is not None:
        y += b[None, :, None, None]
    return y


def conv2d_backward_ref(x, w, gy, stride=(1, 1), padding=(0, 0)):
    """Gradients of ``sum(y * gy)``: returns (gx (N, C, H, W), gw (O, C, kh, kw), gb (O,))."""
    sh, sw = stride
    ph, pw = padding
    kh, kw = w.shape[2:]
    ho, wo = gy.shape[2:]
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    gxp = np.zeros_like(xp)
    gw = np.zeros_like(w)
    for i in range(kh):
        for j in range(kw):
            gw[:, :, i, j] = np.einsum("nohw,nchw->oc", gy, _window(xp, i, j, ho, wo, sh, sw))
            _window(gxp, i, j, ho, wo, sh, sw)[...] += np.einsum("nohw,oc->nchw", gy, w[:, :, i, j])
    gx = gxp[:, :, ph:ph + x.shape[2], pw:pw + x.shape[3]]
    gb = gy.sum(axis=(0, 2, 3))
    return gx, gw, gb


def im2col_ref(x, kernel, stride, padding):
    """The column matrix (C*kh*kw, N*Ho*Wo) by its definition, on a zero-padded copy:
    ``cols[(c*kh + i)*kw + j, (n*Ho + oh)*Wo + ow] = xpad[n, c, oh*sh + i, ow*sw + j]``."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    n, c = x.shape[:2]
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    ho = (xp.shape[2] - kh) // sh + 1
    wo = (xp.shape[3] - kw) // sw + 1
    cols = np.empty((c, kh, kw, n, ho, wo), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            cols[:, i, j] = _window(xp, i, j, ho, wo, sh, sw).transpose(1, 0, 2, 3)
    return cols.reshape(c * kh * kw, n * ho * wo)


def col2im_ref(cols, x_shape, kernel, stride, padding):
    """The adjoint of :func:`im2col_ref`: every column entry added back to the cell it was read
    from; entries read from the padding are dropped."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    n, c, h, w = x_shape
    ho = (h + 2 * ph - kh) // sh + 1
    wo = (w + 2 * pw - kw) // sw + 1
    g = cols.reshape(c, kh, kw, n, ho, wo)
    gxp = np.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            _window(gxp, i, j, ho, wo, sh, sw)[...] += g[:, i, j].transpose(1, 0, 2, 3)
    return gxp[:, :, ph:ph + h, pw:pw + w].copy()
