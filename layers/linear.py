r"""Fully connected layer.

    y = x @ w.T + b          x (N, in), w (out, in), b (out,), y (N, out)
    gx = gy @ w              gw = gy.T @ x              gb = sum_n gy[n]

Three matrix products (BLAS on the CPU, cuBLAS through CuPy): device-agnostic ``xp`` code, no
kernel of its own.
"""
from __future__ import annotations

import numpy as np

from minignn import backend, cases, ops
from minignn.checks import check_array, check_grad_output, check_positive_int
from minignn.init import uniform_fan_in
from minignn.module import Module, Parameter

__all__ = ["Linear", "linear_forward", "linear_backward"]


def linear_forward(x, w, b=None):
    """y (N, out) = x (N, in) @ w.T (w: (out, in)) + b (out,)."""
    xp = backend.get_array_module(x)
    y = xp.matmul(x, w.T)
    if b is not None:
        y += b
    return y


def linear_backward(gy, x, w, has_bias=True):
    """(gx, gw, gb) of :func:`linear_forward` for the upstream gradient gy (N, out); gb is None
    without a bias."""
    xp = backend.get_array_module(x)
    gw = xp.matmul(gy.T, x)
    gb = gy.sum(axis=0) if has_bias else None
    return xp.matmul(gy, w), gw, gb


def _sample(draw, dtype):
    n, fin, fout = cases.batch(draw, max_n=5), draw.int(1, 9), draw.int(1, 7)
    b = cases.values(draw, (fout,), dtype) if draw.bool() else None
    return ops.Case((cases.values(draw, (n, fin), dtype), cases.values(draw, (fout, fin), dtype), b))


def _forward_ref(x, w, b):
    y = np.einsum("ni,oi->no", x.astype(np.float64), w.astype(np.float64))
    return ((y if b is None else y + b).astype(x.dtype),), (x, w, b is not None)


def _backward_ref(saved, gy):
    x, w, has_bias = saved
    g64 = gy.astype(np.float64)
    gx = np.einsum("no,oi->ni", g64, w).astype(x.dtype)
    gw = np.einsum("no,ni->oi", g64, x).astype(x.dtype)
    return gx, gw, g64.sum(axis=0).astype(x.dtype) if has_bias else None


ops.register(ops.Op(
    "linear", "y = x @ w.T + b (three GEMMs)",
    forward=lambda x, w, b: ((linear_forward(x, w, b),), (x, w, b is not None)),
    backward=lambda saved, gy: linear_backward(gy, *saved),
    reference=(_forward_ref, _backward_ref), cpu=ops.XP, gpu=ops.XP, sample=_sample))


class Linear(Module):
    """``y = x @ weight.T + bias``.

    Parameters
    ----------
    in_features, out_features : int
    bias : bool
    rng : numpy.random.Generator or None (the library-wide generator)

    Shapes: x (N, in_features) -> y (N, out_features). Parameters: ``weight``
    (out_features, in_features) and ``bias`` (out_features,), both from
    ``U(-1/sqrt(in_features), 1/sqrt(in_features))`` (PyTorch's default).
    """

    def __init__(self, in_features, out_features, bias=True, rng=None):
        super().__init__()
        self.in_features = check_positive_int(in_features, "in_features", "Linear")
        self.out_features = check_positive_int(out_features, "out_features", "Linear")
        self.weight = Parameter(uniform_fan_in((self.out_features, self.in_features), self.in_features, rng))
        self.bias = Parameter(uniform_fan_in((self.out_features,), self.in_features, rng)) if bias else None
        self._saved = None

    def forward(self, x):
        """x (N, in_features) -> y (N, out_features)."""
        w = self.weight.data
        check_array(x, "x", ndim=2, where="Linear.forward", channels=self.in_features, dtype=w.dtype)
        y = linear_forward(x, w, None if self.bias is None else self.bias.data)
        self._saved = (x, y.shape)
        return y

    def backward(self, gy):
        """gy (N, out_features) -> gx (N, in_features); adds into ``weight.grad`` and ``bias.grad``."""
        x, y_shape = self._saved_or_raise(self._saved)
        check_grad_output(gy, y_shape, dtype=x.dtype, where="Linear.backward")
        gx, gw, gb = linear_backward(gy, x, self.weight.data, self.bias is not None)
        self.weight.grad += gw
        if gb is not None:
            self.bias.grad += gb
        return gx

    def _moved(self, device, dtype):
        self._saved = None

    def extra_repr(self):
        return f"{self.in_features}, {self.out_features}" + ("" if self.bias is not None else ", bias=False")
