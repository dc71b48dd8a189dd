"""Mixed and gated pooling on the GPU: the glue that launches ``kernels.cu``, written against
``xp`` and :func:`minignn.cuda.launch` so that it runs unchanged on ``gpu`` and ``gpu-sim``. Same
calling convention as the CPU glue of ``__init__.py`` (``_forward_cpu``, ``_backward_cpu``)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from minignn import backend, cuda, ops

from ..pooling import argmax_dtype

SOURCE = cuda.Source(Path(__file__).with_name("kernels.cu"))


def _i32(*vals):
    return tuple(np.int32(v) for v in vals)


def _suffix(dtype, arg_dtype):
    return cuda.suffix(dtype) + ("" if np.dtype(arg_dtype) == np.int8 else "_i32")


def _geometry(x_shape, y_shape, geometry):
    N, C, H, W = x_shape
    return _i32(N * C, C, H, W, y_shape[2], y_shape[3], *geometry)


def forward_gpu(x, a2, omega, geometry, y_shape):
    xp = backend.get_array_module(x)
    gated = omega.shape[0] > 0
    y = xp.empty(y_shape, dtype=x.dtype)
    d = xp.empty(y_shape, dtype=x.dtype)
    g = xp.empty(y_shape if gated else (0, 0, 0, 0), dtype=x.dtype)
    arg = xp.empty(y_shape, dtype=argmax_dtype(geometry[:2]))
    cuda.launch(SOURCE, "mixpool2d_fwd_gpu" + _suffix(x.dtype, arg.dtype), *cuda.grid_1d(y.size),
                x, a2, *_i32(*a2.shape), omega, np.int32(omega.shape[0]), *_geometry(x.shape, y_shape, geometry),
                y, d, g, arg)
    return y, d, g, arg


def backward_gpu(gy, x, a2, omega, g, d, arg, geometry, x_shape):
    xp = backend.get_array_module(gy)
    gated = omega.shape[0] > 0
    gx = xp.empty(x_shape, dtype=gy.dtype)
    cuda.launch(SOURCE, "mixpool2d_bwd_gpu" + _suffix(gy.dtype, arg.dtype), *cuda.grid_1d(gx.size),
                gy, a2, *_i32(*a2.shape), omega, np.int32(omega.shape[0]), g, d, arg,
                *_geometry(x_shape, gy.shape, geometry), gx)
    NC, K = x_shape[0] * x_shape[1], geometry[0] * geometry[1]
    if not gated:       # a's gradient: the sum of gy (max - avg) over each plane
        t = gy.astype(np.float64) * d
        return gx, t.reshape(NC, gy.shape[2] * gy.shape[3]).sum(axis=1, keepdims=True)
    geo = _geometry(x_shape, gy.shape, geometry)
    gom = xp.empty((NC, K), dtype=np.float64)
    cuda.launch(SOURCE, "gatedpool2d_gomega_gpu" + cuda.suffix(gy.dtype), *cuda.grid_1d(gom.size),
                gy, x, g, d, geo[0], *geo[2:], gom)
    return gx, gom


KERNELS = ops.Kernels(forward_gpu, backward_gpu)
