"""Window geometry shared by convolution and every pooling: argument normalisation and output
sizes, with errors that name the argument."""
from __future__ import annotations

import numpy as np

from minignn._numba import njit


def pair(v, name: str, where: str = "", minimum: int = 1) -> tuple[int, int]:
    """``k`` or ``(kh, kw)`` -> ``(kh, kw)``, each an int >= ``minimum``."""
    pre = f"{where}: " if where else ""
    vals = tuple(v) if isinstance(v, (tuple, list)) else (v, v)
    if len(vals) != 2 or not all(isinstance(a, (int, np.integer)) and not isinstance(a, bool) and a >= minimum
                                 for a in vals):
        raise ValueError(f"{pre}{name}: expected an integer >= {minimum} or a pair of them, got {v!r}")
    return int(vals[0]), int(vals[1])


def out_size(size: int, k: int, s: int, p: int, axis: str = "H", where: str = "") -> int:
    """Number of windows along one axis: ``(size + 2p - k) // s + 1``; raises when the kernel is
    larger than the padded input."""
    pre = f"{where}: " if where else ""
    if size + 2 * p < k:
        raise ValueError(f"{pre}kernel_size: expected at most the padded input {axis} = {size} + 2*{p} = {size + 2 * p},"
                         f" got kernel {axis} size {k}")
    return (size + 2 * p - k) // s + 1


def check_pool_padding(k: tuple[int, int], p: tuple[int, int], where: str = ""):
    """Pooling padding must be smaller than the kernel (so every window holds a real cell)."""
    pre = f"{where}: " if where else ""
    if p[0] >= k[0] or p[1] >= k[1]:
        raise ValueError(f"{pre}padding: expected smaller than kernel_size {k} in each dimension, got {p}")


@njit
def valid_range(j, s, p, size, n_out):
    """The output indices ``o`` in ``[lo, hi)`` whose window offset ``j`` lands inside the input,
    ``0 <= o*s + j - p < size`` (for kernels: padding is clipped, never materialised)."""
    lo = 0
    if p - j > 0:
        lo = (p - j + s - 1) // s
    hi = (size - 1 + p - j) // s + 1 if size - 1 + p - j >= 0 else 0
    if hi > n_out:
        hi = n_out
    if lo > hi:
        lo = hi
    return lo, hi
