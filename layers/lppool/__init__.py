r"""Power-average ("Lp") pooling, with a learned norm per channel: the forward/backward pair and
the :class:`LPPool2d` layer.

For channel c and output position (oh, ow) with window R (the cells of the kh x kw window that
lie inside the input: padded cells are *excluded*, and |R| counts the real cells only), for
inputs x >= 0 and a norm p = p[c] >= 1::

    y = ( 1/|R| sum_{q in R} x_q^p )^(1/p)

the p-th power mean of the window: p = 1 is average pooling (over the real cells), p = 2 the
root mean square, and as p grows y rises towards the window's max (max pooling in the limit);
for every p, max_R x |R|^(-1/p) <= y <= max_R x. It is computed max-normalised: with
m = max_R x, ``y = m (1/|R| sum_q (x_q / m)^p)^(1/p)``, so only numbers in [0, 1] are raised to
the p-th power and nothing overflows (float32 inputs near 1e30 with p = 6 give the right y; the
sums are in float64 anyway). A window whose cells are all 0 gives y = 0 (no division, no NaN,
no warning). The derivatives, by hand, for y > 0 with r_q = x_q / y::

    dy/dx_q = 1/|R| r_q^(p-1)                           (sums to 1 over the window for p = 1)
    dy/dp   = y/p 1/|R| sum_q r_q^p log r_q  >= 0       (0 log 0 = 0)

A cell with x_q = 0 gets dy/dx_q = 0 for p > 1 (and 1/|R| for p = 1, 0^0 = 1). At an all-zero
window (y = 0) y is not differentiable in x (it is |x| for a one-cell window); we take
dy/dx_q = 1/|R|, the limit of the gradient along the all-equal direction, where y = x exactly
for every p (so the gradient there is the average's, whatever p), and dy/dp = 0 (y = 0 for
every p). Overlapping windows (stride < kernel) add the contributions of every window a cell
is in; p's gradient is summed over N, Ho and Wo to p's shape.

Inputs: x (N, C, H, W), float32 or float64, every value >= 0: a negative value raises a
ValueError naming x and its most negative value (the check is one ``x.min()`` reduction on x's
device before the kernel runs; a NaN in x passes it and propagates to its windows, a window
holding +inf gives y = +inf; both get NaN gradients). ``p``: a Python/NumPy scalar or a 0-d
array (cast to x's dtype, where it must stay finite) or a (C,) array of x's dtype on x's device
(a TypeError otherwise: no silent casts), every value finite and >= 1 (a ValueError naming p and
the bad values otherwise). Its gradient follows maxent's convention for lam: a Python float for a
scalar p, a (C,) array of x's dtype for a (C,) p.

The CPU kernels are in ``cpu.py`` (Numba, parallel over planes, float64 arithmetic), the CUDA
ones in ``kernels.cu`` (glue in ``gpu.py``; also run by ``gpu-sim``), the NumPy oracle in
``reference.py``. The forward keeps a reference to x (not a copy) in ``saved``: do not modify x
in place between forward and backward; the backward recomputes each window's max and power mean
from x.

The layer :class:`LPPool2d` learns one p per channel as ``p = 1 + softplus(theta)`` (learned-norm
pooling, Gulcehre et al., 2014: p > 1 always, with an exact gradient).
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from minignn import backend, cases, ops
from minignn.checks import check_array, check_backward, check_grad_output, check_nonnegative, check_positive_int
from minignn.module import Module, Parameter

from .._window import Window
from . import cpu as _cpu
from . import reference as _ref

__all__ = ["LPPool2d", "lp_pool2d_forward", "lp_pool2d_backward", "LpSaved"]


class LpSaved:
    """What :func:`lp_pool2d_backward` needs from the forward (treat as opaque).

    Attributes: ``x`` (N, C, H, W) the (C-contiguous) input; ``p`` (C,) p in x's dtype (a scalar
    broadcast); ``p_form`` "scalar" or "C"; ``geometry`` (kh, kw, sh, sw, ph, pw); ``y_shape``
    (N, C, Ho, Wo).
    """

    __slots__ = ("x", "p", "p_form", "geometry", "y_shape")

    def __init__(self, x, p, p_form, geometry, y_shape):
        self.x, self.p, self.p_form = x, p, p_form
        self.geometry, self.y_shape = geometry, y_shape

    def __repr__(self):
        return f"LpSaved(x{tuple(self.x.shape)}, p={self.p_form}, geometry={self.geometry}, y{self.y_shape})"


def _is_scalar(v) -> bool:
    if isinstance(v, (bool, np.bool_)):
        return False
    if isinstance(v, numbers.Real):
        return True
    return hasattr(v, "shape") and hasattr(v, "dtype") and len(v.shape) == 0


def _normalise_p(p, x, where):
    """p -> ((C,) array of x's dtype on x's device, form "scalar" or "C")."""
    xp = backend.get_array_module(x)
    C = x.shape[1]
    dt = np.dtype(x.dtype)
    if _is_scalar(p):
        if hasattr(p, "dtype") and np.dtype(p.dtype).kind not in "fiu":
            raise TypeError(f"{where}: p: expected a real number, got dtype {p.dtype}")
        v = float(p)
        if not (math.isfinite(v) and v >= 1.0):
            raise ValueError(f"{where}: p: expected a finite number >= 1, got {v!r}")
        with np.errstate(over="ignore"):
            cast = dt.type(v)                  # what the kernels will see: 1e39 is inf in float32
        if not np.isfinite(cast):
            raise ValueError(f"{where}: p: expected a number representable in x's dtype {dt}"
                             f" (p <= {float(np.finfo(dt).max):.6g}), got {v!r}")
        return xp.full((C,), cast, dtype=dt), "scalar"
    if not hasattr(p, "shape") or not hasattr(p, "dtype"):
        raise TypeError(f"{where}: p: expected a float or an array of shape (C,) = ({C},), got {type(p).__name__}")
    if tuple(p.shape) != (C,):
        raise ValueError(f"{where}: p: expected a float or an array of shape (C,) = ({C},), got shape {tuple(p.shape)}")
    if np.dtype(p.dtype) != dt:
        raise TypeError(f"{where}: p: expected dtype {dt} (x's dtype), got {p.dtype}; convert with p.astype(x.dtype)")
    if backend.is_gpu_array(p) != backend.is_gpu_array(x):
        raise TypeError(f"{where}: p: expected an array on the same device as x ({backend.device_of(x)}),"
                        f" got one on {backend.device_of(p)}")
    host = backend.to_numpy(p)                 # C values: cheap
    bad = np.flatnonzero(~(np.isfinite(host) & (host >= 1)))
    if bad.size:
        shown = ", ".join(f"p[{int(i)}] = {float(host[i])!r}" for i in bad[:4]) + (", ..." if bad.size > 4 else "")
        raise ValueError(f"{where}: p: expected every value finite and >= 1, got {shown}")
    return xp.ascontiguousarray(p), "C"


def _forward_cpu(x, p, geometry, y_shape):
    y = np.empty(y_shape, dtype=x.dtype)
    _cpu.lppool2d_fwd_cpu(x, p, *geometry, y)
    return y


def _backward_cpu(x, p, gy, geometry):
    """(gx (N, C, H, W) in x's dtype, gp per plane (N, C) float64)."""
    gx = np.empty_like(x)
    gpp = np.empty(x.shape[:2], dtype=np.float64)
    _cpu.lppool2d_bwd_cpu(x, p, gy, *geometry, gx, gpp)
    return gx, gpp


def lp_pool2d_forward(x, p, kernel_size=2, stride=None, padding=0):
    """Power-average pooling ``y = (1/|R| sum_R x^p)^(1/p)`` over each window's real cells.

    Parameters
    ----------
    x : array (N, C, H, W), float32 or float64, every value >= 0
    p : float, 0-d array, or array (C,) of x's dtype
        The norm, every value finite and >= 1: 1 average pooling, large p close to max pooling.
    kernel_size, stride, padding : int or (int, int)
        Window geometry; ``stride=None`` means ``kernel_size``; padding < kernel_size, padded
        cells are left out of each window (and of its count |R|).

    Returns
    -------
    y : array (N, C, Ho, Wo), x's dtype; Ho = (H + 2 ph - kh) // sh + 1 (Wo likewise)
    saved : LpSaved
        Pass to :func:`lp_pool2d_backward`.
    """
    where = "lp_pool2d_forward"
    check_array(x, "x", ndim=4, where=where)
    win = Window.of(kernel_size, stride, padding, where)
    y_shape = win.out_shape(x.shape, where)
    p_arr, form = _normalise_p(p, x, where)
    check_nonnegative(x, where, "power-average pooling raises x to the power p")
    xp = backend.get_array_module(x)
    x = xp.ascontiguousarray(x)
    geometry = win.flat
    y = ops.kernels("lp_pool2d", x).forward(x, p_arr, geometry, y_shape)
    return y, LpSaved(x, p_arr, form, geometry, y_shape)


def lp_pool2d_backward(gy, saved):
    """Gradients of power-average pooling.

    Parameters
    ----------
    gy : array (N, C, Ho, Wo), the forward output's dtype
    saved : LpSaved, from :func:`lp_pool2d_forward`

    Returns
    -------
    gx : array (N, C, H, W), x's dtype
    gp : Python float (p was a scalar) or array (C,) of x's dtype: summed over N, Ho and Wo
    """
    where = "lp_pool2d_backward"
    gy = check_backward(gy, saved, LpSaved, "lp_pool2d_forward", where)
    x = saved.x
    gx, gpp = ops.kernels("lp_pool2d", x).backward(x, saved.p, gy, saved.geometry)
    if saved.p_form == "scalar":
        return gx, float(gpp.sum())
    return gx, gpp.sum(axis=0).astype(x.dtype)


# ---------------------------------------------------------------------------------- the op table
def _sample(draw, dtype):
    """Any window geometry, x in [0.25, 2] (positive and away from 0: central differences perturb
    x and must not cross 0, where y is not smooth), p in [1.05, 6] (p - eps stays >= 1) as a (C,)
    array, a Python float or a 0-d array."""
    k, s, pad = cases.window(draw)
    n, c = cases.planes(draw)
    h, w = cases.spatial(draw, k, pad)
    rng = draw.rng
    x = rng.uniform(0.25, 2.0, (n, c, h, w)).astype(dtype)
    if draw.bool():
        p = rng.uniform(1.05, 6.0, c).astype(dtype)
    else:
        p = np.asarray(rng.uniform(1.05, 6.0), dtype=dtype)
        if draw.bool():
            p = float(p)                  # a Python float; else a 0-d array (the checker can perturb it)
    return ops.Case((x, p), dict(kernel_size=k, stride=s, padding=pad))


def _forward(x, p, **win):
    y, saved = lp_pool2d_forward(x, p, **win)
    return (y,), saved


def _forward_ref(x, p, **win):
    return (_ref.lp_pool2d_forward_ref(x, p, **win),), (x, p, win)


def _backward_ref(saved, gy):
    x, p, win = saved
    return _ref.lp_pool2d_backward_ref(x, p, gy, **win)


ops.register(ops.Op(
    "lp_pool2d", "power mean (1/|R| sum x^p)^(1/p) over each window's real cells, p >= 1 scalar or per channel",
    forward=_forward, backward=lambda saved, gy: lp_pool2d_backward(gy, saved),
    reference=(_forward_ref, _backward_ref), cpu=ops.Kernels(_forward_cpu, _backward_cpu),
    gpu="minignn.layers.lppool.gpu:KERNELS", sample=_sample, gradcheck=dict(max_checks=12),
    tol=lambda dtype: dict(rtol=2e-5, atol=5e-6) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-12)))


# ---------------------------------------------------------------------------------- the layer
def _softplus(xp, t):
    """log(1 + e^t) without overflow: max(t, 0) + log1p(e^-|t|)."""
    return xp.maximum(t, 0) + xp.log1p(xp.exp(-xp.abs(t)))


def _sigmoid(xp, t):
    """1 / (1 + e^-t) without overflow: e^-|t| is at most 1."""
    e = xp.exp(-xp.abs(t))
    return xp.where(t >= 0, 1 / (1 + e), e / (1 + e))


def _inverse_softplus(s: float) -> float:
    """theta with softplus(theta) = s > 0: s + log(1 - e^-s) (no overflow for large s)."""
    return s + math.log(-math.expm1(-s))


class LPPool2d(Module):
    r"""Learned-norm (power-average) pooling: one norm p per channel, trained.

    ``p = 1 + softplus(theta)`` with ``theta`` a (C,) Parameter (Gulcehre et al., 2014): p > 1
    always and the map is smooth, so p is learned by plain gradient descent on theta:
    ``dL/dtheta = dL/dp sigmoid(theta)``. Each channel pools its windows with
    ``y = (1/|R| sum_R x^p)^(1/p)`` (see the module docstring), between average pooling
    (p -> 1) and max pooling (p -> inf). Inputs must be >= 0 (e.g. after a ReLU).

    Parameters
    ----------
    channels : int
        C, the input channels.
    kernel_size, stride, padding : int or (h, w)
        Window geometry, as MaxPool2d; ``stride=None`` means ``stride = kernel_size``; padded
        cells are excluded from every window (padding must be smaller than the kernel).
    p_init : float
        The initial p of every channel, a finite number > 1 (default 2: root-mean-square pooling);
        theta starts at softplus^-1(p_init - 1) (float32, so p_init to float32 precision).

    Attributes
    ----------
    last_p : array (C,)
        p of the last forward (x's dtype), for analysis.

    Train and eval modes are identical (the layer is deterministic).

    Shapes
    ------
    x (N, C, H, W) -> y (N, C, Ho, Wo), ``Ho = (H + 2 ph - kh) // sh + 1`` (same for W).
    """

    def __init__(self, channels, kernel_size=2, stride=None, padding=0, p_init=2.0):
        super().__init__()
        where = "LPPool2d"
        c = check_positive_int(channels, "channels", where)
        win = Window.of(kernel_size, stride, padding, where)
        if (isinstance(p_init, (bool, np.bool_)) or not isinstance(p_init, (int, float, np.integer, np.floating))
                or not math.isfinite(float(p_init)) or not float(p_init) > 1.0):
            raise ValueError(f"{where}: p_init: expected a finite number > 1, got {p_init!r}")
        theta = _inverse_softplus(float(p_init) - 1.0)
        with np.errstate(over="ignore"):
            theta32 = np.float32(theta)
        if not np.isfinite(theta32):
            raise ValueError(f"{where}: p_init: expected a finite number > 1 whose theta = softplus^-1(p_init - 1)"
                             f" fits float32, got {p_init!r}")
        self.channels = c
        self.kernel_size, self.stride, self.padding = win.kernel, win.stride, win.padding
        self.p_init = float(p_init)
        self.theta = Parameter(np.full(c, theta, dtype=np.float32))
        self.last_p = None
        self._saved = None

    def extra_repr(self):
        return (f"{self.channels}, kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"p_init={self.p_init}")

    def current_p(self):
        """The current p = 1 + softplus(theta), (C,) in the parameter's dtype and device."""
        xp = backend.get_array_module(self.theta.data)
        return 1 + _softplus(xp, self.theta.data)

    def forward(self, x):
        """x (N, C, H, W), values >= 0 -> y (N, C, Ho, Wo)."""
        where = "LPPool2d.forward"
        check_array(x, "x", ndim=4, where=where, channels=self.channels, dtype=self.theta.data.dtype)
        Window(self.kernel_size, self.stride, self.padding).out_hw(*x.shape[2:], where)
        xp = backend.get_array_module(x)
        theta = self.theta.data
        p = xp.asarray(self.current_p(), dtype=x.dtype)
        self.last_p = p.copy()
        y, saved = lp_pool2d_forward(x, p, self.kernel_size, self.stride, self.padding)
        self._saved = (saved, _sigmoid(xp, theta), tuple(y.shape), y.dtype)
        return y

    def backward(self, gy):
        """gy (N, C, Ho, Wo) -> gx (N, C, H, W); adds dL/dtheta = dL/dp sigmoid(theta) to theta.grad."""
        saved, dp_dtheta, y_shape, y_dtype = self._saved_or_raise(self._saved)
        check_grad_output(gy, y_shape, y_dtype, where="LPPool2d.backward")
        gx, gp = lp_pool2d_backward(gy, saved)
        self.theta.grad += gp * dp_dtheta
        return gx
