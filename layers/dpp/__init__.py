r"""Detail-preserving pooling (DPP, Saeedan, Weber, Goesele & Roth, CVPR 2018), "lite" form: the
functional pair and the op ``dpp_pool2d`` (the layer :class:`DPPool2d` is in ``layer.py``).

Windows are non-overlapping k x k, stride k, no padding (default 2x2 stride 2):
``Ho = H // k``, ``Wo = W // k``; trailing rows and columns that fit no window take no part in
the output and get a zero gradient. For one channel and the window R of output (oh, ow), with
``n = |R| = k*k`` cells I_q, ``eps = 1e-3`` (:data:`DPP_EPS`), ``gamma > 0`` and ``alpha >= 0``::

    m   = 1/n sum_R I_q                       the window average (I~: "lite" DPP's box filter)
    d_q = I_q - m
    v_q = d_q^2 + eps                         "sym"  (the default)
    v_q = ReLU(d_q)^2 + eps                   "asym" (only cells above the average stand out)
    V   = 1/n sum_R v_q,   r_q = v_q / V       (sum_R r_q = n, so max r_q >= 1)
    p_q = r_q^gamma,       w_q = p_q + alpha
    S   = sum_R w_q,       y = sum_R I_q w_q / S

so y is a weighted average of the window (min_R I <= y <= max_R I), leaning towards the cells
that differ most from the average: gamma -> 0 gives w_q = 1 + alpha (average pooling), and so
does alpha -> inf. S >= max p_q >= 1 and r_q >= eps / V > 0: no division by zero and no log 0.

The backward, by hand. With ``a_q = dy/dw_q = (I_q - y) / S`` and ``dr_q/dv_j =
(delta_qj - r_q / n) / V`` (through v's window mean V)::

    dy/dgamma = sum_q a_q p_q log r_q
    dy/dalpha = sum_q a_q = n (m - y) / S
    c_q       = gamma a_q p_q                         (= a_q r_q dp_q/dr_q)
    dy/dv_j   = sum_q a_q (gamma p_q / r_q) dr_q/dv_j = c_j / v_j - (1/n sum_q c_q) / V
    dy/dd_j   = dy/dv_j f'(d_j),     f'(d) = 2 d ("sym"), 2 ReLU(d) ("asym")
    dy/dI_j   = w_j / S + dy/dd_j - 1/n sum_q dy/dd_q

the last line because I_j enters y directly (the numerator's I_q w_q) and through every d_q
(``dd_q/dI_j = delta_qj - 1/n``: the average I~ depends on every cell of the window). ReLU(d)^2
is C1 (its derivative 2 ReLU(d) is continuous), so "asym" is differentiable everywhere too.
Gradients of gamma and alpha are summed over every window they served: a scalar's over N, C
and positions (returned as a Python float), a (C,) array's over N and positions, an (N, C)
array's over positions.

Numbers: everything is computed in float64 whatever x's dtype. ``p_q = exp(gamma log r_q)``
with ``r_q <= n``, so p overflows only for gamma log n > 709 (gamma > 511 for 2x2 windows).
A NaN in x makes its window's output and gradients NaN (and the parameter gradients).

Inputs: x (N, C, H, W) float32 or float64; ``gamma``, ``alpha``: each a Python or NumPy real
number or a 0-d array (cast to x's dtype, where it must stay finite), or an array of shape (C,)
(one value per channel) or (N, C) (one per sample and channel: GFGP's form) of x's dtype on x's
device (a TypeError otherwise: no silent casts); every gamma finite and > 0, every alpha finite
and >= 0 (a ValueError naming the argument and the bad values otherwise). ``kernel_size``: an int
k >= 1 with k <= H and k <= W. ``variant``: "sym" or "asym".

The forward keeps a reference to x (not a copy) in ``saved``, and the backward recomputes each
window's statistics from it: do not modify x in place between forward and backward. The CPU
kernels are in ``cpu.py`` (Numba, parallel over planes, a 2x2 fast path), the CUDA ones in
``kernels.cu`` (glue in ``gpu.py``, also run by ``gpu-sim``), the NumPy oracle in
``reference.py`` (which writes the backward as an explicit per-window Jacobian chain instead).
"Full" DPP (I~ from a learned 3x3 filter instead of the box average) is not implemented.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from minignn import backend, cases, ops
from minignn.checks import check_array, check_backward, check_positive_int

from .._window import out_size
from . import cpu as _cpu
from . import reference as _ref

__all__ = ["dpp_pool2d_forward", "dpp_pool2d_backward", "DppSaved", "DPPool2d", "VARIANTS", "DPP_EPS"]

#: The DPP variants: the symmetric ``d^2`` and the asymmetric ``ReLU(d)^2`` emphasis.
VARIANTS = ("sym", "asym")
#: eps in ``v = d^2 + eps`` (the value of the authors' code).
DPP_EPS = _cpu.DPP_EPS


class DppSaved:
    """What :func:`dpp_pool2d_backward` needs from the forward (treat as opaque).

    Attributes: ``x`` (N, C, H, W) the (C-contiguous) input; ``gamma``, ``alpha`` (N, C) the
    parameters broadcast to every plane (x's dtype); ``forms`` their forms ("scalar", "C" or
    "NC"); ``k`` the window size; ``variant``; ``y_shape`` (N, C, Ho, Wo).
    """

    __slots__ = ("x", "gamma", "alpha", "forms", "k", "variant", "y_shape")

    def __init__(self, x, gamma, alpha, forms, k, variant, y_shape):
        self.x, self.gamma, self.alpha, self.forms = x, gamma, alpha, forms
        self.k, self.variant, self.y_shape = k, variant, y_shape

    def __repr__(self):
        return (f"DppSaved(x{tuple(self.x.shape)}, gamma={self.forms[0]}, alpha={self.forms[1]}, k={self.k},"
                f" variant={self.variant!r}, y{self.y_shape})")


def _is_scalar(v) -> bool:
    if isinstance(v, (bool, np.bool_)):
        return False
    if isinstance(v, numbers.Real):
        return True
    return hasattr(v, "shape") and hasattr(v, "dtype") and len(v.shape) == 0


def _normalise_param(v, name, x, where):
    """gamma or alpha -> ((N, C) C-contiguous array of x's dtype on x's device, form)."""
    xp = backend.get_array_module(x)
    N, C = x.shape[:2]
    dt = np.dtype(x.dtype)
    positive = name == "gamma"
    rule = "finite and > 0" if positive else "finite and >= 0"
    if _is_scalar(v):
        if hasattr(v, "dtype") and np.dtype(v.dtype).kind not in "fiu":
            raise TypeError(f"{where}: {name}: expected a real number, got dtype {v.dtype}")
        f = float(v)
        if not (math.isfinite(f) and (f > 0 if positive else f >= 0)):
            raise ValueError(f"{where}: {name}: expected a number {rule}, got {f!r}")
        with np.errstate(over="ignore", under="ignore"):
            cast = dt.type(f)                       # what the kernels will see: 1e39 is inf in float32
        if not (np.isfinite(cast) and (cast > 0 if positive else True)):
            raise ValueError(f"{where}: {name}: expected a number {rule} in x's dtype {dt}, got {f!r}"
                             f" (which is {float(cast)!r} in {dt})")
        return xp.full((N, C), cast, dtype=dt), "scalar"
    if not hasattr(v, "shape") or not hasattr(v, "dtype"):
        raise TypeError(f"{where}: {name}: expected a float or an array of shape (C,) = ({C},) or (N, C) ="
                        f" ({N}, {C}), got {type(v).__name__}")
    shape = tuple(v.shape)
    forms = {(C,): "C", (N, C): "NC"}
    if shape not in forms:
        raise ValueError(f"{where}: {name}: expected a float or an array of shape (C,) = ({C},) or (N, C) ="
                         f" ({N}, {C}), got shape {shape}")
    if np.dtype(v.dtype) != dt:
        raise TypeError(f"{where}: {name}: expected dtype {dt} (x's dtype), got {v.dtype};"
                        f" convert with {name}.astype(x.dtype)")
    if backend.is_gpu_array(v) != backend.is_gpu_array(x):
        raise TypeError(f"{where}: {name}: expected an array on the same device as x ({backend.device_of(x)}),"
                        f" got one on {backend.device_of(v)}")
    if v.size:
        ok = xp.isfinite(v) & ((v > 0) if positive else (v >= 0))
        if not bool(ok.all()):
            host, okh = backend.to_numpy(v), backend.to_numpy(ok)
            bad = np.argwhere(~okh)
            shown = ", ".join(f"{name}[{', '.join(str(int(i)) for i in idx)}] = {float(host[tuple(idx)])!r}"
                              for idx in bad[:4]) + (", ..." if len(bad) > 4 else "")
            raise ValueError(f"{where}: {name}: expected every value {rule}, got {shown}")
    form = forms[shape]
    full = v if form == "NC" else xp.broadcast_to(v, (N, C))
    return xp.ascontiguousarray(full), form


def _check_variant(variant, where):
    if not any(variant is c or (isinstance(variant, str) and variant == c) for c in VARIANTS):
        raise ValueError(f"{where}: variant: expected one of {list(VARIANTS)}, got {variant!r}")
    return variant


def _check_kernel(kernel_size, where):
    return check_positive_int(kernel_size, "kernel_size", where)


def _forward_cpu(x, gamma, alpha, k, asym, y_shape):
    y = np.empty(y_shape, dtype=x.dtype)
    _cpu.dpp_pool2d_fwd_cpu(x, gamma, alpha, k, asym, y)
    return y


def _backward_cpu(x, gamma, alpha, gy, k, asym):
    """(gx (N, C, H, W) in x's dtype, per-plane sums of gy dy/dgamma and gy dy/dalpha, (N, C)
    float64 each)."""
    gx = np.empty_like(x)
    gg = np.empty(x.shape[:2], dtype=np.float64)
    ga = np.empty(x.shape[:2], dtype=np.float64)
    _cpu.dpp_pool2d_bwd_cpu(x, gamma, alpha, gy, k, asym, gx, gg, ga)
    return gx, gg, ga


def dpp_pool2d_forward(x, gamma, alpha, kernel_size=2, variant="sym"):
    """Detail-preserving pooling over non-overlapping k x k windows (see the module docstring).

    Parameters
    ----------
    x : array (N, C, H, W), float32 or float64
    gamma : float, 0-d array, or array (C,) or (N, C) of x's dtype; every value finite and > 0
        The emphasis exponent on ``r_q = v_q / mean_R v`` (0: average pooling).
    alpha : float, 0-d array, or array (C,) or (N, C) of x's dtype; every value finite and >= 0
        The weights' floor (large alpha: average pooling).
    kernel_size : int >= 1
        k: k x k windows at stride k; k <= H and k <= W.
    variant : {"sym", "asym"}
        ``v = d^2 + eps`` or ``v = ReLU(d)^2 + eps``.

    Returns
    -------
    y : array (N, C, H // k, W // k), x's dtype
    saved : DppSaved
        Pass to :func:`dpp_pool2d_backward`.
    """
    where = "dpp_pool2d_forward"
    check_array(x, "x", ndim=4, where=where)
    k = _check_kernel(kernel_size, where)
    variant = _check_variant(variant, where)
    N, C, H, W = x.shape
    y_shape = (N, C, out_size(H, k, k, 0, "H", where), out_size(W, k, k, 0, "W", where))
    g2, g_form = _normalise_param(gamma, "gamma", x, where)
    a2, a_form = _normalise_param(alpha, "alpha", x, where)
    xp = backend.get_array_module(x)
    x = xp.ascontiguousarray(x)
    asym = 1 if variant == "asym" else 0
    y = ops.kernels("dpp_pool2d", x).forward(x, g2, a2, k, asym, y_shape)
    return y, DppSaved(x, g2, a2, (g_form, a_form), k, variant, y_shape)


def _reduce(per_plane, form, dtype):
    if form == "scalar":
        return float(per_plane.sum())
    return (per_plane.sum(axis=0) if form == "C" else per_plane).astype(dtype)


def dpp_pool2d_backward(gy, saved):
    """Gradients of detail-preserving pooling.

    Parameters
    ----------
    gy : array (N, C, Ho, Wo), the forward output's dtype
    saved : DppSaved, from :func:`dpp_pool2d_forward`

    Returns
    -------
    gx : array (N, C, H, W), x's dtype (0 at the trailing rows and columns in no window)
    ggamma, galpha : each shaped like its parameter: a Python float for a scalar, (C,) or (N, C)
        of x's dtype (summed over what the parameter was shared by)
    """
    where = "dpp_pool2d_backward"
    gy = check_backward(gy, saved, DppSaved, "dpp_pool2d_forward", where)
    x = saved.x
    asym = 1 if saved.variant == "asym" else 0
    gx, gg, ga = ops.kernels("dpp_pool2d", x).backward(x, saved.gamma, saved.alpha, gy, saved.k, asym)
    return gx, _reduce(gg, saved.forms[0], x.dtype), _reduce(ga, saved.forms[1], x.dtype)


# ---------------------------------------------------------------------------------- the op table
def _draw_param(draw, n, c, lo, hi, dtype):
    """One of the forms: (C,), (N, C), a Python float or a 0-d array, values in [lo, hi]."""
    form = draw.choice(("C", "NC", "float", "0-d"))
    shape = {"C": (c,), "NC": (n, c)}.get(form, ())
    v = np.asarray(draw.rng.uniform(lo, hi, shape), dtype=dtype)
    return float(v) if form == "float" else v


def _sample(draw, dtype):
    """k = 2 one draw in two, else 1 to 4; H and W from k to 3k + 2 (odd sizes and trailing rows
    and columns included); x standard normal (continuous values: no window is constant and no
    asym d_q sits at the ReLU's kink, so central differences see a smooth function); gamma in
    [0.1, 3] and alpha in [0.05, 3] (a central difference of alpha stays >= 0), each in any form;
    both variants."""
    k = 2 if draw.bool() else draw.int(1, 4)
    n, c = cases.planes(draw)
    h, w = draw.int(k, 3 * k + 2), draw.int(k, 3 * k + 2)
    x = draw.rng.standard_normal((n, c, h, w)).astype(dtype)
    gamma = _draw_param(draw, n, c, 0.1, 3.0, dtype)
    alpha = _draw_param(draw, n, c, 0.05, 3.0, dtype)
    return ops.Case((x, gamma, alpha), dict(kernel_size=k, variant=draw.choice(VARIANTS)))


def _forward(x, gamma, alpha, **params):
    y, saved = dpp_pool2d_forward(x, gamma, alpha, **params)
    return (y,), saved


def _forward_ref(x, gamma, alpha, kernel_size=2, variant="sym"):
    y = _ref.dpp_pool2d_forward_ref(x, gamma, alpha, kernel_size, variant)
    return (y,), (x, gamma, alpha, kernel_size, variant)


def _backward_ref(saved, gy):
    x, gamma, alpha, k, variant = saved
    return _ref.dpp_pool2d_backward_ref(x, gamma, alpha, gy, k, variant)


def _tol(dtype):
    return dict(rtol=2e-5, atol=2e-6) if dtype == np.float32 else dict(rtol=1e-9, atol=1e-11)


ops.register(ops.Op(
    "dpp_pool2d", "detail-preserving pooling: sum I w / sum w, w = ((d^2 + eps) / mean)^gamma + alpha, k x k stride k",
    forward=_forward, backward=lambda saved, gy: dpp_pool2d_backward(gy, saved),
    reference=(_forward_ref, _backward_ref), cpu=ops.Kernels(_forward_cpu, _backward_cpu),
    gpu="minignn.layers.dpp.gpu:KERNELS", sample=_sample, gradcheck=dict(max_checks=12), tol=_tol))

from .layer import DPPool2d  # noqa: E402  (the layer uses the functionals above)
