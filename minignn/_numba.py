"""Shared Numba settings for every CPU kernel: ``from minignn._numba import njit, prange``.

``njit`` here is ``numba.njit(cache=True, nogil=True)`` with ``fastmath`` off (kernels must see
NaN and inf), and ``pjit`` adds ``parallel=True`` for kernels whose ``prange`` iterations write
disjoint outputs. With ``NUMBA_DISABLE_JIT=1`` both run as plain Python.
"""
import numba
from numba import prange  # noqa: F401


def njit(*args, **kw):
    kw.setdefault("cache", True)
    kw.setdefault("nogil", True)
    return numba.njit(*args, **kw)


def pjit(*args, **kw):
    kw.setdefault("parallel", True)
    return njit(*args, **kw)
