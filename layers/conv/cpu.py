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

Stride 1 with ``Wo == W`` (every "same" convolution: 3x3 padding 1, 1x1, ...) has a fast path.
There output pixel ``p = oh*W + ow`` reads input cell ``p + (i - ph)*W + (j - pw)`` of the
flattened plane: one contiguous shifted copy per offset over all the valid rows, which
vectorises, instead of one short loop per output row (rows of 16 pixels and less in a CIFAR net,
where the loop set-up dominates; timings: ``benchmarks/results/kernel-history.md``). The cells
whose column falls outside the input (they would wrap around to the neighbouring row) are zeroed
after the copy (im2col) or selected away with a per-column mask (col2im), and rows outside the
input are zero (im2col) or skipped (col2im).
"""
from __future__ import annotations

import numpy as np

from minignn._numba import njit, pjit, prange
from minignn.layers._window import valid_range


@pjit
def im2col_cpu(x, kh, kw, sh, sw, ph, pw, ho, wo, cols):
    """Fill ``cols`` (C*kh*kw, N*ho*wo) from ``x`` (N, C, H, W); see the module docstring."""
    n_img, n_ch, h_in, w_in = x.shape
    howo = ho * wo
    if sh == 1 and sw == 1 and wo == w_in:
        _im2col_same(x, kh, kw, ph, pw, ho, cols)
        return
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
    if sh == 1 and sw == 1 and wo == w_in:
        _col2im_same(cols, kh, kw, ph, pw, ho, gx)
        return
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


@njit(inline='always')
def _same_span(i, j, ph, pw, h_in, w_in, ho):
    """For kernel offset (i, j) of a stride-1, Wo == W convolution: the output rows [oh0, oh1)
    whose input row is real, the flat shift (output pixel p reads input cell p + shift), and the
    span [a, b) of output pixels on those rows whose shifted cell lies inside the plane."""
    oh0, oh1 = valid_range(i, 1, ph, h_in, ho)
    shift = (i - ph) * w_in + (j - pw)
    a = max(oh0 * w_in, -shift)
    b = max(a, min(oh1 * w_in, h_in * w_in - shift))
    return oh0, oh1, shift, a, b


@pjit
def _im2col_same(x, kh, kw, ph, pw, ho, cols):
    """im2col for stride 1 and Wo == W (see the module docstring)."""
    n_img, n_ch, h_in, w_in = x.shape
    howo = ho * w_in
    hw = h_in * w_in
    xf = x.reshape(n_img * n_ch, hw)
    for plane in prange(n_img * n_ch):
        c = plane // n_img
        n = plane - c * n_img
        src = xf[n * n_ch + c]
        for i in range(kh):
            for j in range(kw):
                dst = cols[(c * kh + i) * kw + j, n * howo: (n + 1) * howo]
                # the shifted copy over the real rows, clipped to sources inside the plane
                oh0, oh1, shift, a, b = _same_span(i, j, ph, pw, h_in, w_in, ho)
                for p in range(a):
                    dst[p] = 0
                d = dst[a:b]
                s = src[a + shift: b + shift]
                for k in range(b - a):
                    d[k] = s[k]
                for p in range(b, howo):
                    dst[p] = 0
                # columns outside the input wrapped around to a neighbouring row: zero them
                ow0, ow1 = valid_range(j, 1, pw, w_in, w_in)
                for oh in range(oh0, oh1):
                    for ow in range(ow0):
                        dst[oh * w_in + ow] = 0
                    for ow in range(ow1, w_in):
                        dst[oh * w_in + ow] = 0


@pjit
def _col2im_same(cols, kh, kw, ph, pw, ho, gx):
    """col2im for stride 1 and Wo == W (see the module docstring)."""
    n_img, n_ch, h_in, w_in = gx.shape
    howo = ho * w_in
    hw = h_in * w_in
    gf = gx.reshape(n_img * n_ch, hw)
    keep = np.zeros((kw, howo), dtype=cols.dtype)   # 1 where output pixel p reads a real column
    for j in range(kw):
        ow0, ow1 = valid_range(j, 1, pw, w_in, w_in)
        for p in range(howo):
            ow = p % w_in
            if ow0 <= ow < ow1:
                keep[j, p] = 1
    for plane in prange(n_img * n_ch):
        c = plane // n_img
        n = plane - c * n_img
        g = gf[n * n_ch + c]
        for q in range(hw):
            g[q] = 0
        for i in range(kh):
            for j in range(kw):
                col = cols[(c * kh + i) * kw + j, n * howo: (n + 1) * howo]
                _, _, shift, a, b = _same_span(i, j, ph, pw, h_in, w_in, ho)
                d = g[a + shift: b + shift]
                s = col[a:b]
                m = keep[j, a:b]
                for k in range(b - a):
                    # a wrapped-around column adds nothing (a select, not a product: inf stays put)
                    d[k] += s[k] if m[k] != 0 else 0
