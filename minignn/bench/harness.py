"""Timing helpers for the benchmarks: medians of repeats, the measured copy bandwidth (the
memory-traffic floor's denominator), the measured GEMM rate, and a plain-text table.

Benchmarks print tables; nothing here asserts a time. The machines are shared and noisy, so every
figure is a median of repeats and every comparison is a ratio measured in the same run.
"""
from __future__ import annotations

import time
from typing import Callable, Sequence

import numpy as np


def median_time(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` in seconds over ``repeats`` calls, after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


_BW_CACHE: dict = {}


def copy_bandwidth(nbytes: int = 256 * 2**20, repeats: int = 7) -> float:
    """Measured memory bandwidth in bytes/s of a large ``np.copyto``, counting bytes read plus
    bytes written (so 'bytes that must move' divided by it is the memory-traffic floor)."""
    if nbytes in _BW_CACHE:
        return _BW_CACHE[nbytes]
    src = np.ones(nbytes // 4, dtype=np.float32)
    dst = np.empty_like(src)
    t = median_time(lambda: np.copyto(dst, src), repeats=repeats, warmup=2)
    _BW_CACHE[nbytes] = 2.0 * src.nbytes / t
    return _BW_CACHE[nbytes]


def gemm_rate(n: int = 1024, repeats: int = 5) -> float:
    """Measured float32 matrix-product rate in FLOP/s (numpy.matmul, n x n x n)."""
    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    b = a.copy()
    t = median_time(lambda: a @ b, repeats=repeats, warmup=1)
    return 2.0 * n ** 3 / t


def torch_or_none(threads: int | None = None):
    """The torch module set to ``threads`` threads (default: as many as numba uses), or None."""
    try:
        import torch
    except ImportError:
        return None
    import numba
    torch.set_num_threads(threads or numba.config.NUMBA_NUM_THREADS)
    return torch


def fmt(v, digits: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    return f"{v:.{digits}f}"


def print_table(headers: Sequence[str], rows: Sequence[Sequence], title: str | None = None) -> str:
    """Print (and return) an aligned text table; None cells print as '-'."""
    cells = [[str(h) for h in headers]] + [[fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    if title:
        lines.append(title)
    lines.append("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells[0], widths))))
    lines.append("  ".join("-" * w for w in widths))
    for r in cells[1:]:
        lines.append("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))))
    out = "\n".join(lines)
    print(out, flush=True)
    return out
