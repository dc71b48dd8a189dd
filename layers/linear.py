r"""Fully connected layer.

    y = x @ w.T + b          x (N, in), w (out, in), b (out,), y (N, out)
    gx = gy @ w              gw = gy.T @ x              gb = sum_n gy[n]

Three matrix products (BLAS on the CPU, cuBLAS through CuPy): device-agnostic ``xp`` code, no
kernel of its own.
"""
from __future__ import annotations

from minignn import backend
from minignn.checks import check_array, check_grad_output, check_positive_int
from minignn.init import uniform_fan_in
from minignn.module import Module, Parameter

__all__ = ["Linear"]


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
        xp = backend.get_array_module(x)
        y = xp.matmul(x, w.T)
        if self.bias is not None:
            y += self.bias.data
        self._saved = (x, y.shape)
        return y

    def backward(self, gy):
        """gy (N, out_features) -> gx (N, in_features); adds into ``weight.grad`` and ``bias.grad``."""
        x, y_shape = self._saved_or_raise(self._saved)
        check_grad_output(gy, y_shape, dtype=x.dtype, where="Linear.backward")
        xp = backend.get_array_module(x)
        self.weight.grad += xp.matmul(gy.T, x)
        if self.bias is not None:
            self.bias.grad += gy.sum(axis=0)
        return xp.matmul(gy, self.weight.data)

    def _moved(self, device, dtype):
        self._saved = None

    def extra_repr(self):
        return f"{self.in_features}, {self.out_features}" + ("" if self.bias is not None else ", bias=False")
