r"""Global feature guidance (GFGP, Kobayashi ICCV 2019, Eq. 11-12): the pooling parameters of
max-entropy pooling predicted from statistics of the whole feature map.

::

    t   = t(X)                                  per-channel statistic over H x W, (N, kC)
    lam = s ( V_lam ReLU(U t) )                 (N, C)       "mlp", U: (D, kC), V_lam: (C, D)
    lam = s ( V_lam t )                         (N, C)       "slp", V_lam: (C, kC)
    rho = V_rho ReLU(U t)                       (N, C, K)    prior="predicted", shares U

* :func:`global_stats_forward` / :func:`global_stats_backward`: t in {"avg" (k=1),
  "avg+std" (k=2: the avg block then the std block), "max" (k=1)}; Numba kernels in ``cpu.py``,
  the NumPy oracle in ``reference.py``.
* :func:`local_stats_forward` / :func:`local_stats_backward`: the *local* ablation (paper
  Table 1b), t over each pooling window instead of the whole map, (N, kC, Ho, Wo); built on
  the average / max pooling functionals (the window's real cells, padding excluded).
* :class:`GFGPMapping`: the MLP (or SLP) from t to lam (and rho) with its hand-written backward.
  Given the local t (N, kC, Ho, Wo) it applies the same weights at every position (1x1
  convolutions) and returns lam (N, C, Ho, Wo).

The "max" statistic's gradient goes to the first argmax (row-major) of each plane.
"""
from __future__ import annotations

import math

import numpy as np

from minignn import backend, cases, ops
from minignn.checks import check_array, check_grad_output, check_positive_int
from minignn.init import get_rng, uniform_fan_in
from minignn.module import Module, Parameter

from .._window import Window, pair
from . import cpu as _cpu
from . import reference as _ref

STATS = ("avg", "avg+std", "max")
ACTIVATIONS = ("sigmoid", "softplus", "tanh", "identity")
MLPS = ("mlp", "slp")
PRIORS = (None, "param", "predicted")

#: eps inside the standard deviation, ``std = sqrt(var + STD_EPS)``: keeps std > 0 and its
#: gradient ``(x - avg) / (HW std)`` finite for constant channels (same value as batch norm's).
STD_EPS = 1e-5

__all__ = ["GFGPMapping", "global_stats_forward", "global_stats_backward", "local_stats_forward",
           "local_stats_backward", "stat_multiplicity", "STATS", "ACTIVATIONS", "STD_EPS"]


def _check_choice(value, name: str, choices, where: str):
    if not any(value is c or (isinstance(value, str) and value == c) for c in choices):
        raise ValueError(f"{where}: {name}: expected one of {list(choices)}, got {value!r}")
    return value


def stat_multiplicity(stat: str) -> int:
    """k, the number of statistics per channel: 2 for "avg+std", else 1."""
    _check_choice(stat, "stat", STATS, "stat_multiplicity")
    return 2 if stat == "avg+std" else 1


# ================================================================================================
# global statistics
# ================================================================================================
def global_stats_forward(x, stat: str = "avg", eps: float = STD_EPS):
    """Per-channel statistics of x over H x W.

    Parameters
    ----------
    x : (N, C, H, W) float array
    stat : {"avg", "avg+std", "max"}
    eps : float
        Added to the variance under the square root ("avg+std" only).

    Returns
    -------
    t : (N, C) for "avg" and "max"; (N, 2C) for "avg+std" (``t[:, :C]`` avg, ``t[:, C:]`` std)
    saved : opaque, for :func:`global_stats_backward`
    """
    where = "global_stats_forward"
    check_array(x, "x", ndim=4, where=where)
    _check_choice(stat, "stat", STATS, where)
    if x.shape[2] * x.shape[3] == 0:
        raise ValueError(f"{where}: x: expected a non-empty H x W, got shape {tuple(x.shape)}")
    t, aux = ops.kernels("gfgp_stats", x).forward(x, stat, eps)
    saved = {"stat": stat, "shape": tuple(x.shape), "dtype": x.dtype, "t_shape": tuple(t.shape), "aux": aux}
    return t, saved


def global_stats_backward(gt, saved, out=None):
    """Gradient of the global statistics with respect to x.

    Parameters
    ----------
    gt : (N, kC) array, the gradient of t
    saved : what :func:`global_stats_forward` returned
    out : (N, C, H, W) array or None
        When given, the gradient is *added* into ``out`` in place (saves a pass over x when the
        caller already holds a gradient, as :class:`MaxEntPool2d` does) and ``out`` is returned.

    Returns
    -------
    gx : (N, C, H, W)
    """
    where = "global_stats_backward"
    if not isinstance(saved, dict) or "stat" not in saved:
        raise TypeError(f"{where}: saved: expected what global_stats_forward returned, got {type(saved).__name__}")
    check_grad_output(gt, saved["t_shape"], saved["dtype"], where=where, name="gt")
    backward = ops.kernels("gfgp_stats", gt).backward
    if out is not None:
        check_grad_output(out, saved["shape"], saved["dtype"], where=where, name="out")
        if not out.flags.c_contiguous:   # the kernels add into C-contiguous arrays only
            out += backward(gt, saved["stat"], saved["shape"], saved["aux"], None)
            return out
    return backward(gt, saved["stat"], saved["shape"], saved["aux"], out)


# ================================================================================================
# local statistics (the Table 1b ablation): t over each pooling window
# ================================================================================================
def local_stats_forward(x, stat: str = "avg", kernel_size=2, stride=None, padding=0, eps: float = STD_EPS):
    """Per-window statistics of every channel (the windows of the pooling that uses them).

    Built on the pooling functionals of :mod:`minignn.layers.pooling` (the window's *real* cells,
    padding excluded, as max-entropy pooling does): "avg" is average pooling, "max" max pooling,
    and "avg+std" adds ``std = sqrt(max(E[x'^2] - E[x']^2, 0) + eps)`` from two average poolings
    of ``x' = x - mean(x[n, c])`` (the variance does not change under the per-plane shift, and the
    shift keeps E[x'^2] - E[x']^2 from cancelling catastrophically when a channel has a large
    offset).

    Returns
    -------
    t : (N, kC, Ho, Wo)
    saved : opaque, for :func:`local_stats_backward`
    """
    where = "local_stats_forward"
    check_array(x, "x", ndim=4, where=where)
    _check_choice(stat, "stat", STATS, where)
    from ..pooling import avg_pool2d_forward, max_pool2d_forward

    geom = (kernel_size, stride, padding)
    saved = {"stat": stat, "dtype": x.dtype, "x_shape": tuple(x.shape), "geom": geom}
    if stat == "max":
        t, saved["arg"] = max_pool2d_forward(x, *geom)
    elif stat == "avg":
        t = avg_pool2d_forward(x, *geom)
    else:
        xp = backend.get_array_module(x)
        shift = x.mean(axis=(2, 3), keepdims=True)
        xs = x - shift
        mu = avg_pool2d_forward(xs, *geom)  # the window mean of x'; of x it is mu + shift
        var = avg_pool2d_forward(xs * xs, *geom) - mu * mu
        std = xp.sqrt(xp.maximum(var, 0) + eps)
        t = xp.concatenate([mu + shift, std], axis=1)
        saved.update(xs=xs, mu=mu, std=std, pos=var > 0)
    saved["t_shape"] = tuple(t.shape)
    return t, saved


def local_stats_backward(gt, saved, out=None):
    """Gradient of the local statistics: gt (N, kC, Ho, Wo) -> gx (N, C, H, W), added into
    ``out`` in place when given.

    avg+std: with g_mu, g_s the two blocks of gt and x' the shifted input,
    ``d std = (d E[x'^2] - 2 mu' d mu') / (2 std)``, so ``g_E[x'] = g_mu - g_s mu' / std`` and
    ``g_E[x'^2] = g_s / (2 std)`` with ``d E[x'^2] / dx = 2 x'`` (the shift drops out exactly).
    """
    where = "local_stats_backward"
    if not isinstance(saved, dict) or "geom" not in saved:
        raise TypeError(f"{where}: saved: expected what local_stats_forward returned, got {type(saved).__name__}")
    check_grad_output(gt, saved["t_shape"], saved["dtype"], where=where, name="gt")
    from ..pooling import avg_pool2d_backward, max_pool2d_backward

    stat, x_shape, geom = saved["stat"], saved["x_shape"], saved["geom"]
    if stat == "max":
        gx = max_pool2d_backward(gt, saved["arg"], x_shape, *geom)
    elif stat == "avg":
        gx = avg_pool2d_backward(gt, x_shape, *geom)
    else:
        c = gt.shape[1] // 2
        g_mu, g_s = gt[:, :c], gt[:, c:]
        mu, std = saved["mu"], saved["std"]
        g_s = g_s * saved["pos"]  # the clamp max(var, 0) has no slope where it is active
        gx = avg_pool2d_backward(g_mu - g_s * mu / std, x_shape, *geom)
        gx += 2 * saved["xs"] * avg_pool2d_backward(g_s / (2 * std), x_shape, *geom)
    if out is None:
        return gx
    out += gx
    return out


# ================================================================================================
# the op table
# ================================================================================================
def _sample_global(draw, dtype):
    """Distinct values (the max statistic is differentiable), every statistic."""
    n, c = cases.planes(draw)
    x = cases.distinct(draw, (n, c, draw.int(1, 6), draw.int(1, 6)), dtype, gap=0.05)
    return ops.Case((x,), dict(stat=draw.choice(STATS)))


def _sample_local(draw, dtype):
    k, s, p = cases.window(draw, max_s=3)
    n, c = cases.planes(draw, max_c=2)
    h, w = cases.spatial(draw, k, p, extra=4)
    x = cases.distinct(draw, (n, c, h, w), dtype, gap=min(0.05, 2.0 / max(1, n * c * h * w)))  # within +-1
    return ops.Case((x,), dict(stat=draw.choice(STATS), kernel_size=k, stride=s, padding=p))


def _local_tol(dtype):
    """float32: the window variance E[x'^2] - E[x']^2 is off by ~eps32 E[x'^2] (<= 1e-7 for these
    inputs within +-1), relative to var + STD_EPS >= 1e-5: up to ~1e-3 relative in std and its
    gradient (the price of two average poolings instead of a two-pass variance per window)."""
    return dict(rtol=2e-3, atol=2e-4) if dtype == np.float32 else dict(rtol=1e-9, atol=1e-10)


def _global_forward(x, stat):
    t, saved = global_stats_forward(x, stat)
    return (t,), saved


def _local_forward(x, stat, **win):
    t, saved = local_stats_forward(x, stat, **win)
    return (t,), saved


def _local_forward_ref(x, stat, kernel_size, stride, padding):
    w = Window.of(kernel_size, stride, padding)
    win = dict(kernel_size=w.kernel, stride=w.stride, padding=w.padding)
    return (_ref.local_stats_reference(x, stat, **win),), (x, stat, win)


ops.register(ops.Op(
    "gfgp_stats", "per-channel statistics over H x W (avg, avg+std, max): GFGP's input t",
    forward=_global_forward, backward=lambda saved, gt: (global_stats_backward(gt, saved),),
    reference=(lambda x, stat: ((_ref.global_stats_reference(x, stat),), (x, stat)),
               lambda saved, gt: (_ref.global_stats_backward_reference(gt, saved[0], saved[1]),)),
    cpu=ops.Kernels(_cpu.global_stats_fwd_cpu, _cpu.global_stats_bwd_cpu), gpu="minignn.layers.gfgp.gpu:KERNELS",
    sample=_sample_global))

ops.register(ops.Op(
    "gfgp_local_stats", "the statistics over each pooling window instead (the local ablation)",
    forward=_local_forward, backward=lambda saved, gt: (local_stats_backward(gt, saved),),
    reference=(_local_forward_ref,
               lambda saved, gt: (_ref.local_stats_backward_reference(gt, saved[0], saved[1], **saved[2]),)),
    cpu=ops.XP, gpu=ops.XP, needs=("avg_pool2d", "max_pool2d"), sample=_sample_local,
    tol=_local_tol))


# ================================================================================================
# the mapping t -> lam (, rho)
# ================================================================================================
def _sigmoid(xp, z):
    return 0.5 * (xp.tanh(0.5 * z) + 1.0)  # never overflows


def _activate(name: str, xp, z):
    if name == "sigmoid":
        return _sigmoid(xp, z)
    if name == "softplus":
        return xp.logaddexp(0.0, z).astype(z.dtype, copy=False)
    if name == "tanh":
        return xp.tanh(z)
    return z


def _activation_grad(name: str, xp, z, s):
    """ds/dz from the pre-activation z and the output s."""
    if name == "sigmoid":
        return s * (1.0 - s)
    if name == "softplus":
        return _sigmoid(xp, z)
    if name == "tanh":
        return 1.0 - s * s
    return xp.ones_like(z)


def _check_hidden(hidden, where: str) -> float:
    ok = (isinstance(hidden, (int, float, np.integer, np.floating)) and not isinstance(hidden, bool)
          and math.isfinite(float(hidden)) and float(hidden) > 0)
    if not ok:
        raise ValueError(f"{where}: hidden: expected a positive number (D = round(hidden * channels),"
                         f" e.g. 0.25, 0.5 or 1.0), got {hidden!r}")
    return float(hidden)


def _check_flag(v, name: str, where: str) -> bool:
    if not isinstance(v, (bool, np.bool_)):
        raise ValueError(f"{where}: {name}: expected True or False, got {v!r}")
    return bool(v)


class GFGPMapping(Module):
    r"""The GFGP mapping from statistics t to the pooling parameters lam (and rho), Eq. 11-12.

    ::

        a   = U t (+ b_U) (-> BN)           (N, D)      "mlp" only; h = ReLU(a)   ("slp": h = t)
        z   = V_lam h (+ b_lam) (-> BN)     (N, C)
        lam = s(z)                          (N, C)      s in {sigmoid, softplus, tanh, identity}
        rho = V_rho h (+ b_rho) (-> BN)     (N, C, K)   prior="predicted"; s' = identity, since rho
                                                        is a log-prior (any real value is meaningful)

    Backward (``gh`` collects both heads, they share U)::

        gz = glam * s'(z);   gV_lam += gz^T h;   gh = gz V_lam (+ grho V_rho)
        ga = gh * [a > 0];   gU += ga^T t;       gt = ga U

    Parameters
    ----------
    channels : int
        C, the number of pooled channels (lam has one value per channel).
    stat : {"avg", "avg+std", "max"}
        Which statistic t is fed (fixes the input width kC; k = 2 for "avg+std").
    hidden : positive float
        Hidden width as a fraction of C: ``D = max(1, round(hidden * C))`` (paper: 1/4, 1/2, 1).
        Ignored for "slp".
    mlp : {"mlp", "slp"}
        Two 1x1 layers with a ReLU between, or the single layer ``lam = s(V_lam t)``.
    activation : {"sigmoid", "softplus", "tanh", "identity"}
        s, the output non-linearity for lam (bounds its range).
    prior : {None, "param", "predicted"}
        None: no rho. "param": a trained (C, K) Parameter ``rho`` (zero init), the same for every
        sample. "predicted": rho from the shared hidden layer (``V_rho``: (K*C, D); row ``c*K + k``
        is channel c, window offset k, row-major in the window).
    kernel_size : int or (kh, kw)
        The pooling window (K = kh*kw; used only with a prior).
    heads : int
        How many values per channel the lam head gives (default 1): ``V_lam`` is (heads*C, D) and
        lam (N, heads*C), head h in columns ``[h*C, (h+1)*C)``, every head from the one shared
        hidden layer (Eq. 11); DPPool2d(params="gfgp") uses 2 (its theta_l and theta_a).
    bias : bool
        Add a bias after each 1x1 layer.
    batchnorm : bool
        Batch-normalise (over the batch, and positions for the local t) after each 1x1 layer, as
        the authors' released code does.
    rng : numpy.random.Generator or None
        Source of the initial weights (PyTorch Linear init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)));
        None uses the library generator (:func:`minignn.init.manual_seed`).

    Shapes
    ------
    forward(t): t (N, kC) -> lam (N, C), rho (N, C, K) / (C, K) / None;
    or t (N, kC, Ho, Wo) -> lam (N, C, Ho, Wo), rho (N, C, K, Ho, Wo) / (C, K) / None
    (lam (N, heads*C) and (N, heads*C, Ho, Wo) with ``heads``).
    backward(glam, grho=None) -> gt, same shape as t; grho None means a zero gradient for rho.
    """

    def __init__(self, channels, stat="avg", hidden=0.5, mlp="mlp", activation="sigmoid", prior=None,
                 kernel_size=2, bias=False, batchnorm=False, rng=None, heads=1):
        super().__init__()
        where = "GFGPMapping"
        c = check_positive_int(channels, "channels", where)
        _check_choice(stat, "stat", STATS, where)
        _check_choice(mlp, "mlp", MLPS, where)
        _check_choice(activation, "activation", ACTIVATIONS, where)
        _check_choice(prior, "prior", PRIORS, where)
        kh, kw = pair(kernel_size, "kernel_size", where)
        hidden = _check_hidden(hidden, where)
        heads = check_positive_int(heads, "heads", where)
        bias = _check_flag(bias, "bias", where)
        batchnorm = _check_flag(batchnorm, "batchnorm", where)
        if rng is not None and not isinstance(rng, np.random.Generator):
            raise TypeError(f"{where}: rng: expected a numpy.random.Generator or None, got {type(rng).__name__}")
        rng = rng if rng is not None else get_rng()

        self.channels, self.stat, self.mlp, self.activation, self.prior = c, stat, mlp, activation, prior
        self.kernel_size = (kh, kw)
        self.K = kh * kw
        self.in_features = stat_multiplicity(stat) * c
        self.hidden = max(1, int(round(hidden * c))) if mlp == "mlp" else 0
        self.bias, self.batchnorm, self.heads = bias, batchnorm, heads
        self._saved = None

        feat = self.in_features
        if mlp == "mlp":
            self._layer("U", self.hidden, feat, rng)
            feat = self.hidden
        self._layer("V_lam", heads * c, feat, rng)
        if prior == "predicted":
            self._layer("V_rho", c * self.K, feat, rng)
        elif prior == "param":
            self.rho = Parameter(np.zeros((c, self.K), dtype=np.float32))

    def _layer(self, name, n_out, n_in, rng):
        """One 1x1 layer: weight (n_out, n_in), optional bias and batch norm."""
        setattr(self, name, Parameter(uniform_fan_in((n_out, n_in), n_in, rng)))
        if self.bias:
            setattr(self, name + "_bias", Parameter(uniform_fan_in((n_out,), n_in, rng)))
        if self.batchnorm:
            from ..batchnorm import BatchNorm2d
            setattr(self, name + "_bn", BatchNorm2d(n_out))

    def extra_repr(self):
        return (f"channels={self.channels}, stat={self.stat!r}, mlp={self.mlp!r}, hidden={self.hidden}, "
                f"activation={self.activation!r}, prior={self.prior!r}, bias={self.bias}, batchnorm={self.batchnorm}"
                + (f", heads={self.heads}" if self.heads != 1 else ""))

    # --- layout: rows (M, F) for the matmuls, (N, F, Ho, Wo) for batch norm -------------------
    @staticmethod
    def _to_rows(t, geom):
        if geom is None:
            return t
        n, f, ho, wo = t.shape
        return t.transpose(0, 2, 3, 1).reshape(n * ho * wo, f)

    @staticmethod
    def _from_rows(r, geom):
        if geom is None:
            return r
        n, ho, wo = geom
        return r.reshape(n, ho, wo, r.shape[1]).transpose(0, 3, 1, 2)

    def _bn_forward(self, bn, r, geom):
        xp = backend.get_array_module(r)
        y = bn.forward(xp.ascontiguousarray(self._from_rows(r, geom) if geom else r[:, :, None, None]))
        return self._to_rows(y, geom) if geom else y[:, :, 0, 0]

    def _bn_backward(self, bn, g, geom):
        xp = backend.get_array_module(g)
        gx = bn.backward(xp.ascontiguousarray(self._from_rows(g, geom) if geom else g[:, :, None, None]))
        return self._to_rows(gx, geom) if geom else gx[:, :, 0, 0]

    def _linear_forward(self, name, r, geom):
        out = r @ getattr(self, name).data.T
        if self.bias:
            out += getattr(self, name + "_bias").data
        if self.batchnorm:
            out = self._bn_forward(getattr(self, name + "_bn"), out, geom)
        return out

    def _linear_backward(self, name, g, inp, geom):
        """Add the layer's parameter gradients; return the gradient of its input."""
        if self.batchnorm:
            g = self._bn_backward(getattr(self, name + "_bn"), g, geom)
        w = getattr(self, name)
        w.grad += g.T @ inp
        if self.bias:
            getattr(self, name + "_bias").grad += g.sum(axis=0)
        return g @ w.data

    # --- the two passes -------------------------------------------------------------------------
    def forward(self, t):
        """t (N, kC) or (N, kC, Ho, Wo) -> (lam, rho or None); see the class docstring."""
        where = "GFGPMapping.forward"
        dtype = self.V_lam.data.dtype
        if not hasattr(t, "ndim") or t.ndim not in (2, 4):
            raise ValueError(f"{where}: t: expected a 2-D (N, {self.in_features}) or 4-D (N, {self.in_features}, Ho, Wo)"
                             f" array, got shape {tuple(getattr(t, 'shape', ()))}")
        check_array(t, "t", where=where, channels=self.in_features, dtype=dtype)
        xp = backend.get_array_module(t)
        geom = (t.shape[0], t.shape[2], t.shape[3]) if t.ndim == 4 else None
        r = self._to_rows(t, geom)
        if self.mlp == "mlp":
            a = self._linear_forward("U", r, geom)
            h = xp.maximum(a, 0)
        else:
            a, h = None, r
        z = self._linear_forward("V_lam", h, geom)
        lam_r = _activate(self.activation, xp, z)
        lam = self._from_rows(lam_r, geom)

        rho = None
        if self.prior == "param":
            rho = self.rho.data
        elif self.prior == "predicted":
            rho_r = self._linear_forward("V_rho", h, geom)  # (M, C*K), identity activation
            c, k = self.channels, self.K
            if geom is None:
                rho = rho_r.reshape(-1, c, k)
            else:
                n, ho, wo = geom
                rho = rho_r.reshape(n, ho, wo, c, k).transpose(0, 3, 4, 1, 2)
        self._saved = {"r": r, "a": a, "h": h, "z": z, "lam_r": lam_r, "geom": geom, "t_shape": tuple(t.shape),
                       "lam_shape": tuple(lam.shape), "rho_shape": None if rho is None else tuple(rho.shape)}
        return lam, rho

    def backward(self, glam, grho=None):
        """Gradient of t from the gradients of lam (and rho); adds the parameter gradients."""
        where = "GFGPMapping.backward"
        s = self._saved_or_raise(self._saved)
        dtype = self.V_lam.data.dtype
        check_grad_output(glam, s["lam_shape"], dtype, where=where, name="glam")
        if grho is not None:
            if self.prior is None:
                raise ValueError(f"{where}: grho: this mapping has no prior (prior=None), so expected None,"
                                 f" got an array of shape {tuple(grho.shape)}")
            check_grad_output(grho, s["rho_shape"], dtype, where=where, name="grho")
        xp = backend.get_array_module(glam)
        geom = s["geom"]

        ag = _activation_grad(self.activation, xp, s["z"], s["lam_r"])
        gz = self._to_rows(glam, geom) * ag
        gz[ag == 0] = 0                   # a saturated activation passes nothing, even an infinite glam
        gh = self._linear_backward("V_lam", gz, s["h"], geom)
        if self.prior == "param" and grho is not None:
            self.rho.grad += grho
        elif self.prior == "predicted" and grho is not None:
            if geom is None:
                gzr = grho.reshape(grho.shape[0], self.channels * self.K)
            else:
                gzr = grho.transpose(0, 3, 4, 1, 2).reshape(-1, self.channels * self.K)
            gh = gh + self._linear_backward("V_rho", gzr, s["h"], geom)
        if self.mlp == "mlp":
            ga = gh * (s["a"] > 0)
            gr = self._linear_backward("U", ga, s["r"], geom)
        else:
            gr = gh
        gt = self._from_rows(gr, geom)
        return xp.ascontiguousarray(gt)
