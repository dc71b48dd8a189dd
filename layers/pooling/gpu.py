"""Max and average pooling on the GPU: the glue that launches ``kernels.cu`` (one thread per
output cell forwards, one per input cell backwards), written against ``xp`` and
:func:`minignn.cuda.launch` so that it runs unchanged on ``gpu`` and ``gpu-sim``. Same calling
convention as the CPU kernels of ``__init__.py`` (``_max_fwd_cpu`` and its siblings)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from minignn import backend, cuda, ops

from . import argmax_dtype

SOURCE = cuda.Source(Path(__file__).with_name("kernels.cu"))


def _geometry_args(x_shape, y_shape, k, s, p):
    N, C, H, W = x_shape
    return tuple(np.int32(v) for v in (N * C, H, W, y_shape[2], y_shape[3], *k, *s, *p))


def _arg_suffix(x_dtype, arg_dtype):
    return cuda.suffix(x_dtype) + ("" if np.dtype(arg_dtype) == np.int8 else "_i32")


def maxpool2d_fwd_gpu(x, k, s, p, y_shape):
    xp = backend.get_array_module(x)
    x = xp.ascontiguousarray(x)
    y = xp.empty(y_shape, dtype=x.dtype)
    arg = xp.empty(y_shape, dtype=argmax_dtype(k))
    cuda.launch(SOURCE, "maxpool2d_fwd_gpu" + _arg_suffix(x.dtype, arg.dtype), *cuda.grid_1d(y.size),
                x, *_geometry_args(x.shape, y_shape, k, s, p), y, arg)
    return y, arg


def maxpool2d_bwd_gpu(gy, arg, x_shape, k, s, p):
    xp = backend.get_array_module(gy)
    gy = xp.ascontiguousarray(gy)
    arg = xp.ascontiguousarray(arg).astype(argmax_dtype(k), copy=False)
    gx = xp.empty(x_shape, dtype=gy.dtype)
    cuda.launch(SOURCE, "maxpool2d_bwd_gpu" + _arg_suffix(gy.dtype, arg.dtype), *cuda.grid_1d(gx.size),
                gy, arg, *_geometry_args(x_shape, gy.shape, k, s, p), gx)
    return gx


def avgpool2d_fwd_gpu(x, k, s, p, y_shape):
    xp = backend.get_array_module(x)
    x = xp.ascontiguousarray(x)
    y = xp.empty(y_shape, dtype=x.dtype)
    cuda.launch(SOURCE, "avgpool2d_fwd_gpu" + cuda.suffix(x.dtype), *cuda.grid_1d(y.size),
                x, *_geometry_args(x.shape, y_shape, k, s, p), y)
    return y


def avgpool2d_bwd_gpu(gy, x_shape, k, s, p):
    xp = backend.get_array_module(gy)
    gy = xp.ascontiguousarray(gy)
    gx = xp.empty(x_shape, dtype=gy.dtype)
    cuda.launch(SOURCE, "avgpool2d_bwd_gpu" + cuda.suffix(gy.dtype), *cuda.grid_1d(gx.size),
                gy, *_geometry_args(x_shape, gy.shape, k, s, p), gx)
    return gx


MAX = ops.Kernels(maxpool2d_fwd_gpu, maxpool2d_bwd_gpu)
AVG = ops.Kernels(avgpool2d_fwd_gpu, avgpool2d_bwd_gpu)
