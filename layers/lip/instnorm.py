r"""Instance normalisation (Ulyanov, Vedaldi & Lempitsky, 2016) over (H, W), per sample and channel:
the functional pair, the op "instance_norm2d" and the :class:`InstanceNorm2d` module (the
normalisation of LIP's logit module).

Per (n, c) plane, over its M = H*W values (two-pass: the variance is the mean of the squared
deviations from the mean, never E[x^2] - E[x]^2)::

    mu = 1/M sum x,   var = 1/M sum (x - mu)^2,   r = 1 / sqrt(var + eps)
    xhat = (x - mu) r,   y = gamma_c xhat + beta_c          (gamma = 1, beta = 0 without affine)

Backward, by hand. With ``gxhat = gy gamma_c`` and both mu and var depending on every x of the
plane (``dmu/dx = 1/M``, ``dvar/dx = 2 (x - mu) / M``, ``dxhat_p/dx_q = r ([p = q] - 1/M - xhat_p xhat_q / M)``)::

    gx     = r (gxhat - mean(gxhat) - xhat mean(gxhat xhat))      (means over the plane)
    ggamma = sum_{n, h, w} gy xhat,      gbeta = sum_{n, h, w} gy

(the two subtracted terms project gxhat off the constant vector and off xhat, so a plane's gx
sums to 0 and is orthogonal to xhat). A plane of one value (M = 1) or of equal values has
var = 0: xhat = 0, y = beta, and gx = 0 for M = 1.

Device-agnostic ``xp`` code (NumPy, CuPy or gpu-sim), in float64 whatever x's dtype, results in
x's dtype: no kernel of its own (the op's cpu and gpu slots are :data:`minignn.ops.XP`). The
statistics are used per sample in training and in evaluation alike: no running statistics, so
the module behaves the same in both modes. The forward keeps a reference to x (the backward
recomputes xhat from x, mu and r): do not modify x in place between forward and backward.
"""
from __future__ import annotations

import numpy as np

from minignn import backend, cases, ops
from minignn.checks import check_array, check_backward, check_grad_output, check_positive_int, check_real
from minignn.module import Module, Parameter

from . import reference as _ref

__all__ = ["InstanceNorm2d", "instance_norm2d_forward", "instance_norm2d_backward", "InstanceNormSaved"]

_AXES = (2, 3)


class InstanceNormSaved:
    """What :func:`instance_norm2d_backward` needs (treat as opaque): ``x`` (N, C, H, W), ``mean``
    and ``rstd`` (N, C, 1, 1) float64, ``gamma`` ((C,) or None: no affine), ``affine``."""

    __slots__ = ("x", "mean", "rstd", "gamma", "affine")

    def __init__(self, x, mean, rstd, gamma, affine):
        self.x, self.mean, self.rstd, self.gamma, self.affine = x, mean, rstd, gamma, affine

    def __repr__(self):
        return f"InstanceNormSaved(x{tuple(self.x.shape)}, affine={self.affine})"


def _check_affine(gamma, beta, x, where):
    if (gamma is None) != (beta is None):
        raise ValueError(f"{where}: gamma, beta: expected both arrays (affine) or both None, got"
                         f" {'None' if gamma is None else 'an array'} and {'None' if beta is None else 'an array'}")
    if gamma is None:
        return
    c = x.shape[1]
    for name, v in (("gamma", gamma), ("beta", beta)):
        check_array(v, name, where=where)
        if tuple(v.shape) != (c,):
            raise ValueError(f"{where}: {name}: expected shape (C,) = ({c},), got {tuple(v.shape)}")
        if np.dtype(v.dtype) != np.dtype(x.dtype):
            raise TypeError(f"{where}: {name}: expected dtype {np.dtype(x.dtype)} (x's dtype), got {v.dtype}")
        if backend.device_of(v) != backend.device_of(x):
            raise TypeError(f"{where}: {name}: expected an array on the same device as x ({backend.device_of(x)}),"
                            f" got one on {backend.device_of(v)}")


def instance_norm2d_forward(x, gamma=None, beta=None, eps=1e-5):
    """Instance normalisation ``y = gamma (x - mu) / sqrt(var + eps) + beta`` per (n, c) plane.

    Parameters
    ----------
    x : array (N, C, H, W), float32 or float64, H, W >= 1
    gamma, beta : arrays (C,) of x's dtype and device, or both None (no affine)
    eps : float > 0

    Returns
    -------
    y : array (N, C, H, W), x's dtype
    saved : InstanceNormSaved
        Pass to :func:`instance_norm2d_backward`.
    """
    where = "instance_norm2d_forward"
    check_array(x, "x", ndim=4, where=where)
    if x.shape[2] * x.shape[3] < 1:
        raise ValueError(f"{where}: x: expected H, W >= 1 (statistics over each plane), got shape {tuple(x.shape)}")
    _check_affine(gamma, beta, x, where)
    eps = check_real(eps, "eps", where, low=0.0, low_open=True)
    x64 = x.astype(np.float64)
    mean = x64.mean(axis=_AXES, keepdims=True)
    d = x64 - mean
    var = (d * d).mean(axis=_AXES, keepdims=True)
    xp = backend.get_array_module(x)
    rstd = 1.0 / xp.sqrt(var + eps)
    y = d * rstd
    if gamma is not None:
        y = y * gamma.astype(np.float64)[None, :, None, None] + beta.astype(np.float64)[None, :, None, None]
    return y.astype(x.dtype), InstanceNormSaved(x, mean, rstd, gamma, gamma is not None)


def instance_norm2d_backward(gy, saved):
    """Gradients of :func:`instance_norm2d_forward`.

    Parameters
    ----------
    gy : array (N, C, H, W), x's dtype and device
    saved : InstanceNormSaved

    Returns
    -------
    gx : array (N, C, H, W), x's dtype
    ggamma, gbeta : arrays (C,) of x's dtype (sums over N, H, W), or None without the affine
    """
    where = "instance_norm2d_backward"
    gy = check_backward(gy, saved, InstanceNormSaved, "instance_norm2d_forward", where, shape=None)
    x = saved.x
    xhat = (x.astype(np.float64) - saved.mean) * saved.rstd
    g = gy.astype(np.float64)
    gxhat = g if saved.gamma is None else g * saved.gamma.astype(np.float64)[None, :, None, None]
    gx = saved.rstd * (gxhat - gxhat.mean(axis=_AXES, keepdims=True)
                       - xhat * (gxhat * xhat).mean(axis=_AXES, keepdims=True))
    if not saved.affine:
        return gx.astype(x.dtype), None, None
    ggamma = (g * xhat).sum(axis=(0, 2, 3)).astype(x.dtype)
    gbeta = g.sum(axis=(0, 2, 3)).astype(x.dtype)
    return gx.astype(x.dtype), ggamma, gbeta


# ---------------------------------------------------------------------------------- the op table
def _sample(draw, dtype):
    """Planes of 1 to 7 x 1 to 7 values (one-value planes included), standard normal times a
    scale in {0.1, 1, 50} around an offset in {0, 1000} (the two-pass variance), with the affine
    or without, eps 1e-5 or 1e-2."""
    n, c = cases.planes(draw)
    h, w = draw.int(1, 7), draw.int(1, 7)
    x = (cases.values(draw, (n, c, h, w), np.float64, draw.choice([0.1, 1.0, 50.0]))
         + draw.choice([0.0, 1000.0])).astype(dtype)
    if draw.bool():
        gamma = (1.0 + cases.values(draw, (c,), np.float64, 0.5)).astype(dtype)
        beta = cases.values(draw, (c,), dtype)
    else:
        gamma = beta = None
    return ops.Case((x, gamma, beta), dict(eps=draw.choice([1e-5, 1e-2])))


def _forward(x, gamma, beta, eps=1e-5):
    y, saved = instance_norm2d_forward(x, gamma, beta, eps)
    return (y,), saved


def _forward_ref(x, gamma, beta, eps=1e-5):
    return (_ref.instance_norm2d_forward_ref(x, gamma, beta, eps),), (x, gamma, eps, gamma is not None)


def _backward_ref(saved, gy):
    x, gamma, eps, affine = saved
    return _ref.instance_norm2d_backward_ref(x, gamma, gy, eps, affine)


ops.register(ops.Op(
    "instance_norm2d", "(x - mean) / sqrt(var + eps) per (n, c) plane over H and W, then gamma, beta per channel",
    forward=_forward, backward=lambda saved, gy: instance_norm2d_backward(gy, saved),
    reference=(_forward_ref, _backward_ref), cpu=ops.XP, gpu=ops.XP, sample=_sample,
    tol=lambda dtype: dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-9, atol=1e-10)))


# ---------------------------------------------------------------------------------- the module
class InstanceNorm2d(Module):
    r"""Instance normalisation over (H, W) per sample and channel, ``y = weight xhat + bias``.

    Parameters
    ----------
    channels : int
        C.
    eps : float > 0
        Added to the variance (default 1e-5).
    affine : bool
        A trained per-channel scale ``weight`` (gamma, initialised to 1) and shift ``bias``
        (beta, initialised to 0); without it y = xhat.

    Attributes
    ----------
    weight, bias : Parameter (C,) float32 (only with ``affine``)

    Train and eval modes are identical (each sample's own statistics; no running statistics).

    Shapes
    ------
    x (N, C, H, W) -> y (N, C, H, W).
    """

    def __init__(self, channels, eps=1e-5, affine=True):
        super().__init__()
        where = "InstanceNorm2d"
        self.channels = check_positive_int(channels, "channels", where)
        self.eps = check_real(eps, "eps", where, low=0.0, low_open=True)
        if not isinstance(affine, (bool, np.bool_)):
            raise ValueError(f"{where}: affine: expected True or False, got {affine!r}")
        self.affine = bool(affine)
        if self.affine:
            self.weight = Parameter(np.ones(self.channels, dtype=np.float32))
            self.bias = Parameter(np.zeros(self.channels, dtype=np.float32))
        self._saved = None

    def extra_repr(self):
        return f"{self.channels}, eps={self.eps:g}, affine={self.affine}"

    def forward(self, x):
        """x (N, C, H, W) -> y (N, C, H, W)."""
        where = "InstanceNorm2d.forward"
        check_array(x, "x", ndim=4, where=where, channels=self.channels,
                    dtype=self.weight.data.dtype if self.affine else None)
        gamma, beta = (self.weight.data, self.bias.data) if self.affine else (None, None)
        y, self._saved = instance_norm2d_forward(x, gamma, beta, self.eps)
        return y

    def backward(self, gy):
        """gy (N, C, H, W) -> gx (N, C, H, W); adds into ``weight.grad`` and ``bias.grad``."""
        saved = self._saved_or_raise(self._saved)
        check_grad_output(gy, saved.x.shape, dtype=saved.x.dtype, where="InstanceNorm2d.backward")
        gx, ggamma, gbeta = instance_norm2d_backward(gy, saved)
        if self.affine:
            self.weight.grad += ggamma
            self.bias.grad += gbeta
        return gx

    def _moved(self, device, dtype):
        self._saved = None
