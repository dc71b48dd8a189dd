"""Power-average (Lp) pooling on the GPU: the glue that launches ``kernels.cu``, written against
``xp`` and :func:`minignn.cuda.launch` so that it runs unchanged on ``gpu`` and ``gpu-sim``. Same
calling convention as the CPU kernels of ``__init__.py`` (``_forward_cpu``, ``_backward_cpu``).

Forward: one thread per output window. Backward: one thread per window (its max, its gradient
coefficient and its gy dy/dp term, in float64), then one thread per input cell gathering its
gradient over the windows that hold it; the per-window dy/dp terms are summed over each plane's
positions here with an xp reduction (float64), giving the (N, C) per-plane sums that
:func:`~minignn.layers.lppool.lp_pool2d_backward` reduces to p's shape.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from minignn import backend, cuda, ops

SOURCE = cuda.Source(Path(__file__).with_name("kernels.cu"))


def _args(x_shape, y_shape, geometry):
    """(N*C, C, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw) as int32."""
    N, C, H, W = x_shape
    return tuple(np.int32(v) for v in (N * C, C, H, W, *y_shape[2:], *geometry))


def lppool2d_fwd_gpu(x, p, geometry, y_shape):
    xp = backend.get_array_module(x)
    x, p = xp.ascontiguousarray(x), xp.ascontiguousarray(p)
    y = xp.empty(y_shape, dtype=x.dtype)
    cuda.launch(SOURCE, "lppool2d_fwd_gpu" + cuda.suffix(x.dtype), *cuda.grid_1d(y.size),
                x, p, *_args(x.shape, y_shape, geometry), y)
    return y


def lppool2d_bwd_gpu(x, p, gy, geometry):
    """(gx (N, C, H, W) in x's dtype, gp per plane (N, C) float64)."""
    xp = backend.get_array_module(x)
    x, p, gy = (xp.ascontiguousarray(a) for a in (x, p, gy))
    sfx = cuda.suffix(x.dtype)
    args = _args(x.shape, gy.shape, geometry)
    stats = xp.empty(gy.shape + (2,), dtype=np.float64)      # per window: m, gradient coefficient
    dpw = xp.empty(gy.shape, dtype=np.float64)                # per window: gy dy/dp
    cuda.launch(SOURCE, "lppool2d_bwd_win_gpu" + sfx, *cuda.grid_1d(dpw.size), x, p, gy, *args, stats, dpw)
    gx = xp.empty(x.shape, dtype=x.dtype)
    cuda.launch(SOURCE, "lppool2d_bwd_gx_gpu" + sfx, *cuda.grid_1d(gx.size), x, p, stats, *args, gx)
    return gx, dpw.sum(axis=(2, 3))


KERNELS = ops.Kernels(lppool2d_fwd_gpu, lppool2d_bwd_gpu)
