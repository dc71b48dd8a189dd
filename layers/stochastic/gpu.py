"""Stochastic pooling on the GPU: the glue that launches ``kernels.cu``, written against ``xp`` and
:func:`minignn.cuda.launch` so that it runs unchanged on ``gpu`` and ``gpu-sim``. Same calling
convention as the CPU kernels of ``__init__.py`` (``_forward_cpu``, ``_backward_cpu``).

Training forward: one thread per output window draws its cell (the draws ``u`` are float64 on the
device). Training backward: max pooling's backward kernel, on the drawn offsets. Eval forward: one
thread per output window; eval backward: one thread per window for its coefficients, then one
thread per input cell gathering over the windows that hold it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from minignn import backend, cuda, ops
from minignn.layers.pooling import argmax_dtype

SOURCE = cuda.Source(Path(__file__).with_name("kernels.cu"))


def _args(x_shape, y_shape, geometry):
    """(N*C, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw) as int32."""
    N, C, H, W = x_shape
    return tuple(np.int32(v) for v in (N * C, H, W, *y_shape[2:], *geometry))


def stochpool2d_fwd_gpu(x, u, geometry, y_shape):
    """(y, arg): arg the drawn offsets for u (training), None for u None (eval)."""
    xp = backend.get_array_module(x)
    x = xp.ascontiguousarray(x)
    y = xp.empty(y_shape, dtype=x.dtype)
    args = _args(x.shape, y_shape, geometry)
    if u is None:
        cuda.launch(SOURCE, "stochpool2d_eval_fwd_gpu" + cuda.suffix(x.dtype), *cuda.grid_1d(y.size), x, *args, y)
        return y, None
    arg = xp.empty(y_shape, dtype=argmax_dtype(geometry[:2]))
    sfx = cuda.suffix(x.dtype) + ("" if arg.dtype == np.int8 else "_i32")
    cuda.launch(SOURCE, "stochpool2d_train_fwd_gpu" + sfx, *cuda.grid_1d(y.size),
                x, xp.ascontiguousarray(u), *args, y, arg)
    return y, arg


def stochpool2d_bwd_gpu(x, gy, arg, geometry):
    """gx: routed to the drawn cells (arg given) or the eval rule's gradient (arg None)."""
    xp = backend.get_array_module(x)
    gy = xp.ascontiguousarray(gy)
    kh, kw, sh, sw, ph, pw = geometry
    if arg is not None:
        return ops.kernels("max_pool2d", gy).backward(gy, arg, x.shape, (kh, kw), (sh, sw), (ph, pw))
    sfx = cuda.suffix(x.dtype)
    args = _args(x.shape, gy.shape, geometry)
    stats = xp.empty(gy.shape + (3,), dtype=np.float64)      # per window: m, ca, cb
    cuda.launch(SOURCE, "stochpool2d_eval_win_gpu" + sfx, *cuda.grid_1d(gy.size), x, gy, *args, stats)
    gx = xp.empty(x.shape, dtype=x.dtype)
    cuda.launch(SOURCE, "stochpool2d_eval_gx_gpu" + sfx, *cuda.grid_1d(gx.size), x, stats, *args, gx)
    return gx


KERNELS = ops.Kernels(stochpool2d_fwd_gpu, stochpool2d_bwd_gpu)
