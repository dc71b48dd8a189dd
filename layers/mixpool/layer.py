r"""MixedPool2d and GatedPool2d: mixed and gated max-average pooling layers (Lee et al. 2016), and
the GFGP-guided gate (``mix="gfgp"``, the ``gfgp-gated`` pooling of the GFGP paper's Sec. 5.3).

::

    MixedPool2d  mix="channel"  a = sigmoid(theta)        (C,)    a trained Parameter per channel
                 mix="layer"    a = sigmoid(theta)        (1,)    one for the whole layer
                 mix="gfgp"     a = sigmoid(V ReLU(U t))  (N, C)  t = the global average of x
                 y = a max + (1 - a) avg

    GatedPool2d  g = sigmoid(omega . x_R)  per window, omega (kh*kw,) a trained Parameter
                 y = g max + (1 - g) avg

``a`` is trained through its logit theta, so it stays inside [0, 1] with an exact gradient
(``da/dtheta = a (1 - a)``); ``a_init`` sets its starting value (0.5: the half-half mix).
omega starts at zero (the half-half mix, g = 1/2 everywhere). Both are deterministic: train
and eval behave the same.
"""
from __future__ import annotations

import math

import numpy as np

from minignn import backend
from minignn.checks import check_array, check_grad_output, check_positive_int, check_real
from minignn.module import Module, Parameter

from .._window import Window
from ..gfgp import MLPS, STATS, GFGPMapping, _check_choice, global_stats_backward, global_stats_forward
from . import gated_pool2d_backward, gated_pool2d_forward, mixed_pool2d_backward, mixed_pool2d_forward

MIX_FORMS = ("channel", "layer", "gfgp")

__all__ = ["MixedPool2d", "GatedPool2d", "MIX_FORMS"]


def _sigmoid(xp, z):
    return 0.5 * (1.0 + xp.tanh(0.5 * z))        # no overflow for either sign of z


class _MixBase(Module):
    _name = "Pool"

    def __init__(self, channels, kernel_size, stride, padding):
        super().__init__()
        self.channels = check_positive_int(channels, "channels", self._name)
        win = Window.of(kernel_size, stride, padding, self._name)
        self.kernel_size, self.stride, self.padding = win.kernel, win.stride, win.padding
        self._saved = None

    def _geometry(self):
        return dict(kernel_size=self.kernel_size, stride=self.stride, padding=self.padding)

    def _check_input(self, x):
        where = f"{self._name}.forward"
        params = self.parameters()
        check_array(x, "x", ndim=4, where=where, channels=self.channels,
                    dtype=params[0].data.dtype if params else None)
        Window(self.kernel_size, self.stride, self.padding).out_hw(*x.shape[2:], where)
        return backend.get_array_module(x)


class MixedPool2d(_MixBase):
    """Mixed max-average pooling, ``y = a max + (1 - a) avg``, with ``a`` per channel, per layer,
    or predicted per sample and channel from the input's global statistics (GFGP).

    Parameters
    ----------
    channels : int
    kernel_size, stride, padding : int or (h, w); window geometry as MaxPool2d
    mix : {"channel", "layer", "gfgp"}
        How ``a`` is formed (see the module docstring). Default "channel".
    a_init : float in (0, 1)
        The starting ``a`` ("channel" and "layer"). Default 0.5.
    stat, hidden, mlp, bias, batchnorm, rng
        The GFGP mapping ("gfgp" only; its activation is the sigmoid, so that ``a`` is in (0, 1)).

    Attributes
    ----------
    last_a : array
        ``a`` of the last forward: (C,), (1,) or (N, C). For analysis.
    """
    _name = "MixedPool2d"

    def __init__(self, channels, kernel_size=2, stride=None, padding=0, mix="channel", a_init=0.5, stat="avg",
                 hidden=0.5, mlp="mlp", bias=False, batchnorm=False, rng=None):
        super().__init__(channels, kernel_size, stride, padding)
        where = self._name
        _check_choice(mix, "mix", MIX_FORMS, where)
        _check_choice(stat, "stat", STATS, where)
        _check_choice(mlp, "mlp", MLPS, where)
        a0 = check_real(a_init, "a_init", where, low=0.0, high=1.0, low_open=True, high_open=True)
        self.mix, self.a_init, self.stat = mix, a0, stat
        self.last_a = None
        if mix == "gfgp":
            self.mapping = GFGPMapping(self.channels, stat=stat, hidden=hidden, mlp=mlp, activation="sigmoid",
                                       kernel_size=self.kernel_size, bias=bias, batchnorm=batchnorm, rng=rng)
        else:
            size = self.channels if mix == "channel" else 1
            self.theta = Parameter(np.full(size, math.log(a0 / (1.0 - a0)), dtype=np.float32))

    def extra_repr(self):
        return (f"{self.channels}, kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"mix={self.mix!r}" + (f", a_init={self.a_init}" if self.mix != "gfgp" else f", stat={self.stat!r}"))

    def forward(self, x):
        """x (N, C, H, W) -> y (N, C, Ho, Wo)."""
        xp = self._check_input(x)
        stats_saved = None
        if self.mix == "gfgp":
            t, stats_saved = global_stats_forward(x, self.stat)
            a, _ = self.mapping.forward(t)
            if not bool(xp.isfinite(a).all()):
                raise ValueError(f"{self._name}.forward: x: expected values the GFGP mapping can take in"
                                 f" {np.dtype(x.dtype)}, got |x| up to {float(xp.abs(x).max()):.3g}: the gate would"
                                 f" not be finite")
            a_used = a
        else:
            a = _sigmoid(xp, self.theta.data)
            a_used = a if self.mix == "channel" else xp.ascontiguousarray(xp.broadcast_to(a, (self.channels,)))
        self.last_a = a
        y, saved = mixed_pool2d_forward(x, a_used, **self._geometry())
        self._saved = (saved, stats_saved, a, tuple(y.shape), y.dtype)
        return y

    def backward(self, gy):
        """gy (N, C, Ho, Wo) -> gx (N, C, H, W); adds the gradient of theta or of the mapping."""
        saved, stats_saved, a, y_shape, dtype = self._saved_or_raise(self._saved)
        check_grad_output(gy, y_shape, dtype, where=f"{self._name}.backward")
        gx, ga = mixed_pool2d_backward(gy, saved)
        if self.mix == "gfgp":
            gt = self.mapping.backward(ga, None)
            return global_stats_backward(gt, stats_saved, out=gx)
        if self.mix == "layer":
            ga = ga.sum(keepdims=True)
        self.theta.grad += ga * a * (1 - a)
        return gx


class GatedPool2d(_MixBase):
    """Gated max-average pooling, ``y = g max + (1 - g) avg`` with ``g = sigmoid(omega . x_R)``
    per window: one ``omega`` of kh*kw weights for the layer (zero init: g = 1/2).

    Parameters
    ----------
    channels : int
    kernel_size, stride, padding : int or (h, w); window geometry as MaxPool2d

    Attributes
    ----------
    last_gate : array (N, C, Ho, Wo)
        The gate of every window in the last forward. For analysis.
    """
    _name = "GatedPool2d"

    def __init__(self, channels, kernel_size=2, stride=None, padding=0):
        super().__init__(channels, kernel_size, stride, padding)
        self.omega = Parameter(np.zeros(self.kernel_size[0] * self.kernel_size[1], dtype=np.float32))
        self.last_gate = None

    def extra_repr(self):
        return f"{self.channels}, kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"

    def forward(self, x):
        """x (N, C, H, W) -> y (N, C, Ho, Wo)."""
        self._check_input(x)
        y, saved = gated_pool2d_forward(x, self.omega.data, **self._geometry())
        self.last_gate = saved.g
        self._saved = (saved, tuple(y.shape), y.dtype)
        return y

    def backward(self, gy):
        """gy (N, C, Ho, Wo) -> gx (N, C, H, W); adds omega's gradient."""
        saved, y_shape, dtype = self._saved_or_raise(self._saved)
        check_grad_output(gy, y_shape, dtype, where=f"{self._name}.backward")
        gx, gomega = gated_pool2d_backward(gy, saved)
        self.omega.grad += gomega
        return gx
