"""Timing helpers for the benchmarks: medians of repeats, the measured copy bandwidth (the
memory-traffic floor's denominator), the measured GEMM rate, the time of one vectorised exp or
log per cell (the compute floor of the poolings that take them), and a plain-text table.

Benchmarks print tables; nothing here asserts a time. The machines are shared and noisy, so every
figure is a median of repeats and every comparison is a ratio measured in the same run.

A measurement that was not taken (PyTorch absent, a case with no floor) is ``None`` all the way
through: :func:`ratio` and :func:`ms` pass it on and :func:`print_table` prints it as '-'.
"""
from __future__ import annotations

import time
from typing import Callable, Sequence

import numpy as np

from minignn._fastmath import exp, log
from minignn._numba import pjit, prange


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

#: the copy-bandwidth and GEMM measurements of tiny mode (``--tiny``): small and one repeat each
TINY_BANDWIDTH = {"nbytes": 8 * 2**20, "repeats": 1}
TINY_GEMM = {"n": 128, "repeats": 1}


def copy_bandwidth(nbytes: int = 256 * 2**20, repeats: int = 7) -> float:
    """Measured memory bandwidth in bytes/s of a large ``np.copyto``, counting bytes read plus
    bytes written (so 'bytes that must move' divided by it is the memory-traffic floor).

    Cached per ``(nbytes, repeats)`` for the process, so every benchmark of one run divides by the
    same figure."""
    key = (int(nbytes), int(repeats))
    if key in _BW_CACHE:
        return _BW_CACHE[key]
    src = np.ones(nbytes // 4, dtype=np.float32)
    dst = np.empty_like(src)
    t = median_time(lambda: np.copyto(dst, src), repeats=repeats, warmup=2)
    _BW_CACHE[key] = 2.0 * src.nbytes / t
    return _BW_CACHE[key]


def bandwidth(tiny: bool = False) -> float:
    """:func:`copy_bandwidth` at its default size, or at the small size of tiny mode."""
    return copy_bandwidth(**TINY_BANDWIDTH) if tiny else copy_bandwidth()


def gemm_rate(n: int = 1024, repeats: int = 5) -> float:
    """Measured float32 matrix-product rate in FLOP/s (numpy.matmul, n x n x n)."""
    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    b = a.copy()
    t = median_time(lambda: a @ b, repeats=repeats, warmup=1)
    return 2.0 * n ** 3 / t


@pjit
def _exp_pass(flat, res):
    for i in prange(flat.shape[0]):
        res[i] = exp(-np.float64(flat[i]))


@pjit
def _log_pass(flat, res):
    for i in prange(flat.shape[0]):
        res[i] = log(np.float64(flat[i]))


def transcendental_pass(x, which: str, repeats: int = 5) -> float:
    """Seconds for one float64 ``exp`` (``which="exp"``) or ``log`` of every cell of ``x``, from
    :mod:`minignn._fastmath` in a parallel loop that LLVM vectorises, written to an array of x's
    dtype: a compute floor for the kernels that take one or more of them per cell (they are
    compute-bound, not memory-bound, where this is well above their memory-traffic floor)."""
    kernel = {"exp": _exp_pass, "log": _log_pass}[which]
    flat = np.ascontiguousarray(x).reshape(-1)
    res = np.empty_like(flat)
    kernel(flat, res)
    return median_time(lambda: kernel(flat, res), repeats=repeats)


def torch_or_none(threads: int | None = None):
    """The torch module set to ``threads`` threads (default: as many as numba uses), or None."""
    try:
        import torch
    except ImportError:
        return None
    import numba
    torch.set_num_threads(threads or numba.config.NUMBA_NUM_THREADS)
    return torch


def ratio(t, ref):
    """``t / ref``, or None when either was not measured (None)."""
    return None if t is None or ref is None else t / ref


def ms(t):
    """Seconds to milliseconds, passing None (not measured) on."""
    return None if t is None else t * 1e3


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
