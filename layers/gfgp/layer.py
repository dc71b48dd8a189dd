r"""MaxEntPool2d: max-entropy pooling (Eq. 7) with its parameter lam in the paper's four forms,
GFGP (global feature guidance, Eq. 11-12) being the default.

::

    "const"  lam = lam_init                       one fixed float
    "param"  lam = theta                          (C,)          a trained Parameter
    "gfgp"   lam = s(V ReLU(U t(X)))              (N, C)        t over the whole H x W
    "local"  lam = s(V ReLU(U t_local(X)))        (N, C, Ho, Wo) t over each pooling window

    Y = maxent_pool2d(X, lam, rho)

Backward: with ``(gx_pool, glam, grho)`` from the pooling's backward,
``gx = gx_pool + dt/dX^T (mapping.backward(glam, grho))`` for the guided forms.

The layer lives beside its :class:`GFGPMapping` (``minignn.layers.gfgp``); the pooling it drives
is the plain functional pair of ``minignn.layers.maxent``, which knows nothing of GFGP.
"""
from __future__ import annotations

import math

import numpy as np

from minignn import backend
from minignn.checks import check_array, check_grad_output, check_positive_int
from minignn.module import Module, Parameter

from .._window import Window
from ..maxent import maxent_pool2d_backward, maxent_pool2d_forward
from . import (ACTIVATIONS, MLPS, PRIORS, STATS, GFGPMapping, _check_choice, global_stats_backward,
               global_stats_forward, local_stats_backward, local_stats_forward)

LAM_FORMS = ("const", "param", "gfgp", "local")

__all__ = ["MaxEntPool2d", "LAM_FORMS"]


class MaxEntPool2d(Module):
    r"""Max-entropy pooling whose lam is constant, a trained per-channel parameter, or guided by
    global (GFGP) or local statistics of the input. A drop-in replacement for MaxPool2d.

    Parameters
    ----------
    channels : int
        C, the input channels.
    kernel_size, stride, padding : int or (h, w)
        Window geometry, as MaxPool2d; ``stride=None`` means ``stride = kernel_size``; padded
        cells are excluded from every window (padding must be smaller than the kernel).
    lam : {"const", "param", "gfgp", "local"}
        How lam is formed (see the module docstring). Default "gfgp", the paper's best.
    lam_init : float
        The constant ("const") or the initial per-channel value ("param").
    stat, hidden, mlp, activation, bias, batchnorm, rng
        The :class:`~minignn.layers.gfgp.GFGPMapping` settings ("gfgp" and "local" only; for
        "local" the statistic is taken over each pooling window). Defaults are the paper's best: global average, D = C/2,
        MLP, sigmoid, no bias or batch norm.
    prior : {None, "param", "predicted"}
        The position prior rho: None (rho = 0, the default), "param" (a trained (C, K) Parameter,
        zero init; any lam form) or "predicted" (from the GFGP MLP; "gfgp" only, since the
        pooling takes one rho per sample and channel, not per output position).

    Attributes
    ----------
    last_lam : array
        lam of the last forward (also in eval mode): (C,) for "const"/"param", (N, C) for "gfgp",
        (N, C, Ho, Wo) for "local". For analysis (e.g. the paper's Fig. 3 histograms).
    last_rho : array or None
        rho of the last forward: (C, K), (N, C, K) or None.

    Shapes
    ------
    x (N, C, H, W) -> y (N, C, Ho, Wo), ``Ho = (H + 2 ph - kh) // sh + 1`` (same for W).
    """

    def __init__(self, channels, kernel_size=2, stride=None, padding=0, lam="gfgp", lam_init=1.0, stat="avg",
                 hidden=0.5, mlp="mlp", activation="sigmoid", prior=None, bias=False, batchnorm=False, rng=None):
        super().__init__()
        where = "MaxEntPool2d"
        c = check_positive_int(channels, "channels", where)
        win = Window.of(kernel_size, stride, padding, where)
        k, s, p = win.kernel, win.stride, win.padding
        _check_choice(lam, "lam", LAM_FORMS, where)
        _check_choice(stat, "stat", STATS, where)
        _check_choice(mlp, "mlp", MLPS, where)
        _check_choice(activation, "activation", ACTIVATIONS, where)
        _check_choice(prior, "prior", PRIORS, where)
        if (isinstance(lam_init, bool) or not isinstance(lam_init, (int, float, np.integer, np.floating))
                or not math.isfinite(float(lam_init))):
            raise ValueError(f"{where}: lam_init: expected a finite number, got {lam_init!r}")
        if prior == "predicted" and lam != "gfgp":
            raise ValueError(f"{where}: prior: 'predicted' needs lam='gfgp' (rho is predicted by the GFGP MLP, one"
                             f" per sample and channel), got lam={lam!r}; use prior='param' or None")

        self.channels = c
        self.kernel_size, self.stride, self.padding = k, s, p
        self.lam_form, self.lam_init, self.prior, self.stat = lam, float(lam_init), prior, stat
        self.last_lam = None
        self.last_rho = None
        self._saved = None
        if lam in ("gfgp", "local"):
            self.mapping = GFGPMapping(c, stat=stat, hidden=hidden, mlp=mlp, activation=activation, prior=prior,
                                       kernel_size=k, bias=bias, batchnorm=batchnorm, rng=rng)
        else:
            if lam == "param":
                self.lam = Parameter(np.full(c, self.lam_init, dtype=np.float32))
            if prior == "param":
                self.rho = Parameter(np.zeros((c, k[0] * k[1]), dtype=np.float32))

    def extra_repr(self):
        return (f"{self.channels}, kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"lam={self.lam_form!r}" + (f", lam_init={self.lam_init}" if self.lam_form in ("const", "param") else "")
                + f", prior={self.prior!r}")

    def _param_dtype(self):
        params = self.parameters()
        return params[0].data.dtype if params else None

    def forward(self, x):
        """x (N, C, H, W) -> y (N, C, Ho, Wo)."""
        where = "MaxEntPool2d.forward"
        check_array(x, "x", ndim=4, where=where, channels=self.channels, dtype=self._param_dtype())
        Window(self.kernel_size, self.stride, self.padding).out_hw(*x.shape[2:], where)
        xp = backend.get_array_module(x)

        stats_saved = None
        if self.lam_form == "const":
            lam = self.lam_init
            rho = self.rho.data if self.prior == "param" else None
            self.last_lam = xp.full((self.channels,), self.lam_init, dtype=x.dtype)
        elif self.lam_form == "param":
            lam = self.lam.data
            rho = self.rho.data if self.prior == "param" else None
            self.last_lam = lam.copy()
        else:
            if self.lam_form == "gfgp":
                t, stats_saved = global_stats_forward(x, self.stat)
            else:
                t, stats_saved = local_stats_forward(x, self.stat, self.kernel_size, self.stride, self.padding)
            lam, rho = self.mapping.forward(t)
            if not bool(xp.isfinite(lam).all()) or (rho is not None and not bool(xp.isfinite(rho).all())):
                raise ValueError(
                    f"{where}: x: expected values the GFGP mapping can take in {np.dtype(x.dtype)}, got |x| up to"
                    f" {float(xp.abs(x).max()):.3g}: its {self.stat!r} statistics (up to {float(xp.abs(t).max()):.3g})"
                    f" overflow the mapping, so lam{'/rho' if rho is not None else ''} would not be finite")
            self.last_lam = lam
        self.last_rho = None if rho is None else rho.copy()

        y, pool_saved = maxent_pool2d_forward(x, lam, rho, self.kernel_size, self.stride, self.padding)
        self._saved = (pool_saved, stats_saved, tuple(y.shape), y.dtype)
        return y

    def backward(self, gy):
        """gy (N, C, Ho, Wo) -> gx (N, C, H, W); adds the gradients of lam / rho / the MLP."""
        pool_saved, stats_saved, y_shape, y_dtype = self._saved_or_raise(self._saved)
        check_grad_output(gy, y_shape, y_dtype, where="MaxEntPool2d.backward")
        gx, glam, grho = maxent_pool2d_backward(gy, pool_saved)
        if self.lam_form in ("const", "param"):
            if self.lam_form == "param":
                self.lam.grad += glam
            if self.prior == "param":
                self.rho.grad += grho
            return gx
        gt = self.mapping.backward(glam, grho if self.prior is not None else None)
        if self.lam_form == "gfgp":
            return global_stats_backward(gt, stats_saved, out=gx)
        return local_stats_backward(gt, stats_saved, out=gx)
