r"""The window template: the geometry of a pooling (or convolution) window, written once.

Python side, for the functionals and layers: :func:`pair`, :func:`out_size`,
:func:`check_pool_padding`, and :class:`Window`, a validated pooling window with its output size.

Kernel side, for every Numba plane loop (and mirrored one to one by the CUDA header of the GPU
kernels: plain integer arithmetic, no allocation, no branches but the clamps). For a window
``kernel (kh, kw)``, ``stride (sh, sw)``, ``padding (ph, pw)`` with ``padding < kernel``:

* output ``(oh, ow)`` covers input rows ``oh*sh - ph + di`` (``di in [0, kh)``) and columns
  ``ow*sw - pw + dj``; its *real* cells are the offsets :func:`real_offsets` returns (padding is
  never materialised, and every window holds at least one real cell);
* offset ``(di, dj)`` is real for the outputs in :func:`valid_range` (the loop order of kernels
  that go offset by offset);
* :func:`is_2x2`: 2x2, stride 2, no padding, the fast path every kernel special-cases;
* :func:`param_plane` / :func:`param_steps`: the broadcast layout of a per-window parameter
  (lam of shape (Nl, Cl, Hl, Wl), rho of shape (Nr, Cr, K), each leading dimension 1 or full):
  the (n, c) entry a plane reads, and whether it steps per output row and column;
* :func:`gather_plane`: a plane's windows as (K, P) scratch, K = kh*kw offsets (row-major) by
  P = Ho*Wo windows: ``x0[p]`` the window's first real cell, ``xs[q, p] = X_q`` (0 at padded
  cells), and ``lz[q, p]`` 0 at real cells and -inf at padded ones: a log-weight mask, so a
  pooling that forms its weights as ``exp(logit)`` adds its logits to ``lz`` and padded cells
  drop out by themselves. Max-entropy pooling's logit ``lam X_q + rho_q`` is one such instance
  (``layers/maxent/cpu.py``, which then shifts each window by its largest-logit cell); a per-cell
  logit map (LIP) or sampled weights (stochastic pooling) are others, on the same scratch and the
  same plane loop.
"""
from __future__ import annotations

from dataclasses import dataclass

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


@dataclass(frozen=True)
class Window:
    """A validated pooling window: ``kernel``, ``stride`` and ``padding`` as (h, w) pairs, with
    ``padding < kernel`` (every window holds a real cell)."""
    kernel: tuple
    stride: tuple
    padding: tuple

    @classmethod
    def of(cls, kernel_size, stride=None, padding=0, where: str = "") -> "Window":
        """From the user's arguments (ints or pairs; ``stride=None`` means the kernel size);
        errors name the argument."""
        k = pair(kernel_size, "kernel_size", where)
        s = k if stride is None else pair(stride, "stride", where)
        p = pair(padding, "padding", where, minimum=0)
        check_pool_padding(k, p, where)
        return cls(k, s, p)

    @property
    def flat(self) -> tuple:
        """``(kh, kw, sh, sw, ph, pw)``, the kernels' argument order."""
        return self.kernel + self.stride + self.padding

    def out_hw(self, h: int, w: int, where: str = "") -> tuple[int, int]:
        """(Ho, Wo) for an (H, W) input; raises when the kernel exceeds the padded input."""
        return (out_size(h, self.kernel[0], self.stride[0], self.padding[0], "H", where),
                out_size(w, self.kernel[1], self.stride[1], self.padding[1], "W", where))

    def out_shape(self, x_shape, where: str = "") -> tuple:
        """(N, C, Ho, Wo) for an (N, C, H, W) input."""
        n, c, h, w = x_shape
        return (n, c) + self.out_hw(h, w, where)


# ------------------------------------------------------------------------- kernel-side geometry
@njit(inline="always")
def is_2x2(kh, kw, sh, sw, ph, pw):
    """The fast path: 2x2 windows, stride 2, no padding."""
    return kh == 2 and kw == 2 and sh == 2 and sw == 2 and ph == 0 and pw == 0


@njit(inline="always")
def real_offsets(start, k, size):
    """The offsets ``[d0, d1)`` of a window starting at ``start`` (``oh*sh - ph``) whose cells
    ``start + d`` lie inside ``[0, size)``."""
    d0 = 0
    if start < 0:
        d0 = -start
    d1 = k
    if start + k > size:
        d1 = size - start
    return d0, d1


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


@njit(inline="always")
def param_plane(a, n, c):
    """The (n, c) entry plane (n, c) reads of a broadcast parameter ``a`` (N or 1, C or 1, ...)."""
    return (n if a.shape[0] > 1 else 0), (c if a.shape[1] > 1 else 0)


@njit(inline="always")
def param_steps(a4):
    """(1, 1) when a 4-D parameter holds one value per output position (Hl, Wl) = (Ho, Wo), (0, 0)
    for one value per plane (Hl, Wl) = (1, 1): index ``a4[nl, cl, ho * hs, wo * ws]``."""
    return (1 if a4.shape[2] > 1 else 0), (1 if a4.shape[3] > 1 else 0)


@njit
def gather_plane(x, n, c, kh, kw, sh, sw, ph, pw, Ho, Wo, x0, xs, lz):
    """Plane (n, c)'s windows as (K, P) scratch (see the module docstring): x0 (P,) the first real
    cell of each window, xs (K, P) the values ``X_q`` (0 at padded cells), lz (K, P) 0 at real
    cells and -inf at padded ones."""
    H = x.shape[2]
    W = x.shape[3]
    for ho in range(Ho):
        r0 = ho * sh - ph
        r0 = r0 if r0 > 0 else 0
        for wo in range(Wo):
            c0 = wo * sw - pw
            x0[ho * Wo + wo] = x[n, c, r0, c0 if c0 > 0 else 0]   # real: padding < kernel
    for q in range(kh * kw):
        i = q // kw
        j = q - i * kw
        lo, hi = valid_range(j, sw, pw, W, Wo)
        for ho in range(Ho):
            r = ho * sh + i - ph
            base = ho * Wo
            if r < 0 or r >= H:
                lo_r, hi_r = Wo, Wo
            else:
                lo_r, hi_r = lo, hi
            for wo in range(lo_r):
                xs[q, base + wo] = 0
                lz[q, base + wo] = -np.inf
            for wo in range(lo_r, hi_r):
                xs[q, base + wo] = x[n, c, r, wo * sw + j - pw]
                lz[q, base + wo] = 0
            for wo in range(hi_r, Wo):
                xs[q, base + wo] = 0
                lz[q, base + wo] = -np.inf
