"""Input generators shared by the ops' ``sample`` functions (see :mod:`minignn.ops`).

A sampler gets a ``draw`` object with ``draw.int(lo, hi)`` (an int in [lo, hi]), ``draw.choice(seq)``,
``draw.bool()`` and ``draw.rng`` (a ``numpy.random.Generator`` for the values); the contract
tests back it with Hypothesis (``tests/helpers.py``: HypothesisDraw), so failures shrink to
small sizes. The shapes drawn here include an empty
and a single-image batch, and now and then enough ``N*C`` planes to cross the CPU kernels'
chunk boundaries (planes are split into parallel chunks of ``N*C // (4 * threads)``).
"""
from __future__ import annotations

import numpy as np


def any_shape(draw, max_rank: int = 5, max_size: int = 5) -> tuple:
    """Any rank from 1 to ``max_rank``, sizes up to ``max_size``; the first axis may be empty."""
    return tuple(draw.int(0 if i == 0 else 1, max_size) for i in range(draw.int(1, max_rank)))


def batch(draw, min_n: int = 0, max_n: int = 3) -> int:
    """N: 0 (an empty batch) and 1 included."""
    return draw.int(min_n, max_n)


def planes(draw, min_n: int = 0, max_n: int = 3, max_c: int = 3) -> tuple[int, int]:
    """(N, C): small, or one draw in four between 17 and 48 planes (several parallel chunks with
    a ragged last one)."""
    if draw.int(0, 3) == 0:
        n = max(1, min_n)
        c = draw.int(17, 48)
        if draw.bool() and c % 2 == 0:
            n, c = 2, c // 2
        return max(n, min_n), c
    return draw.int(min_n, max_n), draw.int(1, max_c)


def window(draw, max_k: int = 4, max_s: int = 4, fast: int = 4):
    """A pooling window ``(kernel, stride, padding)`` with padding < kernel; one draw in ``fast``
    is the 2x2 / stride 2 / no padding fast path."""
    if draw.int(1, fast) == 1:
        return (2, 2), (2, 2), (0, 0)
    k = (draw.int(1, max_k), draw.int(1, max_k))
    s = (draw.int(1, max_s), draw.int(1, max_s))
    p = (draw.int(0, k[0] - 1), draw.int(0, k[1] - 1))
    return k, s, p


def spatial(draw, k, p, extra: int = 6) -> tuple[int, int]:
    """(H, W) for which window ``k`` with padding ``p`` fits: odd, non-square, not tiling."""
    h = draw.int(max(1, k[0] - 2 * p[0]), k[0] + extra)
    w = draw.int(max(1, k[1] - 2 * p[1]), k[1] + extra)
    return h, w


def values(draw, shape, dtype, scale: float = 1.0):
    """Standard normal values times ``scale`` in ``dtype``."""
    return (draw.rng.standard_normal(shape) * scale).astype(dtype)


def distinct(draw, shape, dtype, gap: float = 1e-2):
    """Values that are all distinct, ``gap`` apart and none within ``gap / 4`` of zero (no ties
    and no kinks: a max or a ReLU is differentiable there), shuffled."""
    n = int(np.prod(shape))
    v = (np.arange(n) - (n - 1) / 2 + 0.25) * gap
    draw.rng.shuffle(v)
    return v.reshape(shape).astype(dtype)
