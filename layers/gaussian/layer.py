r"""GaussianPool2d: Gaussian-based pooling (Kobayashi, NeurIPS 2019) with eta predicted per sample
from the input's global statistics, and drawn with a learned spread in training.

::

    t              = the global average of x (or stat's statistic)       (N, kC)
    z              = V ReLU(U t)          (GFGPMapping, heads=2)          (N, 2C)
    mu_eta         = z[:, :C],   sigma_eta = sigmoid(z[:, C:])            (N, C) each
    train:  eta    = softplus(mu_eta + sigma_eta eps),  eps ~ N(0, 1)
                     eps (N, C, Ho, Wo)  stochasticity="window" (the authors' "HWCN")
                     eps (N, C)          stochasticity="channel" (the authors' "CN"), broadcast
                                         over the windows
                     no eps              stochasticity=None
    eval:   eta    = softplus(mu_eta)
    y              = gaussian_pool2d(x, eta)     (eta broadcast to (N, C, Ho, Wo))

softplus keeps eta > 0 (so y stays above the window's mean); ``softplus(u) = max(u, 0) +
log1p(exp(-|u|))`` never overflows. Backward, with ``u = mu_eta + sigma_eta eps`` and the
functional's ``geta`` (N, C, Ho, Wo)::

    gu         = geta sigmoid(u)                       (softplus' = sigmoid)
    g mu_eta   = sum over windows of gu
    g sigma_eta = sum over windows of gu eps            (0 without noise)
    gz         = [g mu_eta, g sigma_eta sigma_eta (1 - sigma_eta)]      (N, 2C)

then the mapping's backward and the global statistic's, added to the functional's gx (as DPP
does). For stochasticity="channel" u is (N, C), so geta is first summed over the windows.

The noise is drawn on the host in float64 (``standard_normal``) from the library generator
(:func:`minignn.init.get_rng`, looked up at each forward, so :func:`minignn.init.manual_seed`
takes effect) unless the layer was given its own ``rng`` (then that generator also initialised the
mapping, and the draws continue its sequence); it is cast to x's dtype and copied to x's device,
so a seeded run draws the same on every device. The draw of a forward is kept for its backward.
Initialisation: the mapping's (PyTorch Linear init: z near 0, so eta near softplus(0) = 0.693 and
sigma_eta near 1/2).
"""
from __future__ import annotations

import numpy as np

from minignn import backend
from minignn.checks import check_array, check_grad_output, check_positive_int
from minignn.module import Module

from .._window import Window
from ..gfgp import MLPS, STATS, GFGPMapping, _check_choice, global_stats_backward, global_stats_forward
from . import gaussian_pool2d_backward, gaussian_pool2d_forward

__all__ = ["GaussianPool2d", "STOCHASTICITY"]

#: The forms of the training noise: one eps per window, one per (sample, channel), or none.
STOCHASTICITY = ("window", "channel", None)


def _softplus(xp, u):
    """log(1 + e^u) without overflow: max(u, 0) + log1p(e^-|u|)."""
    return xp.maximum(u, 0) + xp.log1p(xp.exp(-xp.abs(u)))


def _sigmoid(xp, u):
    """1 / (1 + e^-u) without overflow: e^-|u| is at most 1."""
    e = xp.exp(-xp.abs(u))
    return xp.where(u >= 0, 1 / (1 + e), e / (1 + e))


class GaussianPool2d(Module):
    r"""Gaussian-based pooling, ``y = mu + eta sigma`` per window, with eta from a GFGP network
    (see the module docstring).

    Parameters
    ----------
    channels : int
        C, the input channels.
    kernel_size, stride, padding : int or (h, w)
        Window geometry, as MaxPool2d; ``stride=None`` means ``stride = kernel_size``; padded
        cells are excluded from every window (padding must be smaller than the kernel).
    stochasticity : {"window", "channel", None}
        The training noise: one eps per window (default), one per sample and channel, or none
        (then train and eval are the same).
    stat, hidden, mlp, bias, batchnorm
        The GFGP mapping: the statistic t (default the global average), D = round(hidden * C)
        (default C/2), "mlp" or "slp", a bias (default True) and batch norm after each layer.
    rng : numpy.random.Generator or None
        Source of the initial weights and of the training noise; None: the library generator
        (looked up at each forward).

    Attributes
    ----------
    last_eta : array or None
        The eta of the last forward, x's dtype: (N, C, Ho, Wo) for a "window" training forward,
        (N, C) otherwise. None before the first forward.

    Shapes
    ------
    x (N, C, H, W) -> y (N, C, Ho, Wo), ``Ho = (H + 2 ph - kh) // sh + 1`` (same for W).
    """

    def __init__(self, channels, kernel_size=2, stride=None, padding=0, stochasticity="window", stat="avg",
                 hidden=0.5, mlp="mlp", bias=True, batchnorm=False, rng=None):
        super().__init__()
        where = "GaussianPool2d"
        c = check_positive_int(channels, "channels", where)
        win = Window.of(kernel_size, stride, padding, where)
        _check_choice(stochasticity, "stochasticity", STOCHASTICITY, where)
        _check_choice(stat, "stat", STATS, where)
        _check_choice(mlp, "mlp", MLPS, where)
        if rng is not None and not isinstance(rng, np.random.Generator):
            raise TypeError(f"{where}: rng: expected a numpy.random.Generator or None, got {type(rng).__name__}"
                            f" (make one with numpy.random.default_rng(seed))")
        self.channels = c
        self.kernel_size, self.stride, self.padding = win.kernel, win.stride, win.padding
        self.stochasticity, self.stat = stochasticity, stat
        self.rng = rng
        self.mapping = GFGPMapping(c, stat=stat, hidden=hidden, mlp=mlp, activation="identity", bias=bias,
                                   batchnorm=batchnorm, rng=rng, heads=2)
        self.last_eta = None
        self._saved = None

    def extra_repr(self):
        return (f"{self.channels}, kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"stochasticity={self.stochasticity!r}, stat={self.stat!r}")

    def _noise(self, shape, x):
        """eps ~ N(0, 1) of ``shape``, drawn in float64 on the host, in x's dtype on x's device."""
        from minignn.init import get_rng
        rng = self.rng if self.rng is not None else get_rng()
        eps = rng.standard_normal(shape).astype(x.dtype)
        return backend.to_device(eps, backend.device_of(x)) if backend.is_gpu_array(x) else eps

    def forward(self, x):
        """x (N, C, H, W) -> y (N, C, Ho, Wo)."""
        where = "GaussianPool2d.forward"
        check_array(x, "x", ndim=4, where=where, channels=self.channels, dtype=self.mapping.V_lam.data.dtype)
        win = Window(self.kernel_size, self.stride, self.padding)
        y_shape = win.out_shape(x.shape, where)
        xp = backend.get_array_module(x)
        c = self.channels
        t, stats_saved = global_stats_forward(x, self.stat)
        z, _ = self.mapping.forward(t)
        if not bool(xp.isfinite(z).all()):
            raise ValueError(f"{where}: x: expected values the GFGP mapping can take in {np.dtype(x.dtype)},"
                             f" got |x| up to {float(xp.abs(x).max()):.3g}: eta would not be finite")
        z_mu, s_eta = z[:, :c], _sigmoid(xp, z[:, c:])
        eps = None
        if self.training and self.stochasticity is not None:
            if self.stochasticity == "window":
                eps = self._noise(y_shape, x)
                u = z_mu[:, :, None, None] + s_eta[:, :, None, None] * eps
            else:
                eps = self._noise(y_shape[:2], x)
                u = z_mu + s_eta * eps
        else:
            u = z_mu
        u = xp.ascontiguousarray(u)
        eta = _softplus(xp, u).astype(x.dtype, copy=False)
        self.last_eta = eta
        eta_w = eta if eta.ndim == 4 else xp.ascontiguousarray(xp.broadcast_to(eta[:, :, None, None], y_shape))
        y, saved = gaussian_pool2d_forward(x, eta_w, self.kernel_size, self.stride, self.padding)
        self._saved = (saved, stats_saved, u, eps, s_eta, tuple(y.shape), y.dtype)
        return y

    def backward(self, gy):
        """gy (N, C, Ho, Wo) -> gx (N, C, H, W); adds the mapping's parameter gradients."""
        saved, stats_saved, u, eps, s_eta, y_shape, dtype = self._saved_or_raise(self._saved)
        check_grad_output(gy, y_shape, dtype, where="GaussianPool2d.backward")
        gx, geta = gaussian_pool2d_backward(gy, saved)
        xp = backend.get_array_module(gx)
        if u.ndim == 2:                                  # one eta per (n, c): sum its windows first
            geta = geta.sum(axis=(2, 3))
        gu = geta * _sigmoid(xp, u)
        g_mu = gu.sum(axis=(2, 3)) if gu.ndim == 4 else gu
        if eps is None:
            g_s = xp.zeros_like(g_mu)
        else:
            g_s = (gu * eps).sum(axis=(2, 3)) if gu.ndim == 4 else gu * eps
        gz = xp.concatenate([g_mu, g_s * s_eta * (1 - s_eta)], axis=1).astype(dtype, copy=False)
        gt = self.mapping.backward(xp.ascontiguousarray(gz), None)
        return global_stats_backward(gt, stats_saved, out=gx)
