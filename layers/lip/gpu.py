"""Local importance pooling on the GPU: the glue that launches ``kernels.cu``, written against
``xp`` and :func:`minignn.cuda.launch` so that it runs unchanged on ``gpu`` and ``gpu-sim``. Same
calling convention as the CPU kernels of ``__init__.py`` (``_forward_cpu``, ``_backward_cpu``).

Forward: one thread per output window. Backward: one thread per window (its max logit, gy / S
and y, in float64), then one thread per input cell gathering gx and glogit over the windows
that hold it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from minignn import backend, cuda, ops

SOURCE = cuda.Source(Path(__file__).with_name("kernels.cu"))


def _args(x_shape, y_shape, geometry):
    """(N*C, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw) as int32."""
    N, C, H, W = x_shape
    return tuple(np.int32(v) for v in (N * C, H, W, *y_shape[2:], *geometry))


def lippool2d_fwd_gpu(x, logit, geometry, y_shape):
    xp = backend.get_array_module(x)
    x, logit = xp.ascontiguousarray(x), xp.ascontiguousarray(logit)
    y = xp.empty(y_shape, dtype=x.dtype)
    cuda.launch(SOURCE, "lippool2d_fwd_gpu" + cuda.suffix(x.dtype), *cuda.grid_1d(y.size),
                x, logit, *_args(x.shape, y_shape, geometry), y)
    return y


def lippool2d_bwd_gpu(x, logit, gy, geometry):
    """(gx, glogit), both (N, C, H, W) in x's dtype."""
    xp = backend.get_array_module(x)
    x, logit, gy = (xp.ascontiguousarray(a) for a in (x, logit, gy))
    sfx = cuda.suffix(x.dtype)
    args = _args(x.shape, gy.shape, geometry)
    stats = xp.empty(gy.shape + (3,), dtype=np.float64)       # per window: m, gy / S, y
    cuda.launch(SOURCE, "lippool2d_bwd_win_gpu" + sfx, *cuda.grid_1d(gy.size), x, logit, gy, *args, stats)
    gx = xp.empty(x.shape, dtype=x.dtype)
    gl = xp.empty(x.shape, dtype=x.dtype)
    cuda.launch(SOURCE, "lippool2d_bwd_gx_gpu" + sfx, *cuda.grid_1d(gx.size), x, logit, stats, *args, gx, gl)
    return gx, gl


KERNELS = ops.Kernels(lippool2d_fwd_gpu, lippool2d_bwd_gpu)
