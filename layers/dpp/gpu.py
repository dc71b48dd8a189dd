"""Detail-preserving pooling on the GPU: the glue that launches ``kernels.cu``, written against
``xp`` and :func:`minignn.cuda.launch` so that it runs unchanged on ``gpu`` and ``gpu-sim``. Same
calling convention as the CPU kernels of ``__init__.py`` (``_forward_cpu``, ``_backward_cpu``).

Forward: one thread per output window. Backward: one thread per window, writing its own cells'
gradient (the windows do not overlap) and the trailing zeros it owns, and its gy dy/dgamma and
gy dy/dalpha terms in float64, summed here over each plane's positions with an xp reduction
into the (N, C) per-plane sums that :func:`~minignn.layers.dpp.dpp_pool2d_backward` reduces to
each parameter's form. 2x2 windows take the register-only entry points.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from minignn import backend, cuda, ops

SOURCE = cuda.Source(Path(__file__).with_name("kernels.cu"))


def _args(x_shape, y_shape, k, asym):
    """(N*C, H, W, Ho, Wo[, k], asym) as int32; k is left out for the 2x2 entry points."""
    N, C, H, W = x_shape
    dims = (N * C, H, W, *y_shape[2:]) + (() if k == 2 else (k,)) + (asym,)
    return tuple(np.int32(v) for v in dims)


def _name(stem, k, dtype):
    return f"dpp_pool2d_{stem}{'_2x2' if k == 2 else ''}_gpu{cuda.suffix(dtype)}"


def dpp_pool2d_fwd_gpu(x, gamma, alpha, k, asym, y_shape):
    xp = backend.get_array_module(x)
    x, gamma, alpha = (xp.ascontiguousarray(a) for a in (x, gamma, alpha))
    y = xp.empty(y_shape, dtype=x.dtype)
    cuda.launch(SOURCE, _name("fwd", k, x.dtype), *cuda.grid_1d(y.size), x, gamma, alpha,
                *_args(x.shape, y_shape, k, asym), y)
    return y


def dpp_pool2d_bwd_gpu(x, gamma, alpha, gy, k, asym):
    """(gx (N, C, H, W) in x's dtype, per-plane sums of gy dy/dgamma and gy dy/dalpha (N, C) float64)."""
    xp = backend.get_array_module(x)
    x, gamma, alpha, gy = (xp.ascontiguousarray(a) for a in (x, gamma, alpha, gy))
    gx = xp.empty(x.shape, dtype=x.dtype)
    dgw = xp.empty(gy.shape, dtype=np.float64)
    daw = xp.empty(gy.shape, dtype=np.float64)
    cuda.launch(SOURCE, _name("bwd", k, x.dtype), *cuda.grid_1d(gy.size), x, gamma, alpha, gy,
                *_args(x.shape, gy.shape, k, asym), gx, dgw, daw)
    return gx, dgw.sum(axis=(2, 3)), daw.sum(axis=(2, 3))


KERNELS = ops.Kernels(dpp_pool2d_fwd_gpu, dpp_pool2d_bwd_gpu)
