r"""StochasticPool2d and S3Pool2d: the stochastic poolings as layers (see the package docstring for
the math).

Both draw in train mode only and are deterministic in eval mode:

=====================  ===============================================  ============================
layer                  train                                            eval
=====================  ===============================================  ============================
StochasticPool2d       one cell per window, drawn with p = a / sum a    sum a^2 / sum a per window
S3Pool2d               stride-1 2x2 max, then kept rows and columns     stride-1 2x2 max, then 2x2
                       (per block of g, half of them, drawn)            average pooling
=====================  ===============================================  ============================

The draws come from the library generator (:func:`minignn.init.get_rng`, looked up at each
forward, so :func:`minignn.init.manual_seed` takes effect) unless the layer is given its own
``rng``. They are made on the host with NumPy and copied to a GPU array's device, so a seeded run
draws the same on every device, and the trainer's checkpoints (which hold the library
generator's state) resume with the same draws.
"""
from __future__ import annotations

import numpy as np

from minignn import backend
from minignn.checks import check_array, check_grad_output
from minignn.module import Module

from .._window import Window
from . import _check_grid, s3_draw, s3_pool2d_backward, s3_pool2d_forward, stochastic_pool2d_backward, \
    stochastic_pool2d_forward

__all__ = ["StochasticPool2d", "S3Pool2d"]


def _check_rng(rng, where):
    if rng is not None and not isinstance(rng, np.random.Generator):
        raise TypeError(f"{where}: rng: expected a numpy.random.Generator or None, got {type(rng).__name__}"
                        f" (make one with numpy.random.default_rng(seed))")
    return rng


def _rng(layer):
    from minignn.init import get_rng
    return layer.rng if layer.rng is not None else get_rng()


class StochasticPool2d(Module):
    """Stochastic pooling (Zeiler & Fergus, 2013) of non-negative inputs (e.g. ReLU outputs).

    Train mode: each window outputs one of its cells, drawn with probability ``a_q / sum a``
    (the gradient goes to that cell); eval mode: ``sum a^2 / sum a`` (the draw's expectation),
    with its exact gradient. An all-zero window gives 0. No parameters.

    Parameters
    ----------
    kernel_size, stride, padding : int or (h, w)
        Window geometry, as MaxPool2d (``stride=None`` means the kernel size).
    rng : numpy.random.Generator or None
        Source of the draws (one uniform number per window, float64); None: the library generator.

    Shapes: x (N, C, H, W), every value >= 0 -> y (N, C, Ho, Wo).
    """

    def __init__(self, kernel_size=2, stride=None, padding=0, rng=None):
        super().__init__()
        win = Window.of(kernel_size, stride, padding, "StochasticPool2d")
        self.kernel_size, self.stride, self.padding = win.kernel, win.stride, win.padding
        self.rng = _check_rng(rng, "StochasticPool2d")
        self._saved = None

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"

    def forward(self, x):
        where = "StochasticPool2d.forward"
        check_array(x, "x", ndim=4, where=where)
        win = Window(self.kernel_size, self.stride, self.padding)
        u = None
        if self.training:
            u = _rng(self).random(win.out_shape(x.shape, where))
            if backend.is_gpu_array(x):
                u = backend.to_device(u, backend.device_of(x))
        y, saved = stochastic_pool2d_forward(x, u, self.kernel_size, self.stride, self.padding)
        self._saved = saved
        return y

    def backward(self, gy):
        saved = self._saved_or_raise(self._saved)
        check_grad_output(gy, saved.y_shape, saved.x.dtype, where="StochasticPool2d.backward")
        return stochastic_pool2d_backward(gy, saved)


class S3Pool2d(Module):
    """S3 pooling (Zhai et al., 2017): 2x2 max pooling at stride 1, then stochastic spatial
    sampling by 2 (train) or 2x2 average pooling (eval). No parameters.

    Parameters
    ----------
    grid : None or an even int >= 2
        g, the block size of the sampling: from each block of g rows (columns) half are kept,
        drawn without replacement, the same for the whole batch. None (default): half the map's
        size, rounded down to even (at least 2), per axis and per forward (as the DPP authors'
        port of S3).
    rng : numpy.random.Generator or None
        Source of the draws; None: the library generator.

    Attributes
    ----------
    last_rows, last_cols : int64 arrays or None
        The rows and columns kept by the last training forward (None after an eval forward).

    Shapes: x (N, C, H, W), H and W >= 2 -> y (N, C, H // 2, W // 2).
    """

    def __init__(self, grid=None, rng=None):
        super().__init__()
        self.grid = _check_grid(grid, "S3Pool2d")
        self.rng = _check_rng(rng, "S3Pool2d")
        self.last_rows = self.last_cols = None
        self._saved = None

    def extra_repr(self):
        return f"grid={self.grid}"

    def forward(self, x):
        where = "S3Pool2d.forward"
        check_array(x, "x", ndim=4, where=where)
        rows = cols = None
        if self.training:
            if x.shape[2] < 2 or x.shape[3] < 2:
                raise ValueError(f"{where}: x: expected H and W >= 2 (S3 halves each), got shape {tuple(x.shape)}")
            rows, cols = s3_draw(_rng(self), x.shape[2], x.shape[3], self.grid)
            if backend.is_gpu_array(x):
                rows, cols = (backend.to_device(v, backend.device_of(x)) for v in (rows, cols))
        self.last_rows, self.last_cols = rows, cols
        y, self._saved = s3_pool2d_forward(x, rows, cols)
        return y

    def backward(self, gy):
        saved = self._saved_or_raise(self._saved)
        check_grad_output(gy, saved.y_shape, saved.dtype, where="S3Pool2d.backward")
        return s3_pool2d_backward(gy, saved)
