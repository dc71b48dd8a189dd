r"""DPPool2d: detail-preserving pooling (Saeedan et al., CVPR 2018) with its two parameters per
channel trained, or predicted per sample by the GFGP mapping (the "GFGP+DPP" of the GFGP paper,
Kobayashi ICCV 2019, Sec. 5.3).

::

    params="channel"  theta_l, theta_a             (C,)    trained Parameters
    params="gfgp"     (z_l, z_a) = V ReLU(U t)     (N, C)  each; t = the global average of x,
                                                           U: (D, C), V: (2C, D), D = C/2
    gamma = exp(theta_l) / 2,   alpha = exp(min(theta_a, 10))      (theta = z for "gfgp")
    y = dpp_pool2d(x, gamma, alpha)

``gamma = exp(theta_l) / 2`` is the power ``lambda = exp(theta_l)`` of the authors' ``|d|^lambda``
written on ``v = d^2 + eps``; ``exp`` keeps gamma > 0 and alpha > 0 with exact gradients, the clip
keeps alpha <= e^10. Backward, by the chain rule on the functional's ``(ggamma, galpha)``::

    dL/dtheta_l = ggamma gamma
    dL/dtheta_a = galpha alpha [theta_a <= 10]        (0 above the clip)

and for "gfgp" ``(dL/dz_l, dL/dz_a)`` goes through the mapping's backward (one shared hidden
layer, ``GFGPMapping(heads=2)`` with the identity activation) and the global average's.
gamma is floored at the dtype's smallest normal number (exp(theta_l) / 2 underflows to 0 for
theta_l below about -87 in float32, where gamma = 0 would be average pooling anyway; its
gradient there is the exact ggamma * exp(theta_l) / 2, i.e. ~0). Deterministic: train and eval
behave the same.

Initialisation as the authors' released PyTorch code (``torch.rand(C)`` for both): theta_l and
theta_a uniform in [0, 1) per channel, i.e. gamma in [0.5, 1.36) and alpha in [1, e). The GFGP
mapping starts from PyTorch's Linear init (its outputs near 0: gamma near 1/2, alpha near 1).
"""
from __future__ import annotations

import numpy as np

from minignn import backend
from minignn.checks import check_array, check_grad_output, check_positive_int, check_real
from minignn.init import get_rng
from minignn.module import Module, Parameter

from ..gfgp import MLPS, STATS, GFGPMapping, _check_choice, global_stats_backward, global_stats_forward
from . import _check_kernel, _check_variant, dpp_pool2d_backward, dpp_pool2d_forward

__all__ = ["DPPool2d", "PARAM_FORMS", "THETA_A_MAX"]

PARAM_FORMS = ("channel", "gfgp")
#: alpha = exp(min(theta_a, THETA_A_MAX)).
THETA_A_MAX = 10.0


def _theta_init(value, name, c, rng, where):
    """None: U[0, 1) per channel (the authors' torch.rand); a finite number: that constant."""
    if value is None:
        return rng.uniform(0.0, 1.0, c).astype(np.float32)
    v = check_real(value, name, where)
    with np.errstate(over="ignore"):
        v32 = np.float32(v)
    if not np.isfinite(v32):
        raise ValueError(f"{where}: {name}: expected a finite real number that fits float32, got {value!r}")
    return np.full(c, v32, dtype=np.float32)


class DPPool2d(Module):
    r"""Detail-preserving pooling over k x k windows at stride k (see the module docstring).

    Parameters
    ----------
    channels : int
        C, the input channels.
    kernel_size : int >= 1
        k (default 2: 2x2 windows, stride 2); trailing rows and columns in no window are dropped.
    variant : {"sym", "asym"}
        ``v = d^2 + eps`` (default, "sym lite") or ``v = ReLU(d)^2 + eps`` ("asym lite").
    params : {"channel", "gfgp"}
        Trained (C,) theta_l and theta_a, or both predicted per sample by the GFGP mapping.
    theta_l_init, theta_a_init : float or None
        "channel" only: the starting theta of every channel, or None (default) for U[0, 1) per
        channel, as the authors' code.
    stat, hidden, mlp, bias, batchnorm
        The GFGP mapping ("gfgp" only): the statistic t (default the global average), D =
        round(hidden * C) (default C/2), "mlp" or "slp", a bias and batch norm after each layer.
    rng : numpy.random.Generator or None
        Source of the initial values (None: the library generator).

    Attributes
    ----------
    last_gamma, last_alpha : arrays
        gamma and alpha of the last forward: (C,) for "channel", (N, C) for "gfgp" (x's dtype).

    Shapes
    ------
    x (N, C, H, W) -> y (N, C, H // k, W // k).
    """

    def __init__(self, channels, kernel_size=2, variant="sym", params="channel", theta_l_init=None,
                 theta_a_init=None, stat="avg", hidden=0.5, mlp="mlp", bias=False, batchnorm=False, rng=None):
        super().__init__()
        where = "DPPool2d"
        c = check_positive_int(channels, "channels", where)
        k = _check_kernel(kernel_size, where)
        _check_variant(variant, where)
        _check_choice(params, "params", PARAM_FORMS, where)
        _check_choice(stat, "stat", STATS, where)
        _check_choice(mlp, "mlp", MLPS, where)
        if rng is not None and not isinstance(rng, np.random.Generator):
            raise TypeError(f"{where}: rng: expected a numpy.random.Generator or None, got {type(rng).__name__}")
        self.channels, self.kernel_size, self.variant, self.params, self.stat = c, k, variant, params, stat
        self.last_gamma = self.last_alpha = None
        self._saved = None
        if params == "gfgp":
            self.mapping = GFGPMapping(c, stat=stat, hidden=hidden, mlp=mlp, activation="identity", bias=bias,
                                       batchnorm=batchnorm, rng=rng, heads=2)
        else:
            rng = rng if rng is not None else get_rng()
            self.theta_l = Parameter(_theta_init(theta_l_init, "theta_l_init", c, rng, where))
            self.theta_a = Parameter(_theta_init(theta_a_init, "theta_a_init", c, rng, where))

    def extra_repr(self):
        extra = f", stat={self.stat!r}" if self.params == "gfgp" else ""
        return (f"{self.channels}, kernel_size={self.kernel_size}, variant={self.variant!r}, "
                f"params={self.params!r}{extra}")

    def _dtype(self):
        return self.parameters()[0].data.dtype

    @staticmethod
    def _gamma_alpha(xp, tl, ta, dtype):
        """(gamma, alpha, dalpha/dtheta_a) from theta_l, theta_a (any shape)."""
        gamma = xp.maximum(xp.exp(tl) / 2, np.finfo(dtype).tiny).astype(dtype, copy=False)
        alpha = xp.exp(xp.minimum(ta, THETA_A_MAX)).astype(dtype, copy=False)
        return gamma, alpha, alpha * (ta <= THETA_A_MAX)

    def forward(self, x):
        """x (N, C, H, W) -> y (N, C, H // k, W // k)."""
        where = "DPPool2d.forward"
        check_array(x, "x", ndim=4, where=where, channels=self.channels, dtype=self._dtype())
        xp = backend.get_array_module(x)
        stats_saved = None
        with np.errstate(over="ignore"):
            if self.params == "gfgp":
                t, stats_saved = global_stats_forward(x, self.stat)
                z, _ = self.mapping.forward(t)
                c = self.channels
                tl, ta = z[:, :c], z[:, c:]
                gamma, alpha, dalpha = self._gamma_alpha(xp, tl, ta, x.dtype)
                if not (bool(xp.isfinite(z).all()) and bool(xp.isfinite(gamma).all())):
                    raise ValueError(f"{where}: x: expected values the GFGP mapping can take in {np.dtype(x.dtype)},"
                                     f" got |x| up to {float(xp.abs(x).max()):.3g}: gamma = exp(z_l) / 2 would not"
                                     f" be finite")
                gamma, alpha = xp.ascontiguousarray(gamma), xp.ascontiguousarray(alpha)
            else:
                tl, ta = self.theta_l.data, self.theta_a.data
                gamma, alpha, dalpha = self._gamma_alpha(xp, tl, ta, x.dtype)
                if not bool(xp.isfinite(gamma).all()):
                    raise ValueError(f"{where}: theta_l: expected values with a finite gamma = exp(theta_l) / 2 in"
                                     f" {np.dtype(x.dtype)}, got theta_l up to {float(tl.max()):.6g}")
        self.last_gamma, self.last_alpha = gamma, alpha
        y, saved = dpp_pool2d_forward(x, gamma, alpha, self.kernel_size, self.variant)
        self._saved = (saved, stats_saved, xp.exp(tl) / 2, dalpha, tuple(y.shape), y.dtype)
        return y

    def backward(self, gy):
        """gy (N, C, Ho, Wo) -> gx (N, C, H, W); adds the gradients of theta_l and theta_a (or of
        the mapping's weights)."""
        saved, stats_saved, dgamma, dalpha, y_shape, dtype = self._saved_or_raise(self._saved)
        check_grad_output(gy, y_shape, dtype, where="DPPool2d.backward")
        gx, ggamma, galpha = dpp_pool2d_backward(gy, saved)
        if self.params == "gfgp":
            xp = backend.get_array_module(gx)
            gz = xp.concatenate([ggamma * dgamma, galpha * dalpha], axis=1).astype(dtype, copy=False)
            gt = self.mapping.backward(xp.ascontiguousarray(gz), None)
            return global_stats_backward(gt, stats_saved, out=gx)
        self.theta_l.grad += ggamma * dgamma
        self.theta_a.grad += galpha * dalpha
        return gx

