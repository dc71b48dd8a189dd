r"""Stochastic poolings: stochastic pooling (Zeiler & Fergus, 2013) and S3 pooling (Zhai et al.,
2017), the forward/backward pairs; the layers are in ``layer.py``.

**Stochastic pooling** pools non-negative activations a (e.g. ReLU outputs). For a window R of
real cells (padded cells excluded, as in every pooling of minignn)::

    train   p_q = a_q / sum_R a;  draw one cell k of the window with probability p_k;  y = a_k
            dy/da_k = 1, 0 at the other cells (the draw held fixed)
    eval    y = sum_R p_q a_q = sum_R a^2 / sum_R a
            dy/da_q = (2 a_q - y) / sum_R a

The draw is made from one uniform number u in [0, 1) per window, passed in (so the same u gives
the same draw on every device, and a gradient check can hold it fixed): k is the first cell, in
row-major window order, with a_k > 0 whose running sum of p passes u. An all-zero window
(sum a = 0) gives y = 0 in both modes; in training its cell is then the floor(u |R|)-th of its
real cells and in eval its gradient is 1/|R| per cell: both the limit of a window of equal
cells, whose p is uniform. (The sums are of a / max_R a, in float64, so nothing overflows.) A
window holding a NaN gives NaN (training picks the first NaN, as max pooling), one holding +inf
gives +inf; their eval gradients are NaN. The drawn offsets are stored in max pooling's argmax
format, and the training backward *is* max pooling's backward kernel on them.

Inputs: x (N, C, H, W), float32 or float64, every value >= 0 (a ValueError naming x and its
minimum otherwise: one ``x.min()`` reduction); u None (eval) or a float64 array of the output's
shape (N, C, Ho, Wo) on x's device with every value in [0, 1) (training). The layer draws u from
the library generator (:func:`minignn.init.get_rng`, unless it is given its own), whose state the
trainer saves in every checkpoint, so a resumed run draws the same windows as an unbroken one.

**S3 pooling** (stochastic spatial sampling) first max-pools with a 2x2 window at stride 1 (the
window at row i covers rows i and i + 1, clipped at the border, so the map keeps its size
H x W), then halves each spatial axis::

    train   rows: split 0..H-1 into blocks of g rows (the last one may be shorter); from a block
            of b rows keep b // 2, drawn without replacement and sorted; the same for columns;
            y = m[rows][:, cols], the same rows and columns for the whole batch and every channel
    eval    y = 2x2 average pooling (stride 2) of the stride-1 max-pooled map m

Both modes give (N, C, H // 2, W // 2); g (the ``grid``) must be even, so that every full block
gives exactly half its rows. Eval computes m whole and average-pools it; its backward goes back
through the average, then the stride-1 max pooling. Training computes only the kept cells of m,
output (i, j) the 2x2 max of input rows (rows[i], rows[i] + 1) and columns (cols[j], cols[j] + 1)
(the second clipped at the border), and routes gy back to that max (summed where kept rows or
columns share a cell). On the CPU a Numba kernel pair reads those cells in place; on the GPU
the two rows under each kept row and the two columns under each kept column are gathered
(``xp.take``, an array of x's size), max-pooled 2x2 at stride 2 by max pooling's kernels, and
scattered back. Eval runs on max and average pooling's kernels on both.

The CPU kernels of stochastic pooling are in ``cpu.py`` (Numba), the CUDA ones in
``kernels.cu`` (glue in ``gpu.py``; also run by ``gpu-sim``), the NumPy oracles in
``reference.py``. The forwards keep a reference to x (not a copy): do not modify x in place
between forward and backward.
"""
from __future__ import annotations

import numpy as np

from minignn import backend, cases, ops
from minignn.checks import check_array, check_backward, check_grad_output, check_nonnegative
from minignn.layers.pooling import (argmax_dtype, avg_pool2d_backward, avg_pool2d_forward, max_pool2d_backward,
                                    max_pool2d_forward)

from .._window import Window
from . import cpu as _cpu
from . import reference as _ref

__all__ = ["stochastic_pool2d_forward", "stochastic_pool2d_backward", "StochasticSaved",
           "s3_pool2d_forward", "s3_pool2d_backward", "s3_draw", "S3Saved"]


# ---------------------------------------------------------------------------------- stochastic
class StochasticSaved:
    """What :func:`stochastic_pool2d_backward` needs from the forward (treat as opaque).

    Attributes: ``x`` the (C-contiguous) input; ``arg`` the drawn offsets (training) or None
    (eval); ``geometry`` (kh, kw, sh, sw, ph, pw); ``y_shape``.
    """

    __slots__ = ("x", "arg", "geometry", "y_shape")

    def __init__(self, x, arg, geometry, y_shape):
        self.x, self.arg, self.geometry, self.y_shape = x, arg, geometry, y_shape

    def __repr__(self):
        mode = "eval" if self.arg is None else "train"
        return f"StochasticSaved(x{tuple(self.x.shape)}, {mode}, geometry={self.geometry}, y{self.y_shape})"


def _check_draws(u, x, y_shape, where):
    if not hasattr(u, "shape") or not hasattr(u, "dtype"):
        raise TypeError(f"{where}: u: expected None (eval) or a float64 array of the output's shape {y_shape},"
                        f" got {type(u).__name__}")
    if np.dtype(u.dtype) != np.float64:
        raise TypeError(f"{where}: u: expected dtype float64 (uniform draws in [0, 1)), got {u.dtype}")
    if tuple(u.shape) != tuple(y_shape):
        raise ValueError(f"{where}: u: expected the output's shape {tuple(y_shape)}, got {tuple(u.shape)}")
    if backend.is_gpu_array(u) != backend.is_gpu_array(x):
        raise TypeError(f"{where}: u: expected an array on the same device as x ({backend.device_of(x)}),"
                        f" got one on {backend.device_of(u)}")
    if u.size:
        lo, hi = float(u.min()), float(u.max())
        if not (lo >= 0.0 and hi < 1.0):
            raise ValueError(f"{where}: u: expected every value in [0, 1), got values from {lo!r} to {hi!r}")


def _forward_cpu(x, u, geometry, y_shape):
    y = np.empty(y_shape, dtype=x.dtype)
    if u is None:
        _cpu.stochastic_eval_fwd_cpu(x, *geometry, y)
        return y, None
    arg = np.empty(y_shape, dtype=argmax_dtype(geometry[:2]))
    _cpu.stochastic_train_fwd_cpu(x, np.ascontiguousarray(u), *geometry, y, arg)
    return y, arg


def _backward_cpu(x, gy, arg, geometry):
    kh, kw, sh, sw, ph, pw = geometry
    if arg is not None:
        return ops.kernels("max_pool2d", gy).backward(gy, arg, x.shape, (kh, kw), (sh, sw), (ph, pw))
    gx = np.empty_like(x)
    _cpu.stochastic_eval_bwd_cpu(x, gy, *geometry, gx)
    return gx


def stochastic_pool2d_forward(x, u=None, kernel_size=2, stride=None, padding=0):
    """Stochastic pooling: a cell drawn with probability a_q / sum a (``u`` given), or the
    probability-weighted mean sum a^2 / sum a (``u`` None, eval).

    Parameters
    ----------
    x : array (N, C, H, W), float32 or float64, every value >= 0
    u : None or float64 array (N, C, Ho, Wo) in [0, 1), on x's device
        One uniform draw per window (training), None for the eval rule.
    kernel_size, stride, padding : int or (int, int)
        Window geometry; ``stride=None`` means ``kernel_size``; padded cells are left out.

    Returns
    -------
    y : array (N, C, Ho, Wo), x's dtype
    saved : StochasticSaved, for :func:`stochastic_pool2d_backward`
    """
    where = "stochastic_pool2d_forward"
    check_array(x, "x", ndim=4, where=where)
    win = Window.of(kernel_size, stride, padding, where)
    y_shape = win.out_shape(x.shape, where)
    if u is not None:
        _check_draws(u, x, y_shape, where)
    check_nonnegative(x, where, "stochastic pooling draws with probability proportional to x")
    x = backend.get_array_module(x).ascontiguousarray(x)
    y, arg = ops.kernels("stochastic_pool2d", x).forward(x, u, win.flat, y_shape)
    return y, StochasticSaved(x, arg, win.flat, y_shape)


def stochastic_pool2d_backward(gy, saved):
    """gx (N, C, H, W): gy at each window's drawn cell (training), or ``gy (2 a_q - y) / sum a``
    summed over the windows holding each cell (eval)."""
    where = "stochastic_pool2d_backward"
    gy = check_backward(gy, saved, StochasticSaved, "stochastic_pool2d_forward", where)
    x = saved.x
    return ops.kernels("stochastic_pool2d", x).backward(x, gy, saved.arg, saved.geometry)


def _sample_stochastic(draw, dtype):
    """Any window geometry; x in [0.25, 2] (away from 0: central differences must not cross it,
    where x < 0 is refused; zero cells and windows are tests/test_stochastic.py's); u uniform
    (training) or None (eval). Only x's gradient is checked (u is the draw, held fixed)."""
    k, s, pad = cases.window(draw)
    n, c = cases.planes(draw)
    h, w = cases.spatial(draw, k, pad)
    rng = draw.rng
    x = rng.uniform(0.25, 2.0, (n, c, h, w)).astype(dtype)
    y_shape = Window.of(k, s, pad).out_shape(x.shape)
    u = rng.random(y_shape) if draw.bool() else None
    return ops.Case((x, u), dict(kernel_size=k, stride=s, padding=pad), wrt=(0,))


def _forward_stochastic(x, u, **win):
    y, saved = stochastic_pool2d_forward(x, u, **win)
    return (y,), saved


def _forward_stochastic_ref(x, u, **win):
    return (_ref.stochastic_pool2d_forward_ref(x, u, **win)[0],), (x, u, win)


def _backward_stochastic_ref(saved, gy):
    x, u, win = saved
    return _ref.stochastic_pool2d_backward_ref(x, u, gy, **win), None


ops.register(ops.Op(
    "stochastic_pool2d", "a cell drawn with probability a / sum a per window (train), sum a^2 / sum a (eval)",
    forward=_forward_stochastic, backward=lambda saved, gy: (stochastic_pool2d_backward(gy, saved), None),
    reference=(_forward_stochastic_ref, _backward_stochastic_ref), cpu=ops.Kernels(_forward_cpu, _backward_cpu),
    gpu="minignn.layers.stochastic.gpu:KERNELS", needs=("max_pool2d",), sample=_sample_stochastic,
    gradcheck=dict(max_checks=12),
    tol=lambda dtype: dict(rtol=2e-6, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-13)))


# ------------------------------------------------------------------------------------------ S3
class S3Saved:
    """What :func:`s3_pool2d_backward` needs (treat as opaque): the max pooling's argmax (eval:
    of the stride-1 max over x; training: of the 2x2 max over the gathered rows and columns) and
    x's shape, the kept ``rows`` and ``cols`` (None in eval) with their gathered pairs, and the
    output shape."""

    __slots__ = ("arg", "x_shape", "rows", "cols", "y_shape", "dtype", "pairs")

    def __init__(self, arg, x_shape, rows, cols, y_shape, dtype, pairs=None):
        self.arg, self.x_shape, self.rows, self.cols = arg, x_shape, rows, cols
        self.y_shape, self.dtype, self.pairs = y_shape, dtype, pairs

    def __repr__(self):
        mode = "eval" if self.rows is None else "train"
        return f"S3Saved(x{self.x_shape}, {mode}, y{self.y_shape})"


def _default_grid(size: int) -> int:
    """g for a map of ``size`` rows: its half, rounded down to an even number, at least 2."""
    return max(2, (size // 2) // 2 * 2)


def _check_grid(grid, where):
    if grid is None:
        return None
    if isinstance(grid, (bool, np.bool_)) or not isinstance(grid, (int, np.integer)) or grid < 2 or grid % 2:
        raise ValueError(f"{where}: grid: expected None (half the map's size) or an even int >= 2, got {grid!r}")
    return int(grid)


def _keep(rng, size, g):
    """Sorted indices: from each block of g (the last may be shorter, b) of 0..size-1, b // 2."""
    kept = []
    for start in range(0, size, g):
        b = min(g, size - start)
        kept.append(start + np.sort(rng.choice(b, b // 2, replace=False)))
    return np.concatenate(kept).astype(np.int64) if kept else np.zeros(0, dtype=np.int64)


def s3_draw(rng, height, width, grid=None):
    """(rows, cols): the kept rows and columns of S3's stochastic spatial sampling, int64 arrays
    of length height // 2 and width // 2, each sorted (see the module docstring); ``grid`` g (an
    even int) or None for half the map's size (rounded down to even, at least 2) on each axis."""
    where = "s3_draw"
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"{where}: rng: expected a numpy.random.Generator, got {type(rng).__name__}")
    grid = _check_grid(grid, where)
    gh = grid if grid is not None else _default_grid(int(height))
    gw = grid if grid is not None else _default_grid(int(width))
    return _keep(rng, int(height), gh), _keep(rng, int(width), gw)


def _check_index(v, name, size, n_out, where):
    if not hasattr(v, "shape") or not hasattr(v, "dtype") or np.dtype(v.dtype).kind not in "iu":
        raise TypeError(f"{where}: {name}: expected an integer array (from s3_draw), got "
                        f"{getattr(v, 'dtype', type(v).__name__)}")
    if tuple(v.shape) != (n_out,):
        raise ValueError(f"{where}: {name}: expected shape ({n_out},) (half the axis, rounded down), got"
                         f" {tuple(v.shape)}")
    h = backend.to_numpy(v)
    if h.size and (h.min() < 0 or h.max() >= size or np.any(np.diff(h) <= 0)):
        raise ValueError(f"{where}: {name}: expected increasing indices in [0, {size}), got {h.tolist()[:8]}")


def _max_stride1(x):
    """The stride-1 2x2 max pooling that keeps the map's size: (m (N, C, H, W) view, argmax)."""
    m, arg = max_pool2d_forward(x, 2, 1, 1)                   # (H + 1, W + 1): row o covers o - 1, o
    return m[:, :, 1:, 1:], arg


def _pairs(kept, size, xp):
    """The two input rows (or columns) under each kept row of the stride-1 max, interleaved:
    ``[r0, r0 + 1, r1, r1 + 1, ...]`` with ``r + 1`` clipped to ``size - 1`` (the last row's window
    holds only itself, so it is read twice: max(a, a) = a); and the mask of the second ones that
    are real (``r + 1 < size``)."""
    second = xp.minimum(kept + 1, size - 1)
    both = xp.stack([kept, second], axis=1).reshape(-1)
    return both, kept + 1 < size


def _scatter_pairs(g, both, real, size, axis, xp):
    """The adjoint of gathering ``both`` along ``axis`` (2 or 3): out[j] = the sum of g over the
    positions that read j, at most two (as the first member of a pair and as the real second
    member of another; a clipped second member duplicates its first and max pooling's
    first-of-ties rule gives it no gradient, so it is left out). Done as two gathers from g with
    a zero slice appended (index ``2 K``: "no position"), which NumPy and CuPy run much faster
    than an indexed ``+=``."""
    k2 = int(both.shape[0])
    pos = xp.arange(k2, dtype=np.int64)
    from_first = xp.full(size, k2, dtype=np.int64)
    from_first[both[0::2]] = pos[0::2]
    from_second = xp.full(size, k2, dtype=np.int64)
    from_second[both[1::2][real]] = pos[1::2][real]
    pad = list(g.shape)
    pad[axis] = 1
    gp = xp.concatenate([g, xp.zeros(pad, dtype=g.dtype)], axis=axis)
    return xp.take(gp, from_first, axis=axis) + xp.take(gp, from_second, axis=axis)


def s3_pool2d_forward(x, rows=None, cols=None):
    """S3 pooling: 2x2 stride-1 max pooling, then the kept ``rows`` and ``cols`` (training; from
    :func:`s3_draw`) or 2x2 average pooling (both None: eval).

    Training computes only the kept cells: output (i, j) is the max over input rows
    ``rows[i], rows[i] + 1`` and columns ``cols[j], cols[j] + 1`` (clipped at the border), so the
    two input rows under each kept row and the two columns under each kept column are gathered
    (an (N, C, 2 Ho, 2 Wo) array, the input's size) and max-pooled 2x2 at stride 2; the backward
    is that max pooling's, scattered back through the gather. Eval pools the whole stride-1 max.

    Returns y (N, C, H // 2, W // 2) in x's dtype and the S3Saved for :func:`s3_pool2d_backward`.
    """
    where = "s3_pool2d_forward"
    check_array(x, "x", ndim=4, where=where)
    N, C, H, W = x.shape
    if H < 2 or W < 2:
        raise ValueError(f"{where}: x: expected H and W >= 2 (S3 halves each), got shape {tuple(x.shape)}")
    if (rows is None) != (cols is None):
        raise ValueError(f"{where}: rows, cols: expected both (training) or neither (eval), got "
                         f"{'rows' if cols is None else 'cols'} only")
    y_shape = (N, C, H // 2, W // 2)
    if rows is None:
        m, arg = _max_stride1(x)
        y = avg_pool2d_forward(m, 2, 2)
        return y, S3Saved(arg, tuple(x.shape), None, None, y_shape, np.dtype(x.dtype))
    _check_index(rows, "rows", H, H // 2, where)
    _check_index(cols, "cols", W, W // 2, where)
    xp = backend.get_array_module(x)
    rows, cols = xp.asarray(rows, dtype=np.int64), xp.asarray(cols, dtype=np.int64)
    y, arg, aux = ops.kernels("s3_pool2d", x).forward(x, rows, cols)
    return y, S3Saved(arg, tuple(x.shape), rows, cols, y_shape, np.dtype(x.dtype), aux)


def s3_pool2d_backward(gy, saved):
    """gx (N, C, H, W): gy through the kept cells' max (or the average of the stride-1 max)."""
    where = "s3_pool2d_backward"
    if not isinstance(saved, S3Saved):
        raise TypeError(f"{where}: saved: expected the S3Saved returned by s3_pool2d_forward,"
                        f" got {type(saved).__name__}")
    check_grad_output(gy, saved.y_shape, dtype=saved.dtype, where=where)
    xp = backend.get_array_module(gy)
    N, C, H, W = saved.x_shape
    if saved.rows is None:
        gm = xp.zeros((N, C, H + 1, W + 1), dtype=gy.dtype)
        gm[:, :, 1:, 1:] = avg_pool2d_backward(gy, (N, C, H, W), 2, 2)
        return max_pool2d_backward(gm, saved.arg, saved.x_shape, 2, 1, 1)
    return ops.kernels("s3_pool2d", gy).backward(gy, saved.arg, saved.pairs, saved.x_shape)


# S3's training kernels, (x, rows, cols) -> (y, arg, aux) and (gy, arg, aux, x_shape) -> gx. CPU:
# Numba, reading the kept cells in place (aux: the clipped second rows and columns).
def _s3_train_fwd_cpu(x, rows, cols):
    N, C, H, W = x.shape
    rows2, cols2 = np.minimum(rows + 1, H - 1), np.minimum(cols + 1, W - 1)
    y = np.empty((N, C, rows.shape[0], cols.shape[0]), dtype=x.dtype)
    arg = np.empty(y.shape, dtype=np.int8)
    _cpu.s3_train_fwd_cpu(x, rows, rows2, cols, cols2, y, arg)
    return y, arg, (rows, rows2, cols, cols2)


def _s3_train_bwd_cpu(gy, arg, aux, x_shape):
    gx = np.empty(x_shape, dtype=gy.dtype)
    _cpu.s3_train_bwd_cpu(np.ascontiguousarray(gy), arg, *aux, gx)
    return gx


# GPU (and gpu-sim): xp gathers around max pooling's kernels (aux: the gathered pairs). The two
# input rows under each kept row and the two columns under each kept column are gathered (an
# array of x's size) and max-pooled 2x2 at stride 2; the backward scatters max pooling's back.
def _s3_train_fwd_xp(x, rows, cols):
    xp = backend.get_array_module(x)
    H, W = x.shape[2:]
    rr, cc = _pairs(rows, H, xp), _pairs(cols, W, xp)
    xg = xp.take(xp.take(x, cc[0], axis=3), rr[0], axis=2)                # (N, C, 2 Ho, 2 Wo)
    y, arg = max_pool2d_forward(xg, 2, 2)
    return y, arg, (rr, cc)


def _s3_train_bwd_xp(gy, arg, aux, x_shape):
    xp = backend.get_array_module(gy)
    N, C, H, W = x_shape
    (rboth, rreal), (cboth, creal) = aux
    ho, wo = gy.shape[2:]
    gxg = max_pool2d_backward(gy, arg, (N, C, 2 * ho, 2 * wo), 2, 2)
    gc = _scatter_pairs(gxg, cboth, creal, W, 3, xp)
    return _scatter_pairs(gc, rboth, rreal, H, 2, xp)


def _sample_s3(draw, dtype):
    """H, W from 2 to 13 (odd ones too), distinct values (no ties in the max); rows and cols from
    s3_draw with a random even grid (training) or None (eval)."""
    n, c = cases.planes(draw)
    h, w = draw.int(2, 13), draw.int(2, 13)
    x = cases.distinct(draw, (n, c, h, w), dtype)
    if draw.bool():
        rows, cols = s3_draw(draw.rng, h, w, draw.choice([None, 2, 4, 6]))
    else:
        rows = cols = None
    return ops.Case((x, rows, cols), {}, wrt=(0,))


def _forward_s3(x, rows, cols):
    y, saved = s3_pool2d_forward(x, rows, cols)
    return (y,), saved


def _s3_ref_windows(x):
    """m (N, C, H, W) float64: the max over rows i, i+1 and columns j, j+1 (clipped)."""
    xpad = np.full((x.shape[0], x.shape[1], x.shape[2] + 1, x.shape[3] + 1), -np.inf)
    xpad[:, :, :-1, :-1] = x
    return np.maximum(np.maximum(xpad[:, :, :-1, :-1], xpad[:, :, 1:, :-1]),
                      np.maximum(xpad[:, :, :-1, 1:], xpad[:, :, 1:, 1:]))


def _forward_s3_ref(x, rows, cols):
    x = np.asarray(x, dtype=np.float64)
    m = _s3_ref_windows(x)
    H, W = x.shape[2] // 2 * 2, x.shape[3] // 2 * 2
    if rows is None:
        y = 0.25 * (m[:, :, 0:H:2, 0:W:2] + m[:, :, 1:H:2, 0:W:2] + m[:, :, 0:H:2, 1:W:2] + m[:, :, 1:H:2, 1:W:2])
    else:
        y = m[:, :, np.asarray(rows)][:, :, :, np.asarray(cols)]
    return (y,), (x, rows, cols)


def _backward_s3_ref(saved, gy):
    """By the definition: each output's gradient goes to the argmax (first in row-major order) of
    the 2x2 window of each m cell it reads."""
    x, rows, cols = saved
    N, C, H, W = x.shape
    gm = np.zeros((N, C, H, W))
    if rows is None:
        for di in range(2):
            for dj in range(2):
                gm[:, :, di:H // 2 * 2:2, dj:W // 2 * 2:2] += 0.25 * gy
    else:
        gm[:, :, np.asarray(rows)[:, None], np.asarray(cols)[None, :]] = gy
    gx = np.zeros_like(x)
    for n in range(N):
        for c in range(C):
            for i in range(H):
                for j in range(W):
                    if gm[n, c, i, j] == 0.0:
                        continue
                    cells = [(i + a, j + b) for a in range(2) for b in range(2) if i + a < H and j + b < W]
                    best = max(cells, key=lambda q: (x[n, c, q[0], q[1]], -cells.index(q)))
                    gx[n, c, best[0], best[1]] += gm[n, c, i, j]
    return gx, None, None


ops.register(ops.Op(
    "s3_pool2d", "2x2 stride-1 max pooling, then kept rows and columns (train) or 2x2 average pooling (eval)",
    forward=_forward_s3, backward=lambda saved, gy: (s3_pool2d_backward(gy, saved), None, None),
    reference=(_forward_s3_ref, _backward_s3_ref), cpu=ops.Kernels(_s3_train_fwd_cpu, _s3_train_bwd_cpu),
    gpu=ops.Kernels(_s3_train_fwd_xp, _s3_train_bwd_xp), needs=("max_pool2d", "avg_pool2d"),
    sample=_sample_s3, gradcheck=dict(max_checks=12)))
