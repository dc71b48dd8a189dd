"""Parameter-free layers that only move values: Subsample2d, ShortcutA and Identity.

    Subsample2d:  y = x[:, :, ::s, ::s]                      gx = gy scattered back, zeros elsewhere
    ShortcutA:    y = x[:, :, ::s, ::s] with zero channels   gx = gy's real channels scattered back
    Identity:     y = x                                      gx = gy

Subsample2d is the "skip" pooling (strided subsampling) and ShortcutA / Identity are the
shortcuts of the CIFAR ResNets (He et al.'s option A). All three are device-agnostic ``xp`` code.
"""
from __future__ import annotations

import numpy as np

from minignn import backend, cases, ops
from minignn.checks import check_array, check_grad_output
from minignn.module import Module

__all__ = ["Subsample2d", "ShortcutA", "Identity", "subsample2d_forward", "subsample2d_backward"]


def subsample2d_forward(x, stride: int = 2):
    """y = x[:, :, ::stride, ::stride], C-contiguous."""
    return backend.get_array_module(x).ascontiguousarray(x[:, :, ::stride, ::stride])


def subsample2d_backward(gy, x_shape, stride: int = 2):
    """gx (``x_shape``): gy at the kept positions, zero elsewhere."""
    gx = backend.get_array_module(gy).zeros(x_shape, dtype=gy.dtype)
    gx[:, :, ::stride, ::stride] = gy
    return gx


def _forward_ref(x, stride):
    n, c, h, w = x.shape
    ho, wo = -(-h // stride), -(-w // stride)
    y = np.empty((n, c, ho, wo), dtype=x.dtype)
    for i in range(ho):
        for j in range(wo):
            y[:, :, i, j] = x[:, :, i * stride, j * stride]
    return (y,), (x.shape, stride)


def _backward_ref(saved, gy):
    (n, c, h, w), stride = saved
    gx = np.zeros((n, c, h, w), dtype=gy.dtype)
    for i in range(gy.shape[2]):
        for j in range(gy.shape[3]):
            gx[:, :, i * stride, j * stride] = gy[:, :, i, j]
    return (gx,)


def _sample(draw, dtype):
    n, c = cases.planes(draw)
    return ops.Case((cases.values(draw, (n, c, draw.int(1, 7), draw.int(1, 7)), dtype),), dict(stride=draw.int(1, 3)))


ops.register(ops.Op(
    "subsample2d", "strided subsampling x[:, :, ::s, ::s] (the skip pooling)",
    forward=lambda x, stride: ((subsample2d_forward(x, stride),), (x.shape, stride)),
    backward=lambda saved, gy: (subsample2d_backward(gy, *saved),),
    reference=(_forward_ref, _backward_ref), cpu=ops.XP, gpu=ops.XP, sample=_sample))


class Subsample2d(Module):
    """Strided subsampling (the "skip" pooling): ``y = x[:, :, ::s, ::s]``.

    Shapes: x (N, C, H, W) -> y (N, C, ceil(H/s), ceil(W/s)). Backward scatters gy back to the
    kept positions; the others get zero gradient.
    """

    def __init__(self, stride: int = 2):
        super().__init__()
        if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
            raise ValueError(f"Subsample2d: stride: expected an integer >= 1, got {stride!r}")
        self.stride = stride
        self._saved = None

    def forward(self, x):
        check_array(x, "x", ndim=4, where="Subsample2d.forward")
        y = subsample2d_forward(x, self.stride)
        self._saved = (x.shape, y.shape, y.dtype)
        return y

    def backward(self, gy):
        xshape, yshape, dtype = self._saved_or_raise(self._saved)
        check_grad_output(gy, yshape, dtype, where="Subsample2d.backward")
        return subsample2d_backward(gy, xshape, self.stride)

    def extra_repr(self):
        return f"stride={self.stride}"


class ShortcutA(Module):
    """He et al.'s option-A shortcut: ``x[:, :, ::s, ::s]`` with ``out_channels - in_channels``
    zero channels added (half before, half after). No parameters.

    Shapes: x (N, Cin, H, W) -> y (N, Cout, ceil(H/s), ceil(W/s)).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        if out_channels < in_channels:
            raise ValueError(f"ShortcutA: out_channels: expected >= in_channels={in_channels}, got {out_channels}")
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        self.pad_before = (out_channels - in_channels) // 2
        self._saved = None

    def forward(self, x):
        check_array(x, "x", ndim=4, where="ShortcutA.forward", channels=self.in_channels)
        xp = backend.get_array_module(x)
        s, a = self.stride, self.pad_before
        xs = x[:, :, ::s, ::s]
        y = xp.zeros((x.shape[0], self.out_channels) + xs.shape[2:], dtype=x.dtype)
        y[:, a:a + self.in_channels] = xs
        self._saved = (x.shape, y.shape, y.dtype)
        return y

    def backward(self, gy):
        xshape, yshape, dtype = self._saved_or_raise(self._saved)
        check_grad_output(gy, yshape, dtype, where="ShortcutA.backward")
        xp = backend.get_array_module(gy)
        s, a = self.stride, self.pad_before
        gx = xp.zeros(xshape, dtype=gy.dtype)
        gx[:, :, ::s, ::s] = gy[:, a:a + self.in_channels]
        return gx

    def extra_repr(self):
        return f"{self.in_channels}, {self.out_channels}, stride={self.stride}"


class Identity(Module):
    """``y = x`` (the shortcut of a block that keeps its shape)."""

    def forward(self, x):
        return x

    def backward(self, gy):
        return gy
