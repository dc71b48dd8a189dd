"""Gaussian-based pooling on the GPU: the glue that launches ``kernels.cu``, written against ``xp``
and :func:`minignn.cuda.launch` so that it runs unchanged on ``gpu`` and ``gpu-sim``. Same calling
convention as the CPU kernels of ``__init__.py`` (``_forward_cpu``, ``_backward_cpu``).

Forward: one thread per output window (its mean, its floored standard deviation, y). Backward:
one thread per input cell gathering its gradient over the windows that hold it, from the
forward's per-window mu and sigma; ``geta = gy sigma`` is one elementwise xp product (float64,
cast to x's dtype).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from minignn import backend, cuda, ops

from .cpu import SIGMA_MIN

SOURCE = cuda.Source(Path(__file__).with_name("kernels.cu"))


def _args(x_shape, y_shape, geometry):
    """(N*C, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw) as int32, then sigma_min as float64."""
    N, C, H, W = x_shape
    return tuple(np.int32(v) for v in (N * C, H, W, *y_shape[2:], *geometry)) + (np.float64(SIGMA_MIN),)


def gausspool2d_fwd_gpu(x, eta, geometry, y_shape):
    """(y in x's dtype, mu and sigma float64), each (N, C, Ho, Wo)."""
    xp = backend.get_array_module(x)
    x, eta = xp.ascontiguousarray(x), xp.ascontiguousarray(eta)
    y = xp.empty(y_shape, dtype=x.dtype)
    mu = xp.empty(y_shape, dtype=np.float64)
    sigma = xp.empty(y_shape, dtype=np.float64)
    cuda.launch(SOURCE, "gausspool2d_fwd_gpu" + cuda.suffix(x.dtype), *cuda.grid_1d(y.size),
                x, eta, *_args(x.shape, y_shape, geometry), y, mu, sigma)
    return y, mu, sigma


def gausspool2d_bwd_gpu(x, eta, gy, mu, sigma, geometry):
    """(gx (N, C, H, W), geta (N, C, Ho, Wo)), both in x's dtype."""
    xp = backend.get_array_module(x)
    x, eta, gy = (xp.ascontiguousarray(a) for a in (x, eta, gy))
    gx = xp.empty(x.shape, dtype=x.dtype)
    cuda.launch(SOURCE, "gausspool2d_bwd_gx_gpu" + cuda.suffix(x.dtype), *cuda.grid_1d(gx.size),
                x, eta, gy, mu, sigma, *_args(x.shape, gy.shape, geometry), gx)
    geta = (gy.astype(np.float64) * sigma).astype(x.dtype)
    return gx, geta


KERNELS = ops.Kernels(gausspool2d_fwd_gpu, gausspool2d_bwd_gpu)
