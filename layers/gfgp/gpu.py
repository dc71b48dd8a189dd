"""The global statistics of GFGP on the GPU: the glue that launches ``kernels.cu``, written against
``xp`` and :func:`minignn.cuda.launch` so that it runs unchanged on ``gpu`` and ``gpu-sim``. Same
calling convention, auxiliary arrays and numerics as ``global_stats_fwd_cpu`` and
``global_stats_bwd_cpu`` of ``cpu.py`` (one thread per plane forwards, one per cell backwards).
The GFGP mapping itself (two small GEMMs and elementwise functions) is ``xp`` code shared by all
devices."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from minignn import backend, cuda, ops

SOURCE = cuda.Source(Path(__file__).with_name("kernels.cu"))


def global_stats_fwd_gpu(x, stat: str, eps: float):
    """t (N, kC) and the auxiliary arrays the backward needs."""
    xp = backend.get_array_module(x)
    n, c, h, w = x.shape
    x2 = xp.ascontiguousarray(x).reshape(n * c, h * w)
    sfx, dims = cuda.suffix(x.dtype), (np.int32(n * c), np.int32(h * w))
    grid = cuda.grid_1d(n * c)
    if stat == "avg":
        avg = xp.empty(n * c, dtype=x.dtype)
        cuda.launch(SOURCE, "gfgp_global_avg_fwd_gpu" + sfx, *grid, x2, *dims, avg)
        return avg.reshape(n, c), {}
    if stat == "avg+std":
        avg, std = xp.empty(n * c, dtype=x.dtype), xp.empty(n * c, dtype=x.dtype)
        cuda.launch(SOURCE, "gfgp_global_avgstd_fwd_gpu" + sfx, *grid, x2, *dims, np.float64(eps), avg, std)
        t = xp.concatenate([avg.reshape(n, c), std.reshape(n, c)], axis=1)
        return t, {"x2": x2, "avg": avg, "std": std}
    if stat == "max":
        mx, arg = xp.empty(n * c, dtype=x.dtype), xp.empty(n * c, dtype=np.int64)
        cuda.launch(SOURCE, "gfgp_global_max_fwd_gpu" + sfx, *grid, x2, *dims, mx, arg)
        return mx.reshape(n, c), {"arg": arg}
    raise ValueError(f"global_stats: stat: unknown {stat!r}")


def global_stats_bwd_gpu(gt, stat: str, shape, aux: dict, out=None):
    """gx (N, C, H, W) from gt (N, kC); added into ``out`` (C-contiguous) in place when given."""
    xp = backend.get_array_module(gt)
    n, c, h, w = shape
    dtype = gt.dtype if out is None else out.dtype
    accumulate = out is not None
    gx = out if accumulate else xp.empty(shape, dtype=dtype)
    gt = xp.ascontiguousarray(gt, dtype=dtype)
    sfx, grid = cuda.suffix(dtype), cuda.grid_1d(gx.size)
    dims = (np.int32(n * c), np.int32(h * w), np.int32(1 if accumulate else 0))
    if stat == "avg":
        cuda.launch(SOURCE, "gfgp_global_avg_bwd_gpu" + sfx, *grid, gt.reshape(-1), *dims, gx)
    elif stat == "avg+std":
        g_avg = xp.ascontiguousarray(gt[:, :c]).reshape(-1)
        g_std = xp.ascontiguousarray(gt[:, c:]).reshape(-1)
        cuda.launch(SOURCE, "gfgp_global_avgstd_bwd_gpu" + sfx, *grid,
                    aux["x2"], g_avg, g_std, aux["avg"], aux["std"], *dims, gx)
    elif stat == "max":
        cuda.launch(SOURCE, "gfgp_global_max_bwd_gpu" + sfx, *grid, gt.reshape(-1), aux["arg"], *dims, gx)
    else:
        raise ValueError(f"global_stats: stat: unknown {stat!r}")
    return gx


KERNELS = ops.Kernels(global_stats_fwd_gpu, global_stats_bwd_gpu)
