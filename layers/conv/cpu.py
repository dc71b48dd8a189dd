"""Numba kernels of the convolution lowering: im2col and its adjoint col2im.

Column layout (shared with the GPU kernels): ``cols`` has shape ``(C*kh*kw, N*Ho*Wo)``; row
``(c*kh + i)*kw + j`` holds, for every image ``n`` and output pixel ``(oh, ow)`` (column
``(n*Ho + oh)*Wo + ow``), the input value under kernel offset ``(i, j)``:

    cols[(c, i, j), (n, oh, ow)] = x[n, c, oh*sh + i - ph, ow*sw + j - pw]   (0 outside the input)

so the convolution is one large GEMM ``W (O, C*kh*kw) @ cols`` and its two gradients are
``gy_mat @ cols.T`` and ``W.T @ gy_mat``. Padding is never materialised: the kernels clip each
row to the valid range and write zeros elsewhere.

Both kernels run in parallel over the ``N*C`` image planes: im2col writes the ``kh*kw`` row
segments of its plane, col2im accumulates into its own ``(H, W)`` plane of ``gx``; no two
iterations touch the same output cell, so there is no race.
"""
from __future__ import annotations

from minignn._numba import pjit, prange
from minignn.layers._window import valid_range


@pjit
def im2col_cpu(x, kh, kw, sh, sw, ph, pw, ho, wo, cols):
    """Fill ``cols`` (C*kh*kw, N*ho*wo) from ``x`` (N, C, H, W); see the module docstring."""
    n_img, n_ch, h_in, w_in = x.shape
    howo = ho * wo
    for plane in prange(n_img * n_ch):
        c = plane // n_img
        n = plane - c * n_img
        for i in range(kh):
            for j in range(kw):
                row = (c * kh + i) * kw + j
                ow0, ow1 = valid_range(j, sw, pw, w_in, wo)  # 0 <= ow*sw + j - pw < w_in
                for oh in range(ho):
                    base = n * howo + oh * wo
                    hh = oh * sh + i - ph
                    if hh < 0 or hh >= h_in:
                        for ow in range(wo):
                            cols[row, base + ow] = 0
                        continue
                    for ow in range(ow0):
                        cols[row, base + ow] = 0
                    w0 = j - pw
                    if sw == 1:
                        for ow in range(ow0, ow1):
                            cols[row, base + ow] = x[n, c, hh, ow + w0]
                    else:
                        for ow in range(ow0, ow1):
                            cols[row, base + ow] = x[n, c, hh, ow * sw + w0]
                    for ow in range(ow1, wo):
                        cols[row, base + ow] = 0


@pjit
def col2im_cpu(cols, kh, kw, sh, sw, ph, pw, ho, wo, gx):
    """Overwrite ``gx`` (N, C, H, W) with the adjoint of im2col applied to ``cols``: every column
    entry is added back to the input cell it was read from (entries read from padding are
    dropped)."""
    n_img, n_ch, h_in, w_in = gx.shape
    howo = ho * wo
    for plane in prange(n_img * n_ch):
        c = plane // n_img
        n = plane - c * n_img
        for hh in range(h_in):
            for ww in range(w_in):
                gx[n, c, hh, ww] = 0
        for i in range(kh):
            for j in range(kw):
                row = (c * kh + i) * kw + j
                ow0, ow1 = valid_range(j, sw, pw, w_in, wo)  # 0 <= ow*sw + j - pw < w_in
                w0 = j - pw
                for oh in range(ho):
                    hh = oh * sh + i - ph
                    if hh < 0 or hh >= h_in:
                        continue
                    base = n * howo + oh * wo
                    if sw == 1:
                        for ow in range(ow0, ow1):
                            gx[n, c, hh, ow + w0] += cols[row, base + ow]
                    else:
                        for ow in range(ow0, ow1):
                            gx[n, c, hh, ow * sw + w0] += cols[row, base + ow]
