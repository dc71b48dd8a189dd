"""Process-wide settings that make the CPU kernels fast on few cores. Applied when ``minignn``
is imported; ``MINIGNN_NO_TUNING=1`` turns all of it off.

* ``OPENBLAS_THREAD_TIMEOUT=4``: after each matrix product OpenBLAS's worker threads keep
  spinning for a while (by default ~2^28 cycles) waiting for the next one. In a network, the next
  call is usually a Numba kernel whose threads then fight the spinning ones for the same cores,
  which on a machine with few cores slows the whole training step down markedly.
  OpenBLAS reads the variable when it is loaded, so it only takes effect when minignn is
  imported before NumPy (as the ``minignn`` command does); an existing value is kept.
* ``GOMP_SPINCOUNT=10000``: Numba's parallel loops run on GNU OpenMP, whose idle threads spin
  (by default for up to ~300,000 iterations) after each loop, and steal the cores from the
  matrix product that follows (such as the GEMM right after im2col). A short spin keeps
  back-to-back loops quick and frees the cores. Read when OpenMP is loaded (at the first parallel
  kernel), so setting it at import is in time.
* glibc's ``mallopt``: large arrays (activations, gradients) are served from the heap and kept
  there instead of being mapped and unmapped on every allocation, which costs a page fault per
  4 KiB page each time (mmap threshold 32 MiB, trim threshold 1 GiB). glibc caps the mmap
  threshold at 32 MiB, so arrays of 32 MiB and more (a (128, 64, 32, 32) float32 activation)
  were still mapped afresh on every call: ``M_MMAP_MAX = 0`` serves them from the heap too (so,
  e.g., the fresh 32 MiB gradient of a max-entropy pooling backward at that size no longer
  page-faults in, for slightly more peak memory). glibc still maps memory when the heap cannot
  grow. Only on Linux with glibc; elsewhere nothing happens.

The measured effect of each setting: ``benchmarks/results/kernel-history.md``.
"""
from __future__ import annotations

import ctypes
import os
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4

#: What was applied, for benchmarks to print.
applied: dict = {}


def tune() -> dict:
    if os.environ.get("MINIGNN_NO_TUNING"):
        return applied
    if "numpy" not in sys.modules:
        os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
    os.environ.setdefault("GOMP_SPINCOUNT", "10000")
    applied["GOMP_SPINCOUNT"] = os.environ["GOMP_SPINCOUNT"]
    applied["OPENBLAS_THREAD_TIMEOUT"] = os.environ.get("OPENBLAS_THREAD_TIMEOUT", "(numpy loaded first: default)")
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None)   # the process's own symbols: the C library it runs on
            ok = (libc.mallopt(_M_MMAP_THRESHOLD, 32 * 2**20) and libc.mallopt(_M_TRIM_THRESHOLD, 2**30)
                  and libc.mallopt(_M_MMAP_MAX, 0))
            applied["mallopt"] = bool(ok)
        except (OSError, AttributeError):  # not glibc
            applied["mallopt"] = False
    return applied
