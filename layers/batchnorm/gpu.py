"""Batch normalisation on the GPU: the glue that launches ``kernels.cu``, written against ``xp`` and
:func:`minignn.cuda.launch` so that it runs unchanged on ``gpu`` and ``gpu-sim``. Same calling
convention and numerics as ``_fwd_cpu`` and ``_bwd_cpu`` of ``__init__.py``: per-channel
statistics in float64, a two-pass variance, elementwise passes in float64 rounded once.

Each per-channel sum is a kernel pass with one thread per (image, channel) row, writing a
partial, and an xp sum of the partials over the images."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from minignn import backend, cuda, ops

SOURCE = cuda.Source(Path(__file__).with_name("kernels.cu"))


def _row_sums(x, shift, power):
    """sum over (n, l) of (x[n, c, l] - shift[c]) ** power, per channel, float64 (C,)."""
    xp = backend.get_array_module(x)
    n, c, length = x.shape
    partial = xp.empty((n, c), dtype=np.float64)
    cuda.launch(SOURCE, "batchnorm2d_row_sums_gpu" + cuda.suffix(x.dtype), *cuda.grid_1d(n * c),
                x, shift, np.int32(n), np.int32(c), np.int32(length), np.int32(power), partial)
    return partial.sum(axis=0)


def _affine(u, x, m, a, b, k):
    xp = backend.get_array_module(x)
    n, c, length = x.shape
    out = xp.empty(x.shape, dtype=x.dtype)
    cuda.launch(SOURCE, "batchnorm2d_affine_gpu" + cuda.suffix(x.dtype), *cuda.grid_1d(out.size),
                u, x, m, a, b, k, np.int32(n), np.int32(c), np.int32(length), out)
    return out


def batchnorm2d_fwd_gpu(x, gamma, beta, mean, var, eps, training):
    """(y, mean, var, invstd): the batch statistics in training mode, else the given ones."""
    xp = backend.get_array_module(x)
    n, c, h, w = x.shape
    x3 = xp.ascontiguousarray(x).reshape(n, c, h * w)
    count = n * h * w
    if training:
        mean64 = _row_sums(x3, xp.zeros(c, dtype=np.float64), 1) / count
        var64 = _row_sums(x3, mean64, 2) / count
    else:
        mean64, var64 = xp.array(mean, dtype=np.float64), xp.array(var, dtype=np.float64)
    invstd = 1.0 / xp.sqrt(var64 + float(eps))
    scale = invstd * gamma.astype(np.float64)
    y = _affine(x3, x3, mean64, xp.zeros(c, dtype=np.float64), scale, beta.astype(np.float64))
    return y.reshape(x.shape), mean64, var64, invstd


def batchnorm2d_bwd_gpu(gy, x, gamma, mean, invstd, training):
    """(gx, ggamma, gbeta), the per-channel sums in float64."""
    xp = backend.get_array_module(x)
    n, c, h, w = x.shape
    x3 = xp.ascontiguousarray(x).reshape(n, c, h * w)
    gy3 = xp.ascontiguousarray(gy).reshape(n, c, h * w)
    count = n * h * w
    mean, invstd = xp.asarray(mean, dtype=np.float64), xp.asarray(invstd, dtype=np.float64)
    pg, pgx = xp.empty((n, c), dtype=np.float64), xp.empty((n, c), dtype=np.float64)
    cuda.launch(SOURCE, "batchnorm2d_grad_sums_gpu" + cuda.suffix(x.dtype), *cuda.grid_1d(n * c),
                gy3, x3, mean, np.int32(n), np.int32(c), np.int32(h * w), pg, pgx)
    sg, sgx = pg.sum(axis=0), pgx.sum(axis=0)
    a = gamma.astype(np.float64) * invstd
    if training:
        b, k = -a * invstd * invstd * sgx / count, -a * sg / count
    else:
        b = k = xp.zeros(c, dtype=np.float64)
    gx = _affine(gy3, x3, mean, a, b, k)
    return gx.reshape(x.shape), sgx * invstd, sg


KERNELS = ops.Kernels(batchnorm2d_fwd_gpu, batchnorm2d_bwd_gpu)
