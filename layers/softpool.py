r"""SoftPool2d (Stergiou, Poppe & Kalliatakis, ICCV 2021): the softmax-weighted mean of each window,

    w_q = exp(x_q) / sum_{q' in R} exp(x_q'),    y = sum_{q in R} w_q x_q,

which is max-entropy pooling with lam = 1 and no position prior, so it runs on that pooling's
kernels (:func:`minignn.layers.maxent_pool2d_forward`). Its gradient is the full one,

    dy/dx_q = w_q (1 + x_q - y),

not ``w_q`` alone: the ``w_q (x_q - y)`` term comes from the weights depending on x (the
published CUDA backward of SoftPool drops it). No parameters; train and eval behave the same.
"""
from __future__ import annotations

from minignn.checks import check_array, check_grad_output
from minignn.module import Module

from ._window import Window
from .maxent import maxent_pool2d_backward, maxent_pool2d_forward

__all__ = ["SoftPool2d"]


class SoftPool2d(Module):
    """SoftPool: ``y = sum softmax(x_R) x_R`` over each window's real cells.

    Parameters
    ----------
    kernel_size, stride, padding : int or (h, w); window geometry as MaxPool2d

    Shapes: x (N, C, H, W) -> y (N, C, Ho, Wo), ``Ho = (H + 2 ph - kh) // sh + 1``.
    """

    def __init__(self, kernel_size=2, stride=None, padding=0):
        super().__init__()
        win = Window.of(kernel_size, stride, padding, "SoftPool2d")
        self.kernel_size, self.stride, self.padding = win.kernel, win.stride, win.padding
        self._saved = None

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"

    def forward(self, x):
        check_array(x, "x", ndim=4, where="SoftPool2d.forward")
        y, saved = maxent_pool2d_forward(x, 1.0, None, self.kernel_size, self.stride, self.padding)
        self._saved = (saved, tuple(y.shape), y.dtype)
        return y

    def backward(self, gy):
        saved, y_shape, dtype = self._saved_or_raise(self._saved)
        check_grad_output(gy, y_shape, dtype, where="SoftPool2d.backward")
        return maxent_pool2d_backward(gy, saved)[0]
