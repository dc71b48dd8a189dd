"""Numba kernels for the global statistics of GFGP (one read of x per statistic pass).

Every kernel works on ``x`` viewed as ``(P, HW)`` with ``P = N * C`` planes and runs ``prange``
over the planes: each iteration reads one plane and writes only its own outputs, so the
parallel loops never race. Sums accumulate in float64 scalars (four partial sums, which keeps
the loop fast without ``fastmath``); results are stored in the input's dtype.

With ``NUMBA_DISABLE_JIT=1`` the same code runs as plain Python.
"""
from __future__ import annotations

import math

import numpy as np

from minignn._numba import pjit, prange
from minignn.layers._reduce import sqdev_row, sum_row


# --- forward ----------------------------------------------------------------------------------
@pjit
def global_avg_fwd_cpu(x, avg):
    """avg[p] = mean(x[p, :]);  x (P, HW), avg (P,)."""
    n_planes, hw = x.shape
    x3 = x.reshape((1, n_planes, hw))
    for p in prange(n_planes):
        avg[p] = sum_row(x3, 0, p, hw) / hw


@pjit
def global_avgstd_fwd_cpu(x, eps, avg, std):
    """avg[p] = mean(x[p]), std[p] = sqrt(mean((x[p] - avg[p])**2) + eps) (two passes)."""
    n_planes, hw = x.shape
    x3 = x.reshape((1, n_planes, hw))
    for p in prange(n_planes):
        mu = sum_row(x3, 0, p, hw) / hw
        avg[p] = mu
        std[p] = math.sqrt(sqdev_row(x3, 0, p, hw, mu) / hw + eps)


@pjit
def global_max_fwd_cpu(x, mx, arg):
    """mx[p] = max(x[p]), arg[p] = its first (row-major) index; a NaN wins, as in NumPy."""
    n_planes, hw = x.shape
    for p in prange(n_planes):
        best = x[p, 0]
        k = 0
        if best == best:
            for i in range(1, hw):
                v = x[p, i]
                if v > best:
                    best = v
                    k = i
                elif v != v:
                    best = v
                    k = i
                    break
        mx[p] = best
        arg[p] = k


# --- backward ---------------------------------------------------------------------------------
@pjit
def global_avg_bwd_cpu(g, gx, accumulate):
    """gx[p, :] (+)= g[p] / HW."""
    n_planes, hw = gx.shape
    for p in prange(n_planes):
        v = g[p] / hw
        if accumulate:
            for i in range(hw):
                gx[p, i] += v
        else:
            for i in range(hw):
                gx[p, i] = v


@pjit
def global_avgstd_bwd_cpu(x, g_avg, g_std, avg, std, gx, accumulate):
    """gx[p, i] (+)= g_avg[p] / HW + g_std[p] * (x[p, i] - avg[p]) / (HW * std[p])."""
    n_planes, hw = x.shape
    for p in prange(n_planes):
        a = g_avg[p] / hw
        b = g_std[p] / (hw * std[p])
        mu = avg[p]
        if accumulate:
            for i in range(hw):
                gx[p, i] += a + b * (x[p, i] - mu)
        else:
            for i in range(hw):
                gx[p, i] = a + b * (x[p, i] - mu)


@pjit
def global_max_bwd_cpu(g, arg, gx, accumulate):
    """gx[p, arg[p]] (+)= g[p], zero elsewhere (unless accumulating)."""
    n_planes, hw = gx.shape
    for p in prange(n_planes):
        if not accumulate:
            for i in range(hw):
                gx[p, i] = 0.0
        gx[p, arg[p]] += g[p]


# --- host side: the CPU kernels of the gfgp_stats op (minignn.ops) ----------------------------
def global_stats_fwd_cpu(x, stat: str, eps: float):
    """t (N, kC) and the auxiliary arrays the backward needs, for a C-contiguous float x."""
    n, c, h, w = x.shape
    x2 = np.ascontiguousarray(x).reshape(n * c, h * w)
    if stat == "avg":
        avg = np.empty(n * c, dtype=x.dtype)
        global_avg_fwd_cpu(x2, avg)
        return avg.reshape(n, c), {}
    if stat == "avg+std":
        avg = np.empty(n * c, dtype=x.dtype)
        std = np.empty(n * c, dtype=x.dtype)
        global_avgstd_fwd_cpu(x2, float(eps), avg, std)
        t = np.concatenate([avg.reshape(n, c), std.reshape(n, c)], axis=1)
        return t, {"x2": x2, "avg": avg, "std": std}
    if stat == "max":
        mx = np.empty(n * c, dtype=x.dtype)
        arg = np.empty(n * c, dtype=np.int64)
        global_max_fwd_cpu(x2, mx, arg)
        return mx.reshape(n, c), {"arg": arg}
    raise ValueError(f"global_stats: stat: unknown {stat!r}")


def global_stats_bwd_cpu(gt, stat: str, shape, aux: dict, out=None):
    """gx (N, C, H, W) from gt (N, kC); added into ``out`` (C-contiguous) in place when given."""
    n, c, h, w = shape
    dtype = gt.dtype if out is None else out.dtype
    accumulate = out is not None
    gx = out if accumulate else np.empty(shape, dtype=dtype)
    gx2 = gx.reshape(n * c, h * w)
    gt = np.ascontiguousarray(gt, dtype=dtype)
    if stat == "avg":
        global_avg_bwd_cpu(gt.reshape(-1), gx2, accumulate)
    elif stat == "avg+std":
        global_avgstd_bwd_cpu(aux["x2"], np.ascontiguousarray(gt[:, :c]).reshape(-1),
                              np.ascontiguousarray(gt[:, c:]).reshape(-1), aux["avg"], aux["std"], gx2, accumulate)
    elif stat == "max":
        global_max_bwd_cpu(gt.reshape(-1), aux["arg"], gx2, accumulate)
    else:
        raise ValueError(f"global_stats: stat: unknown {stat!r}")
    return gx
