"""Max, average and global average pooling (NCHW).

Each output cell pools one ``kh x kw`` window of its channel (Eq. 1 of MATH.md with fixed weights):

    max:  y[n, c, oh, ow] = max_{q in R}  x[n, c, q]        dy/dx_q = 1 at the (first) argmax, else 0
    avg:  y[n, c, oh, ow] = 1/|R| sum_{q in R} x[n, c, q]    dy/dx_q = 1/|R|

where ``R`` is the window's set of *real* cells: window ``(oh, ow)`` starts at row ``oh*sh - ph``
and column ``ow*sw - pw``, and cells in the padding are never part of ``R`` (max pooling pads
with -inf; average pooling divides by the number of real cells, PyTorch's
``count_include_pad=False``). The output size is ``(H + 2*ph - kh) // sh + 1`` (likewise W);
``padding < kernel_size`` so that every window holds a real cell. With overlapping windows
(``stride < kernel_size``) the backward adds the contributions of every window a cell is in.

The layers are :class:`MaxPool2d`, :class:`AvgPool2d` and :class:`GlobalAvgPool2d`; the
functional pairs (``max_pool2d_forward`` / ``max_pool2d_backward``, and the average ones) are
what they call. The CPU kernels live in ``cpu.py`` (Numba), the NumPy oracle in ``reference.py``;
there is no GPU kernel yet for max/avg pooling (a CuPy array raises NotImplementedError naming
the op); global average pooling is device-agnostic ``xp`` code.
"""
from __future__ import annotations

import numpy as np

from minignn import backend, cases, ops
from minignn.checks import check_array, check_grad_output
from minignn.module import Module

from .._window import Window, pair
from . import cpu as _cpu
from . import reference as _ref

__all__ = ["MaxPool2d", "AvgPool2d", "GlobalAvgPool2d", "max_pool2d_forward", "max_pool2d_backward",
           "avg_pool2d_forward", "avg_pool2d_backward", "global_avg_pool2d_forward", "global_avg_pool2d_backward",
           "argmax_dtype"]


def _geometry(kernel_size, stride=None, padding=0, where=""):
    """Validated ``(kh, kw), (sh, sw), (ph, pw)``; ``stride=None`` means the kernel size."""
    win = Window.of(kernel_size, stride, padding, where)
    return win.kernel, win.stride, win.padding


def _out_shape(x_shape, k, s, p, where):
    return Window(k, s, p).out_shape(x_shape, where)


def argmax_dtype(kernel_size) -> np.dtype:
    """dtype of the stored argmax offsets: int8 when ``kh*kw <= 127``, else int32."""
    kh, kw = pair(kernel_size, "kernel_size")
    return np.dtype(np.int8) if kh * kw <= 127 else np.dtype(np.int32)


# --------------------------------------------------------------------------------- max pooling
def _max_fwd_cpu(x, k, s, p, y_shape):
    x = np.ascontiguousarray(x)
    y = np.empty(y_shape, dtype=x.dtype)
    arg = np.empty(y_shape, dtype=argmax_dtype(k))
    _cpu.maxpool2d_fwd_cpu(x, k[0], k[1], s[0], s[1], p[0], p[1], y, arg)
    return y, arg


def _max_bwd_cpu(gy, arg, x_shape, k, s, p):
    gx = np.empty(x_shape, dtype=gy.dtype)
    _cpu.maxpool2d_bwd_cpu(np.ascontiguousarray(gy), np.ascontiguousarray(arg), k[0], k[1], s[0], s[1],
                           p[0], p[1], gx)
    return gx


def max_pool2d_forward(x, kernel_size, stride=None, padding=0):
    """Max pooling.

    Parameters
    ----------
    x : (N, C, H, W) float32 or float64 array
    kernel_size, stride, padding : int or (int, int); ``stride=None`` means ``kernel_size``

    Returns
    -------
    y : (N, C, Ho, Wo) array, x's dtype
    argmax : (N, C, Ho, Wo) int8 (int32 for kernels of more than 127 cells)
        Offset ``di*kw + dj`` of each window's first maximum inside the window.
    """
    where = "max_pool2d_forward"
    k, s, p = _geometry(kernel_size, stride, padding, where)
    check_array(x, "x", ndim=4, where=where)
    y_shape = _out_shape(x.shape, k, s, p, where)
    return ops.kernels("max_pool2d", x).forward(x, k, s, p, y_shape)


def max_pool2d_backward(gy, argmax, x_shape, kernel_size, stride=None, padding=0):
    """Gradient of max pooling: ``gx`` (shape ``x_shape``) gets each ``gy`` value at its window's
    argmax cell (summed over windows that share it). ``argmax`` is what the forward returned."""
    where = "max_pool2d_backward"
    k, s, p = _geometry(kernel_size, stride, padding, where)
    x_shape = tuple(int(v) for v in x_shape)
    y_shape = _out_shape(x_shape, k, s, p, where)
    check_grad_output(gy, y_shape, where=where)
    if tuple(argmax.shape) != y_shape or np.dtype(argmax.dtype).kind not in "iu":
        raise ValueError(f"{where}: argmax: expected an integer array of shape {y_shape}, got "
                         f"{argmax.dtype} of shape {tuple(argmax.shape)}")
    return ops.kernels("max_pool2d", gy).backward(gy, argmax, x_shape, k, s, p)


# ----------------------------------------------------------------------------- average pooling
def _avg_fwd_cpu(x, k, s, p, y_shape):
    y = np.empty(y_shape, dtype=x.dtype)
    _cpu.avgpool2d_fwd_cpu(np.ascontiguousarray(x), k[0], k[1], s[0], s[1], p[0], p[1], y)
    return y


def _avg_bwd_cpu(gy, x_shape, k, s, p):
    gx = np.empty(x_shape, dtype=gy.dtype)
    _cpu.avgpool2d_bwd_cpu(np.ascontiguousarray(gy), k[0], k[1], s[0], s[1], p[0], p[1], gx)
    return gx


def avg_pool2d_forward(x, kernel_size, stride=None, padding=0):
    """Average pooling over each window's real cells (padding excluded from the count).

    x : (N, C, H, W) float array -> y : (N, C, Ho, Wo), x's dtype (sums accumulate in float64).
    """
    where = "avg_pool2d_forward"
    k, s, p = _geometry(kernel_size, stride, padding, where)
    check_array(x, "x", ndim=4, where=where)
    y_shape = _out_shape(x.shape, k, s, p, where)
    return ops.kernels("avg_pool2d", x).forward(x, k, s, p, y_shape)


def avg_pool2d_backward(gy, x_shape, kernel_size, stride=None, padding=0):
    """Gradient of average pooling: each ``gy`` value spread evenly over its window's real cells.
    gy : (N, C, Ho, Wo) -> gx : ``x_shape``."""
    where = "avg_pool2d_backward"
    k, s, p = _geometry(kernel_size, stride, padding, where)
    x_shape = tuple(int(v) for v in x_shape)
    check_grad_output(gy, _out_shape(x_shape, k, s, p, where), where=where)
    return ops.kernels("avg_pool2d", gy).backward(gy, x_shape, k, s, p)


# ---------------------------------------------------------------------- global average pooling
def global_avg_pool2d_forward(x):
    """Mean over the spatial axes: x (N, C, H, W) -> y (N, C), x's dtype (device-agnostic)."""
    check_array(x, "x", ndim=4, where="global_avg_pool2d_forward")
    xp = backend.get_array_module(x)
    n, c, h, w = x.shape
    y = x.reshape(n, c, h * w).mean(axis=2)  # x's dtype (pairwise summation in NumPy)
    return xp.asarray(y, dtype=x.dtype)


def global_avg_pool2d_backward(gy, x_shape):
    """gx = gy / (H*W) broadcast over H and W: gy (N, C) -> gx ``x_shape``."""
    x_shape = tuple(int(v) for v in x_shape)
    check_grad_output(gy, x_shape[:2], where="global_avg_pool2d_backward")
    xp = backend.get_array_module(gy)
    gx = xp.empty(x_shape, dtype=gy.dtype)
    gx[...] = (gy * gy.dtype.type(1.0 / (x_shape[2] * x_shape[3])))[:, :, None, None]
    return gx


# ---------------------------------------------------------------------------------- the op table
def _sample(draw, dtype):
    """x (N, C, H, W) of distinct values (no ties: the max is differentiable) and a window."""
    k, s, p = cases.window(draw)
    n, c = cases.planes(draw)
    h, w = cases.spatial(draw, k, p)
    return ops.Case((cases.distinct(draw, (n, c, h, w), dtype),), dict(kernel_size=k, stride=s, padding=p))


def _sample_global(draw, dtype):
    n, c = cases.planes(draw)
    return ops.Case((cases.values(draw, (n, c, draw.int(1, 7), draw.int(1, 7)), dtype),))


# One calling convention for the table: forward(x, **window) -> ((y,), saved), backward(saved, gy) -> (gx,)
def _max_forward(x, **win):
    y, arg = max_pool2d_forward(x, **win)
    return (y,), (arg, x.shape, win)


def _max_backward(saved, gy):
    arg, x_shape, win = saved
    return (max_pool2d_backward(gy, arg, x_shape, **win),)


def _max_forward_ref(x, **win):
    y, arg = _ref.maxpool2d_forward_ref(x, *_geometry(**win))
    return (y,), (arg, x.shape)


def _avg_forward(x, **win):
    return (avg_pool2d_forward(x, **win),), (x.shape, win)


def _avg_backward(saved, gy):
    x_shape, win = saved
    return (avg_pool2d_backward(gy, x_shape, **win),)


def _avg_forward_ref(x, **win):
    geo = _geometry(**win)
    return (_ref.avgpool2d_forward_ref(x, *geo),), (x.shape, geo)


ops.register(ops.Op(
    "max_pool2d", "max over each window's real cells; the first maximum wins, NaN propagates",
    forward=_max_forward, backward=_max_backward,
    reference=(_max_forward_ref, lambda saved, gy: (_ref.maxpool2d_backward_ref(gy, *saved),)),
    cpu=ops.Kernels(_max_fwd_cpu, _max_bwd_cpu), gpu="minignn.layers.pooling.gpu:MAX", sample=_sample))

ops.register(ops.Op(
    "avg_pool2d", "mean over each window's real cells (padding not counted)",
    forward=_avg_forward, backward=_avg_backward,
    reference=(_avg_forward_ref, lambda saved, gy: (_ref.avgpool2d_backward_ref(gy, saved[0], *saved[1]),)),
    cpu=ops.Kernels(_avg_fwd_cpu, _avg_bwd_cpu), gpu="minignn.layers.pooling.gpu:AVG", sample=_sample))

ops.register(ops.Op(
    "global_avg_pool2d", "mean over H and W: (N, C, H, W) -> (N, C)",
    forward=lambda x: ((global_avg_pool2d_forward(x),), x.shape),
    backward=lambda x_shape, gy: (global_avg_pool2d_backward(gy, x_shape),),
    reference=(lambda x: ((_ref.global_avgpool2d_forward_ref(x),), x.shape),
               lambda x_shape, gy: (_ref.global_avgpool2d_backward_ref(gy, x_shape),)),
    cpu=ops.XP, gpu=ops.XP, sample=_sample_global))


# ---------------------------------------------------------------------------------- the layers
class _Pool2d(Module):
    _name = "Pool2d"

    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        self.kernel_size, self.stride, self.padding = _geometry(kernel_size, stride, padding, self._name)
        self._saved = None

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class MaxPool2d(_Pool2d):
    """Max pooling layer; padded cells never win, ties go to the first maximum in row-major window
    order, and a NaN in a window propagates.

    Parameters
    ----------
    kernel_size : int or (kh, kw)
    stride : int or (sh, sw), default ``kernel_size``
    padding : int or (ph, pw), default 0; must be smaller than the kernel

    Shapes: x (N, C, H, W) -> y (N, C, Ho, Wo) with ``Ho = (H + 2*ph - kh) // sh + 1``.
    Forward saves the argmax offsets (one byte per output for kernels up to 127 cells).
    """
    _name = "MaxPool2d"

    def forward(self, x):
        check_array(x, "x", ndim=4, where="MaxPool2d.forward")
        y, arg = max_pool2d_forward(x, self.kernel_size, self.stride, self.padding)
        self._saved = (arg, tuple(x.shape), y.shape, y.dtype)
        return y

    def backward(self, gy):
        arg, x_shape, y_shape, dtype = self._saved_or_raise(self._saved)
        check_grad_output(gy, y_shape, dtype, where="MaxPool2d.backward")
        return max_pool2d_backward(gy, arg, x_shape, self.kernel_size, self.stride, self.padding)


class AvgPool2d(_Pool2d):
    """Average pooling layer; padded cells are excluded from each window's mean
    (``count_include_pad=False``).

    Parameters
    ----------
    kernel_size : int or (kh, kw)
    stride : int or (sh, sw), default ``kernel_size``
    padding : int or (ph, pw), default 0; must be smaller than the kernel

    Shapes: x (N, C, H, W) -> y (N, C, Ho, Wo) with ``Ho = (H + 2*ph - kh) // sh + 1``.
    """
    _name = "AvgPool2d"

    def forward(self, x):
        check_array(x, "x", ndim=4, where="AvgPool2d.forward")
        y = avg_pool2d_forward(x, self.kernel_size, self.stride, self.padding)
        self._saved = (tuple(x.shape), y.shape, y.dtype)
        return y

    def backward(self, gy):
        x_shape, y_shape, dtype = self._saved_or_raise(self._saved)
        check_grad_output(gy, y_shape, dtype, where="AvgPool2d.backward")
        return avg_pool2d_backward(gy, x_shape, self.kernel_size, self.stride, self.padding)


class GlobalAvgPool2d(Module):
    """Mean over the spatial axes: x (N, C, H, W) -> y (N, C); backward gx = gy / (H*W) broadcast
    over H and W. Device-agnostic (NumPy or CuPy arrays)."""

    def __init__(self):
        super().__init__()
        self._saved = None

    def forward(self, x):
        check_array(x, "x", ndim=4, where="GlobalAvgPool2d.forward")
        self._saved = (tuple(x.shape), x.dtype)
        return global_avg_pool2d_forward(x)

    def backward(self, gy):
        x_shape, dtype = self._saved_or_raise(self._saved)
        check_grad_output(gy, x_shape[:2], dtype, where="GlobalAvgPool2d.backward")
        return global_avg_pool2d_backward(gy, x_shape)
