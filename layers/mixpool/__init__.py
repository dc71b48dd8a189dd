r"""Mixed and gated max-average pooling (Lee, Gallagher & Tu, AISTATS 2016): the functional pairs.

For channel c and the window R of output (oh, ow) (its real cells: padding is never part of a
window, as for max and average pooling), with ``m = max_R x`` at cell ``q*`` (the first maximum
in row-major window order; a NaN wins and propagates, the rule of max pooling) and
``v = 1/|R| sum_R x``::

    y = a m + (1 - a) v                                    mixed: a in [0, 1] per channel
    y = g m + (1 - g) v,   g = sigmoid(omega . x_R)        gated: omega, K = kh*kw weights

``omega_q`` multiplies the cell at window offset q (row-major, ``q = di*kw + dj``); a border
window's padded offsets contribute nothing. ``a`` may be one value (per layer), one per channel
(C,), or one per sample and channel (N, C) (the GFGP-guided gate, ``gfgp-gated``). a = 1 is
max pooling, a = 0 average pooling; omega = 0 is the half-half mix g = 1/2.

The derivatives, by hand (``[q = q*]`` is 1 at the argmax cell, else 0; with ``d = m - v``)::

    mixed:  dy/dx_q = a [q = q*] + (1 - a)/|R|          dy/da = d
    gated:  dy/dx_q = g [q = q*] + (1 - g)/|R| + d g (1 - g) omega_q
            dy/domega_q = d g (1 - g) x_q

Ties: the max is not differentiable where two cells share it; its share of the gradient goes to
the first maximum (as max pooling's). Overlapping windows (stride < kernel) add the
contributions of every window a cell is in; gradients of a and omega are summed over every
window they served (a (C,): over N and positions; (N, C): over positions).

The forward saves ``d`` and the argmax offset per output (and the gate g per output for gated
pooling, which also keeps a reference to x for omega's gradient): do not modify x in place
between forward and backward. The kernels live in ``cpu.py`` (Numba) and ``kernels.cu`` (CUDA,
``gpu.py``), the NumPy oracle in ``reference.py``; the layers in ``layer.py``.
"""
from __future__ import annotations

import numpy as np

from minignn import backend, cases, ops
from minignn.checks import check_array, check_backward
from minignn.layers._window import Window

from ..maxent import _check_like_x, _is_scalar
from ..pooling import argmax_dtype
from . import cpu as _cpu
from . import reference as _ref

__all__ = ["mixed_pool2d_forward", "mixed_pool2d_backward", "gated_pool2d_forward", "gated_pool2d_backward",
           "MixSaved"]


class MixSaved:
    """What the backward needs from the forward (treat as opaque): ``x`` (gated; None for mixed),
    ``a2`` (Na, Ca) the mixing weight in the kernels' layout and its ``a_form`` (None for gated),
    ``omega`` ((K,); empty for mixed), ``g`` the gate per output (gated), ``d`` = max - avg and
    ``arg`` (the argmax offset) per output, ``geometry`` (kh, kw, sh, sw, ph, pw), ``x_shape``."""

    __slots__ = ("x", "a2", "a_form", "omega", "g", "d", "arg", "geometry", "x_shape")

    def __init__(self, x, a2, a_form, omega, g, d, arg, geometry, x_shape):
        self.x, self.a2, self.a_form, self.omega = x, a2, a_form, omega
        self.g, self.d, self.arg, self.geometry, self.x_shape = g, d, arg, geometry, x_shape

    @property
    def gated(self) -> bool:
        return self.a_form is None

    def __repr__(self):
        kind = "gated" if self.gated else f"mixed a={self.a_form}"
        return f"MixSaved({kind}, x{self.x_shape}, geometry={self.geometry})"


# -------------------------------------------------------------------------------- the CPU glue
def _forward_cpu(x, a2, omega, geometry, y_shape):
    gated = omega.shape[0] > 0
    y = np.empty(y_shape, dtype=x.dtype)
    d = np.empty(y_shape, dtype=x.dtype)
    g = np.empty(y_shape if gated else (0, 0, 0, 0), dtype=x.dtype)
    arg = np.empty(y_shape, dtype=argmax_dtype(geometry[:2]))
    _cpu.mixpool2d_fwd_cpu(x, a2, omega, *geometry, y, d, g, arg)
    return y, d, g, arg


def _backward_cpu(gy, x, a2, omega, g, d, arg, geometry, x_shape):
    gated = omega.shape[0] > 0
    K = geometry[0] * geometry[1]
    gx = np.empty(x_shape, dtype=gy.dtype)
    gom = np.empty((x_shape[0] * x_shape[1], K if gated else 1), dtype=np.float64)
    _cpu.mixpool2d_bwd_cpu(gy, x, a2, omega, g, d, arg, *geometry, gx, gom)
    return gx, gom


# ------------------------------------------------------------------------------ the functionals
def _setup(x, kernel_size, stride, padding, where):
    check_array(x, "x", ndim=4, where=where)
    win = Window.of(kernel_size, stride, padding, where)
    y_shape = (x.shape[0], x.shape[1]) + win.out_hw(*x.shape[2:], where)
    return backend.get_array_module(x).ascontiguousarray(x), win.flat, y_shape


def _normalise_a(a, x, where):
    """a -> (a2 of shape (Na, Ca) in x's dtype, form in {"scalar", "C", "NC"}); values in [0, 1]."""
    xp = backend.get_array_module(x)
    N, C = x.shape[:2]
    if _is_scalar(a):
        if hasattr(a, "dtype") and np.dtype(a.dtype).kind not in "fiu":
            raise TypeError(f"{where}: a: expected a real number in [0, 1], got dtype {a.dtype}")
        v = float(a)
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"{where}: a: expected a number in [0, 1] (1 is max, 0 average pooling), got {v!r}")
        return xp.full((1, 1), v, dtype=x.dtype), "scalar"
    if not hasattr(a, "shape"):
        raise TypeError(f"{where}: a: expected a float in [0, 1] or an array of shape (C,) or (N, C),"
                        f" got {type(a).__name__}")
    forms = {(C,): "C", (N, C): "NC"}
    shape = tuple(a.shape)
    if shape not in forms:
        raise ValueError(f"{where}: a: expected a float or an array of shape (C,) = {(C,)} or (N, C) = {(N, C)},"
                         f" got shape {shape}")
    _check_like_x(xp, a, "a", x, where)
    if a.size and not bool(((a >= 0) & (a <= 1)).all()):
        raise ValueError(f"{where}: a: expected values in [0, 1] (1 is max, 0 average pooling), got values in"
                         f" [{float(a.min()):.6g}, {float(a.max()):.6g}]")
    form = forms[shape]
    return xp.ascontiguousarray(a).reshape(1 if form == "C" else N, C), form


def mixed_pool2d_forward(x, a, kernel_size=2, stride=None, padding=0):
    """Mixed max-average pooling, ``y = a max + (1 - a) avg`` over each window's real cells.

    Parameters
    ----------
    x : array (N, C, H, W), float32 or float64
    a : float in [0, 1], or array (C,) or (N, C) of x's dtype with values in [0, 1]
    kernel_size, stride, padding : int or (int, int); ``stride=None`` means ``kernel_size``

    Returns
    -------
    y : array (N, C, Ho, Wo), x's dtype
    saved : MixSaved, for :func:`mixed_pool2d_backward`
    """
    where = "mixed_pool2d_forward"
    x, geometry, y_shape = _setup(x, kernel_size, stride, padding, where)
    a2, form = _normalise_a(a, x, where)
    omega = backend.get_array_module(x).empty((0,), dtype=x.dtype)
    y, d, g, arg = ops.kernels("mixed_pool2d", x).forward(x, a2, omega, geometry, y_shape)
    return y, MixSaved(None, a2, form, omega, None, d, arg, geometry, tuple(x.shape))


def gated_pool2d_forward(x, omega, kernel_size=2, stride=None, padding=0):
    """Gated max-average pooling, ``y = g max + (1 - g) avg`` with ``g = sigmoid(omega . x_R)``.

    Parameters
    ----------
    x : array (N, C, H, W), float32 or float64
    omega : array (K,) of x's dtype, K = kh*kw: the gate's weight of each window offset (row-major)
    kernel_size, stride, padding : int or (int, int); ``stride=None`` means ``kernel_size``

    Returns
    -------
    y : array (N, C, Ho, Wo), x's dtype
    saved : MixSaved, for :func:`gated_pool2d_backward`; ``saved.g`` is the gate of each window
    """
    where = "gated_pool2d_forward"
    x, geometry, y_shape = _setup(x, kernel_size, stride, padding, where)
    K = geometry[0] * geometry[1]
    if not hasattr(omega, "shape") or tuple(omega.shape) != (K,):
        got = f"shape {tuple(omega.shape)}" if hasattr(omega, "shape") else type(omega).__name__
        raise ValueError(f"{where}: omega: expected an array of shape (K,) = ({K},), one weight per offset of the"
                         f" {geometry[0]}x{geometry[1]} window, got {got}")
    xp = backend.get_array_module(x)
    _check_like_x(xp, omega, "omega", x, where)
    omega = xp.ascontiguousarray(omega)
    a2 = xp.zeros((1, 1), dtype=x.dtype)
    y, d, g, arg = ops.kernels("gated_pool2d", x).forward(x, a2, omega, geometry, y_shape)
    return y, MixSaved(x, a2, None, omega, g, d, arg, geometry, tuple(x.shape))


def _backward(gy, saved, where, fn):
    gy = check_backward(gy, saved, MixSaved, fn, where, like="d", shape=None)
    xp = backend.get_array_module(gy)
    x = saved.x if saved.gated else xp.empty((0, 0, 0, 0), dtype=gy.dtype)
    g = saved.g if saved.gated else xp.empty((0, 0, 0, 0), dtype=gy.dtype)
    name = "gated_pool2d" if saved.gated else "mixed_pool2d"
    return ops.kernels(name, gy).backward(gy, x, saved.a2, saved.omega, g, saved.d, saved.arg, saved.geometry,
                                          saved.x_shape), gy, xp


def mixed_pool2d_backward(gy, saved):
    """Gradients of mixed pooling: ``(gx, ga)``, ``ga`` shaped like ``a`` (a Python float for a
    scalar ``a``): ``gx_q = gy (a [q is the argmax] + (1 - a)/|R|)``, ``ga = sum gy (max - avg)``."""
    where = "mixed_pool2d_backward"
    if isinstance(saved, MixSaved) and saved.gated:
        raise TypeError(f"{where}: saved: expected the MixSaved of mixed_pool2d_forward, got gated pooling's")
    (gx, per_plane), gy, xp = _backward(gy, saved, where, "mixed_pool2d_forward")
    per_plane = per_plane.reshape(saved.x_shape[:2])       # sum of gy (max - avg) over each plane
    if saved.a_form == "scalar":
        return gx, float(per_plane.sum())
    ga = per_plane.sum(axis=0) if saved.a_form == "C" else per_plane
    return gx, ga.astype(gy.dtype)


def gated_pool2d_backward(gy, saved):
    """Gradients of gated pooling: ``(gx, gomega)``, ``gomega`` of shape (K,):
    ``gx_q = gy (g [q is the argmax] + (1 - g)/|R| + (max - avg) g (1 - g) omega_q)``,
    ``gomega_q = sum over windows of gy (max - avg) g (1 - g) x_q``."""
    where = "gated_pool2d_backward"
    if isinstance(saved, MixSaved) and not saved.gated:
        raise TypeError(f"{where}: saved: expected the MixSaved of gated_pool2d_forward, got mixed pooling's")
    (gx, gom), gy, xp = _backward(gy, saved, where, "gated_pool2d_forward")
    return gx, gom.sum(axis=0).astype(gy.dtype)


# ---------------------------------------------------------------------------------- the op table
def _window_case(draw, dtype):
    k, s, p = cases.window(draw)
    n, c = cases.planes(draw)
    h, w = cases.spatial(draw, k, p)
    return (k, s, p), n, c, cases.distinct(draw, (n, c, h, w), dtype)


def _sample_mixed(draw, dtype):
    """Distinct x (the max is differentiable), any window, a of every form in [0.02, 0.98] (so
    that central differences stay inside [0, 1])."""
    (k, s, p), n, c, x = _window_case(draw, dtype)
    form = draw.choice(("scalar", "C", "NC"))
    a = draw.rng.uniform(0.02, 0.98, {"scalar": (), "C": (c,), "NC": (n, c)}[form]).astype(dtype)
    if form == "scalar" and draw.bool():
        a = float(a)
    return ops.Case((x, a), dict(kernel_size=k, stride=s, padding=p))


def _sample_gated(draw, dtype):
    """Distinct x, any window, omega of K standard normal weights (times 5 one time in three:
    saturated gates)."""
    (k, s, p), n, c, x = _window_case(draw, dtype)
    scale = 5.0 if draw.int(0, 2) == 0 else 1.0
    omega = (draw.rng.standard_normal(k[0] * k[1]) * scale).astype(dtype)
    return ops.Case((x, omega), dict(kernel_size=k, stride=s, padding=p))


def _win(params):
    w = Window.of(params.get("kernel_size", 2), params.get("stride"), params.get("padding", 0))
    return w.kernel, w.stride, w.padding


def _one(result):
    y, saved = result
    return (y,), saved


def _tol(dtype):
    return dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-11, atol=1e-12)


ops.register(ops.Op(
    "mixed_pool2d", "a max + (1 - a) avg over each window, a in [0, 1] per layer, channel or sample",
    forward=lambda x, a, **win: _one(mixed_pool2d_forward(x, a, **win)),
    backward=lambda saved, gy: mixed_pool2d_backward(gy, saved),
    reference=(lambda x, a, **win: ((_ref.mixed_pool2d_forward_ref(x, a, *_win(win)),), (x, a, win)),
               lambda saved, gy: _ref.mixed_pool2d_backward_ref(saved[0], saved[1], gy, *_win(saved[2]))),
    cpu=ops.Kernels(_forward_cpu, _backward_cpu), gpu="minignn.layers.mixpool.gpu:KERNELS",
    sample=_sample_mixed, tol=_tol))

ops.register(ops.Op(
    "gated_pool2d", "g max + (1 - g) avg over each window, g = sigmoid(omega . window)",
    forward=lambda x, omega, **win: _one(gated_pool2d_forward(x, omega, **win)),
    backward=lambda saved, gy: gated_pool2d_backward(gy, saved),
    reference=(lambda x, omega, **win: ((_ref.gated_pool2d_forward_ref(x, omega, *_win(win)),), (x, omega, win)),
               lambda saved, gy: _ref.gated_pool2d_backward_ref(saved[0], saved[1], gy, *_win(saved[2]))),
    cpu=ops.Kernels(_forward_cpu, _backward_cpu), gpu="minignn.layers.mixpool.gpu:KERNELS",
    sample=_sample_gated, tol=_tol, gradcheck=dict(max_checks=12)))
