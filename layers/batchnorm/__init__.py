"""Batch normalisation over the channels of NCHW arrays (Ioffe & Szegedy, 2015).

Per channel ``c``, over the ``M = N*H*W`` values of the batch:

    xhat = (x - mean) / sqrt(var + eps),      y = gamma * xhat + beta

Train mode uses the batch ``mean`` and biased ``var`` and moves the running statistics towards
them as PyTorch does: ``running_mean <- (1 - momentum) * running_mean + momentum * mean`` and
``running_var <- (1 - momentum) * running_var + momentum * var * M / (M - 1)`` (the *unbiased*
variance). Eval mode normalises with the running statistics.

Backward. ``gbeta = sum gy`` and ``ggamma = sum gy * xhat`` (sums over N, H, W). In eval mode the
statistics are constants, so ``gx = gamma / sqrt(var + eps) * gy``. In train mode ``mean`` and
``var`` depend on every ``x`` of the channel; differentiating through them gives

    gx = gamma / sqrt(var + eps) * (gy - mean(gy) - xhat * mean(gy * xhat))

(the two subtracted terms are the paths through ``mean`` and through ``var``: projecting out
the components of ``gy`` along the constant vector and along ``xhat``).

The CPU kernels (``cpu.py``) fuse each pass per channel and accumulate in float64; the NumPy
oracle is ``reference.py``. The GPU kernels (``kernels.cu``, launched by ``gpu.py``) follow the same
numerics, with per-channel sums gathered per (image, channel) row and then over the images.
"""
from __future__ import annotations

import numpy as np

from minignn import backend, cases, ops
from minignn.checks import check_array, check_grad_output, check_positive_int, check_probability
from minignn.module import Module, Parameter

from . import cpu as _cpu
from . import reference as _ref

__all__ = ["BatchNorm2d", "batch_norm2d_forward", "batch_norm2d_backward"]


def _fwd_cpu(x, gamma, beta, mean, var, eps, training):
    x = np.ascontiguousarray(x)
    n, c, h, w = x.shape
    x3 = x.reshape(n, c, h * w)
    y = np.empty_like(x)
    if training:
        mean64, var64 = np.empty(c), np.empty(c)
    else:
        mean64, var64 = np.asarray(mean, dtype=np.float64).copy(), np.asarray(var, dtype=np.float64).copy()
    invstd = np.empty(c)
    _cpu.batchnorm2d_fwd_cpu(x3, gamma, beta, float(eps), bool(training), mean64, var64, invstd,
                             y.reshape(n, c, h * w))
    return y, mean64, var64, invstd


def _bwd_cpu(gy, x, gamma, mean, invstd, training):
    gy = np.ascontiguousarray(gy)
    x = np.ascontiguousarray(x)
    n, c, h, w = x.shape
    gx = np.empty_like(gy)
    ggamma, gbeta = np.empty(c), np.empty(c)
    _cpu.batchnorm2d_bwd_cpu(x.reshape(n, c, h * w), gy.reshape(n, c, h * w), gamma, mean, invstd,
                             bool(training), gx.reshape(n, c, h * w), ggamma, gbeta)
    return gx, ggamma, gbeta


def batch_norm2d_forward(x, gamma, beta, mean=None, var=None, eps=1e-5, training=True):
    """Functional batch norm.

    Parameters
    ----------
    x : (N, C, H, W) float array
    gamma, beta : (C,) arrays, x's dtype
    mean, var : (C,) arrays, the statistics to use when ``training`` is False
    eps : float > 0
    training : bool
        True: normalise with the batch statistics (needs ``N*H*W > 1``).

    Returns
    -------
    y : (N, C, H, W), x's dtype
    mean, var : (C,) float64, the statistics used (batch mean and *biased* batch variance in
        training mode)
    invstd : (C,) float64, ``1 / sqrt(var + eps)``; pass it with ``mean`` to the backward.
    """
    where = "batch_norm2d_forward"
    check_array(x, "x", ndim=4, where=where)
    c = x.shape[1]
    for name, v in (("gamma", gamma), ("beta", beta)):
        check_array(v, name, ndim=1, where=where, channels=c, channel_axis=0, dtype=x.dtype)
    if training:
        if x.shape[0] * x.shape[2] * x.shape[3] < 2:
            raise ValueError(f"{where}: x: expected more than 1 value per channel when training "
                             f"(N*H*W > 1), got shape {tuple(x.shape)}")
    else:
        if mean is None or var is None:
            raise ValueError(f"{where}: mean, var: expected the running statistics when training=False, got None")
        for name, v in (("mean", mean), ("var", var)):
            check_array(v, name, ndim=1, where=where, channels=c, channel_axis=0)
    return ops.kernels("batchnorm2d", x).forward(x, gamma, beta, mean, var, eps, training)


def batch_norm2d_backward(gy, x, gamma, mean, invstd, training=True):
    """Gradients of :func:`batch_norm2d_forward`: returns ``gx`` (x's shape and dtype) and
    ``ggamma, gbeta`` ((C,) float64 sums, to be added to the parameters' gradients)."""
    where = "batch_norm2d_backward"
    check_grad_output(gy, x.shape, x.dtype, where=where)
    return ops.kernels("batchnorm2d", gy).backward(gy, x, gamma, mean, invstd, training)


# ---------------------------------------------------------------------------------- the op table
# forward(x, gamma, beta, mean, var, eps=, training=) -> ((y, mean, var), saved); gradients for y only
def _forward(x, gamma, beta, mean=None, var=None, eps=1e-5, training=True):
    y, m, v, invstd = batch_norm2d_forward(x, gamma, beta, mean, var, eps, training)
    return (y, m, v), (x, gamma, m, invstd, training)


def _backward(saved, gy):
    gx, ggamma, gbeta = batch_norm2d_backward(gy, *saved)
    return gx, ggamma, gbeta, None, None


def _forward_ref(x, gamma, beta, mean=None, var=None, eps=1e-5, training=True):
    zero = np.zeros(x.shape[1])                  # running statistics: not used in training mode
    y, _ = _ref.batchnorm2d_forward_ref(x, gamma, beta, zero if mean is None else mean,
                                        zero if var is None else var, training, eps=eps)
    x64 = x.astype(np.float64)
    m, v = (x64.mean(axis=_ref.AXES), x64.var(axis=_ref.AXES)) if training else (mean, var)
    return (y, m, v), (x, gamma, mean, var, training, eps)


def _backward_ref(saved, gy):
    x, gamma, mean, var, training, eps = saved
    gx, ggamma, gbeta = _ref.batchnorm2d_backward_ref(gy, x, gamma, mean, var, training, eps=eps)
    return gx, ggamma, gbeta, None, None


def _sample(draw, dtype):
    """Channels of different means and scales (one draw in four with a large common offset,
    |mean| >> std); N*H*W > 1 in training mode; running statistics for eval mode."""
    training = draw.bool()
    n, c = cases.planes(draw, min_n=1)
    h, w = draw.int(1, 6), draw.int(1, 6)
    if training and n * h * w < 2:
        w += 1
    rng = draw.rng
    offset = 100.0 if draw.int(0, 3) == 0 else 0.0
    x = (rng.standard_normal((n, c, h, w)) * rng.uniform(0.5, 3.0, (1, c, 1, 1))
         + rng.standard_normal((1, c, 1, 1)) + offset).astype(dtype)
    gamma = (rng.uniform(0.5, 2.0, c) * rng.choice([-1, 1], c)).astype(dtype)
    beta = rng.standard_normal(c).astype(dtype)
    mean = var = None
    if not training:
        mean, var = rng.standard_normal(c).astype(dtype), rng.uniform(0.5, 2.0, c).astype(dtype)
    return ops.Case((x, gamma, beta, mean, var), dict(training=training), wrt=(0, 1, 2))


ops.register(ops.Op(
    "batchnorm2d", "per-channel normalisation with batch (train) or running (eval) statistics",
    forward=_forward, backward=_backward, reference=(_forward_ref, _backward_ref),
    cpu=ops.Kernels(_fwd_cpu, _bwd_cpu), gpu="minignn.layers.batchnorm.gpu:KERNELS", sample=_sample,
    tol=lambda dtype: dict(rtol=1e-4, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-11)))


class BatchNorm2d(Module):
    """Batch normalisation of each channel of an (N, C, H, W) array.

    Parameters
    ----------
    num_features : int
        C, the number of channels.
    eps : float, default 1e-5
        Added to the variance before the square root.
    momentum : float in [0, 1], default 0.1
        Weight of the batch statistics in the running-statistics update (PyTorch's convention).

    Attributes
    ----------
    weight, bias : Parameter (C,)
        gamma (initialised to 1) and beta (initialised to 0).
    running_mean, running_var : buffers (C,)
        Initialised to 0 and 1; updated in train mode, used in eval mode.

    Shapes: x (N, C, H, W) -> y (N, C, H, W). An empty batch (``N*H*W == 0``, N = 0 say) gives an
    empty output in either mode, leaves the running statistics alone and adds zero gradients; in
    train mode any other batch needs ``N*H*W > 1``.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        where = "BatchNorm2d"
        self.num_features = check_positive_int(num_features, "num_features", where)
        if isinstance(eps, bool) or not isinstance(eps, (int, float, np.floating)) or not eps > 0:
            raise ValueError(f"{where}: eps: expected a number > 0, got {eps!r}")
        self.eps = float(eps)
        self.momentum = check_probability(momentum, "momentum", where, upper_open=False)
        c = self.num_features
        self.weight = Parameter(np.ones(c, dtype=np.float32))
        self.bias = Parameter(np.zeros(c, dtype=np.float32))
        self.register_buffer("running_mean", np.zeros(c, dtype=np.float32))
        self.register_buffer("running_var", np.ones(c, dtype=np.float32))
        self._saved = None

    def forward(self, x):
        where = "BatchNorm2d.forward"
        check_array(x, "x", ndim=4, where=where, channels=self.num_features, dtype=self.weight.data.dtype)
        if x.size == 0:  # an empty batch: nothing to normalise, no statistics to learn from
            self._saved = (x, None, None, self.training)
            return backend.get_array_module(x).empty_like(x)
        if self.training and x.shape[0] * x.shape[2] * x.shape[3] < 2:
            raise ValueError(f"{where}: x: expected more than 1 value per channel in train mode "
                             f"(N*H*W > 1), got shape {tuple(x.shape)}; use eval() for single values")
        y, mean, var, invstd = batch_norm2d_forward(x, self.weight.data, self.bias.data, self.running_mean,
                                                    self.running_var, self.eps, self.training)
        if self.training:
            m, mom = x.shape[0] * x.shape[2] * x.shape[3], self.momentum
            xp = backend.get_array_module(x)
            rm, rv = self.running_mean, self.running_var
            rm[...] = (1.0 - mom) * rm + mom * xp.asarray(mean, dtype=rm.dtype)
            rv[...] = (1.0 - mom) * rv + mom * xp.asarray(var * (m / (m - 1.0)), dtype=rv.dtype)
        self._saved = (x, mean, invstd, self.training)
        return y

    def backward(self, gy):
        x, mean, invstd, training = self._saved_or_raise(self._saved)
        check_grad_output(gy, x.shape, x.dtype, where="BatchNorm2d.backward")
        if x.size == 0:  # an empty batch: zero parameter gradients, nothing to add
            return backend.get_array_module(gy).zeros_like(gy)
        gx, ggamma, gbeta = batch_norm2d_backward(gy, x, self.weight.data, mean, invstd, training)
        self.weight.grad += ggamma.astype(self.weight.grad.dtype)
        self.bias.grad += gbeta.astype(self.bias.grad.dtype)
        return gx

    def extra_repr(self):
        return f"{self.num_features}, eps={self.eps:g}, momentum={self.momentum:g}"
