r"""LIPPool2d: local importance pooling with the paper's logit module (Gao, Wang & Wu, ICCV 2019).

::

    z = conv3x3(x)              Conv2d(C, C, 3, padding=1), weight and bias initialised to 0
    u = IN(z)                   instance norm over (H, W), eps 1e-5, affine (gamma 1, beta 0)
    L = 12 sigmoid(u)           the importance logits, in (0, 12)
    y = lip_pool2d(x, L)        sum_R x e^L / sum_R e^L over each window's real cells

At initialisation z = 0, so every IN plane is constant: xhat = 0, u = beta = 0 and L = 6 everywhere:
the layer starts as average pooling (padded cells excluded), and the logit module learns away
from it (its gradient at zero weights is not zero: IN's backward at a constant plane scales by
1/sqrt(eps)).

Backward, by hand, through each stage (each stage's own backward)::

    (gx_pool, gL) = lip_pool2d_backward(gy)          gx_pool = sum gy w,  gL = sum gy w (x - y)
    gu = gL 12 s (1 - s) = gL L (12 - L) / 12        s = sigmoid(u) = L / 12
    gz = InstanceNorm2d.backward(gu)                 (adds gamma's and beta's gradients)
    gx = gx_pool + Conv2d.backward(gz)               (adds the conv's weight and bias gradients)

x reaches y along two paths, the pooled values and the logits, and the two input gradients add.
Deterministic: train and eval modes are the same computation (IN uses each sample's own
statistics in both).
"""
from __future__ import annotations

import numpy as np

from minignn import backend
from minignn.checks import check_array, check_grad_output, check_positive_int
from minignn.module import Module

from .._window import Window
from ..conv import Conv2d
from . import lip_pool2d_backward, lip_pool2d_forward
from .instnorm import InstanceNorm2d

__all__ = ["LIPPool2d", "LOGIT_SCALE"]

#: The logits' range: L = LOGIT_SCALE * sigmoid(.) lies in (0, 12) (the paper's choice).
LOGIT_SCALE = 12.0


def _sigmoid(xp, z):
    return 0.5 * (1.0 + xp.tanh(0.5 * z))        # no overflow for either sign of z


class LIPPool2d(Module):
    r"""Local importance pooling: ``y = sum_R x e^L / sum_R e^L``, ``L = 12 sigmoid(IN(conv3x3(x)))``.

    Parameters
    ----------
    channels : int
        C, the input channels (the logit conv maps C -> C).
    kernel_size, stride, padding : int or (h, w)
        The pooling window, default 3x3 / stride 2 / padding 1 (the paper's: H -> H // 2 for even
        H); ``stride=None`` means ``kernel_size``; padded cells are excluded from every window
        (padding must be smaller than the kernel).
    rng : numpy.random.Generator or None
        Handed to the logit conv's constructor, whose draw is then overwritten with zeros (the
        paper's initialisation); None gives it a private generator, so that building the layer
        leaves the library-wide generator untouched.

    Children: ``conv`` (:class:`~minignn.layers.Conv2d`, weight (C, C, 3, 3) and bias (C,),
    zeros) and ``norm`` (:class:`InstanceNorm2d`, weight = gamma (C,) ones, bias = beta (C,)
    zeros).

    Attributes
    ----------
    last_logit : array (N, C, H, W)
        The logits L of the last forward (x's dtype and device), for analysis; the backward reads
        it, so do not modify it in place.

    Train and eval modes are identical (the layer is deterministic).

    Shapes
    ------
    x (N, C, H, W) -> y (N, C, Ho, Wo), ``Ho = (H + 2 ph - kh) // sh + 1`` (same for W).
    """

    def __init__(self, channels, kernel_size=3, stride=2, padding=1, rng=None):
        super().__init__()
        where = "LIPPool2d"
        c = check_positive_int(channels, "channels", where)
        win = Window.of(kernel_size, stride, padding, where)
        self.channels = c
        self.kernel_size, self.stride, self.padding = win.kernel, win.stride, win.padding
        self.conv = Conv2d(c, c, 3, padding=1, rng=np.random.default_rng(0) if rng is None else rng)
        self.conv.weight.data[...] = 0
        self.conv.bias.data[...] = 0
        self.norm = InstanceNorm2d(c, eps=1e-5, affine=True)
        self.last_logit = None
        self._saved = None

    def extra_repr(self):
        return f"{self.channels}, kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"

    def forward(self, x):
        """x (N, C, H, W) -> y (N, C, Ho, Wo)."""
        where = "LIPPool2d.forward"
        check_array(x, "x", ndim=4, where=where, channels=self.channels, dtype=self.conv.weight.data.dtype)
        Window(self.kernel_size, self.stride, self.padding).out_hw(*x.shape[2:], where)
        xp = backend.get_array_module(x)
        u = self.norm.forward(self.conv.forward(x))
        logit = LOGIT_SCALE * _sigmoid(xp, u)
        self.last_logit = logit
        y, saved = lip_pool2d_forward(x, logit, self.kernel_size, self.stride, self.padding)
        self._saved = (saved, logit, tuple(y.shape), y.dtype)
        return y

    def backward(self, gy):
        """gy (N, C, Ho, Wo) -> gx (N, C, H, W); adds the gradients of ``conv`` and ``norm``."""
        saved, logit, y_shape, dtype = self._saved_or_raise(self._saved)
        check_grad_output(gy, y_shape, dtype, where="LIPPool2d.backward")
        gx, gl = lip_pool2d_backward(gy, saved)
        gu = gl * (logit * (LOGIT_SCALE - logit) / LOGIT_SCALE)     # 12 s (1 - s), s = L / 12
        gx_conv = self.conv.backward(self.norm.backward(gu))
        gx += gx_conv
        return gx

    def _moved(self, device, dtype):
        self._saved = None
        self.last_logit = None
