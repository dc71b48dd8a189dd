r"""Max-entropy pooling (Kobayashi, ICCV 2019, Eq. 6-10): the forward/backward pair.

For channel c and output position p with window R_p (the kh x kw cells of the window that lie
inside the input; padded cells are *excluded*, so the softmax runs over real cells only)::

    W(q) = exp(lam X_q + rho_q) / sum_{q' in R_p} exp(lam X_q' + rho_q')          (6)
    Y_p  = sum_{q in R_p} W(q) X_q                                                  (7)

``rho_q`` is indexed by the offset of q in the full kh x kw window (row-major, K = kh*kw of them),
also at a border window where some offsets fall on padding. lam = 0, rho = 0 is average pooling
over the real cells; lam -> +inf max pooling; lam -> -inf min pooling; lam = 0 with one large
rho_q picks that offset (skip). The derivatives, by hand::

    dY/dX_q   = W(q) (1 + lam (X_q - Y))     sums to 1 over the window                (8)
    dY/dlam   = sum_q W(q) (X_q - Y)^2        the variance of X under W, >= 0          (9)
    dY/drho_q = W(q) (X_q - Y)                                                         (10)

Overlapping windows (stride < kernel) add the contributions of every window a cell is in.

Numerics: each window is shifted by its *own* max of lam X + rho before exponentiating (the
authors' CUDA kernel starts the shift at 0 and returns 0/0 = NaN when every lam X of a window is
below about -104 in float32); Eq. 9 is computed two-pass, Y first and then sum W (X - Y)^2, not
as E[X^2] - E[X]^2 (which cancels catastrophically for windows like [1000, 1000.03] in float32).
The kernels also work with the deviations X_q - X_r from the window's largest-logit cell X_r
(shifted data: exact for close values, and lam X_r cancels in the softmax), so the exponents,
Y - X_r and the deviations X_q - Y keep full relative precision: dlam for such windows is good to
~3e-7 relative in float32 (tests/test_maxent.py derives the bound), and an outlier anywhere in a
window (-1e30 beside [1, 2]) changes only its own weight. Tested to a derived tolerance for finite
x with |x| <= max(dtype) / 2 (tests/test_maxent_edges.py).

Non-finite x: a cell whose logit lam X is +inf takes the window's weight (+inf with lam > 0 is max
pooling: y = +inf, its gradient gy, dlam 0), a cell whose logit is -inf gets weight 0, lam = 0 is
average pooling (y = inf for a window holding +inf), and NaN propagates to every window holding it.

Forms of ``lam`` (and of its gradient): a Python/NumPy scalar (-> a Python float), (C,) (a
learned per-channel lam: summed over N and positions), (N, C) (GFGP: summed over positions), or
(N, C, Ho, Wo) (per window). ``rho``: None, (C, K) (summed over N and positions) or (N, C, K)
(summed over positions). Array ``lam``/``rho`` must have x's dtype (a TypeError otherwise; no
silent casts); scalar ``lam`` is cast to it and must be finite there (1e39 is an error for
float32 x). Both must be finite.

The forward keeps a reference to x (not a copy) in ``saved``: do not modify x in place between
forward and backward. The backward recomputes the softmax from x rather than saving it.
"""
from __future__ import annotations

import numbers

import numpy as np

from minignn import backend, cases, ops
from minignn.checks import check_array, check_backward
from minignn.layers._window import Window

from . import cpu as _cpu
from . import reference as _ref

__all__ = ["maxent_pool2d_forward", "maxent_pool2d_backward", "MaxEntSaved"]


class MaxEntSaved:
    """What :func:`maxent_pool2d_backward` needs from the forward (treat as opaque).

    Attributes: ``x`` (N, C, H, W) the input; ``lam4`` (Nl, Cl, Hl, Wl) and ``rho3`` (Nr, Cr, K)
    lam and rho in the kernels' broadcast layout (each dim 1 or full); ``lam_form`` in
    {"scalar", "C", "NC", "NCHW"}; ``rho_form`` in {None, "CK", "NCK"}; ``geometry``
    (kh, kw, sh, sw, ph, pw); ``y_shape`` (N, C, Ho, Wo).
    """

    __slots__ = ("x", "lam4", "rho3", "lam_form", "rho_form", "geometry", "y_shape")

    def __init__(self, x, lam4, rho3, lam_form, rho_form, geometry, y_shape):
        self.x, self.lam4, self.rho3 = x, lam4, rho3
        self.lam_form, self.rho_form = lam_form, rho_form
        self.geometry, self.y_shape = geometry, y_shape

    def __repr__(self):
        return (f"MaxEntSaved(x{tuple(self.x.shape)}, lam={self.lam_form}, rho={self.rho_form}, "
                f"geometry={self.geometry}, y{self.y_shape})")


def _is_scalar(v) -> bool:
    if isinstance(v, bool) or isinstance(v, np.bool_):
        return False
    if isinstance(v, numbers.Real):
        return True
    return hasattr(v, "shape") and hasattr(v, "dtype") and len(v.shape) == 0


def _check_like_x(xp, a, name, x, where):
    """An array argument (lam or rho): x's dtype, x's device, finite values."""
    check_array(a, name, where=where, dtype=x.dtype)
    if backend.is_gpu_array(a) != backend.is_gpu_array(x):
        raise TypeError(f"{where}: {name}: expected an array on the same device as x ({backend.device_of(x)}),"
                        f" got one on {backend.device_of(a)}")
    if not bool(xp.isfinite(a).all()):
        raise ValueError(f"{where}: {name}: expected finite values, got non-finite entries (NaN or inf)")


def _normalise_lam(lam, x, Ho, Wo, where):
    """lam -> (lam4 of shape (Nl, Cl, Hl, Wl), form)."""
    xp = backend.get_array_module(x)
    N, C = x.shape[:2]
    if _is_scalar(lam):
        if hasattr(lam, "dtype") and np.dtype(lam.dtype).kind not in "fiu":
            raise TypeError(f"{where}: lam: expected a real number, got dtype {lam.dtype}")
        v = float(lam)
        if not np.isfinite(v):
            raise ValueError(f"{where}: lam: expected a finite number, got {v!r}")
        dt = np.dtype(x.dtype)
        with np.errstate(over="ignore"):
            cast = dt.type(v)                  # what the kernels will see: 1e39 is inf in float32
        if not np.isfinite(cast):
            limit = float(np.finfo(dt).max)
            raise ValueError(f"{where}: lam: expected a number representable in x's dtype {dt}"
                             f" (|lam| <= {limit:.6g}), got {v!r}")
        return xp.full((1, 1, 1, 1), cast, dtype=x.dtype), "scalar"
    if not hasattr(lam, "shape"):
        raise TypeError(f"{where}: lam: expected a float or an array of shape (C,), (N, C) or (N, C, Ho, Wo),"
                        f" got {type(lam).__name__}")
    forms = {(C,): "C", (N, C): "NC", (N, C, Ho, Wo): "NCHW"}
    shape = tuple(lam.shape)
    if shape not in forms:
        raise ValueError(f"{where}: lam: expected a float or an array of shape (C,) = {(C,)}, (N, C) = {(N, C)}"
                         f" or (N, C, Ho, Wo) = {(N, C, Ho, Wo)}, got shape {shape}")
    _check_like_x(xp, lam, "lam", x, where)
    form = forms[shape]
    lam4 = {"C": lambda a: a.reshape(1, C, 1, 1), "NC": lambda a: a.reshape(N, C, 1, 1),
            "NCHW": lambda a: a}[form](xp.ascontiguousarray(lam))
    return lam4, form


def _normalise_rho(rho, x, kh, kw, where):
    """rho -> (rho3 of shape (Nr, Cr, K), form); zeros (1, 1, K) and None for rho=None."""
    xp = backend.get_array_module(x)
    N, C = x.shape[:2]
    K = kh * kw
    if rho is None:
        return xp.zeros((1, 1, K), dtype=x.dtype), None
    if not hasattr(rho, "shape"):
        raise TypeError(f"{where}: rho: expected None or an array of shape (C, K) or (N, C, K), got {type(rho).__name__}")
    shape = tuple(rho.shape)
    forms = {(C, K): "CK", (N, C, K): "NCK"}
    if shape not in forms:
        raise ValueError(f"{where}: rho: expected shape (C, K) = {(C, K)} or (N, C, K) = {(N, C, K)},"
                         f" K = kh*kw = {K} offsets of the {kh}x{kw} window, got shape {shape}")
    _check_like_x(xp, rho, "rho", x, where)
    form = forms[shape]
    rho3 = xp.ascontiguousarray(rho).reshape(1 if form == "CK" else N, C, K)
    return rho3, form


def _forward_cpu(x, lam4, rho3, geometry, y_shape):
    y = np.empty(y_shape, dtype=x.dtype)
    _cpu.maxent_pool2d_fwd_cpu(x, lam4, rho3, *geometry, _cpu.planes_per_chunk(x.shape[0] * x.shape[1]),
                               _cpu.rows_per_block(*y_shape[2:]), y)
    return y


def _backward_cpu(x, lam4, rho3, gy, geometry, want_grho):
    N, C = x.shape[:2]
    K = geometry[0] * geometry[1]
    gx = np.empty_like(x)
    glam = np.empty((N, C, lam4.shape[2], lam4.shape[3]), dtype=x.dtype)
    grho = np.empty((N, C, K), dtype=x.dtype)
    _cpu.maxent_pool2d_bwd_cpu(x, lam4, rho3, gy, *geometry, _cpu.planes_per_chunk(x.shape[0] * x.shape[1]),
                               _cpu.rows_per_block(*gy.shape[2:]), want_grho, gx, glam, grho)
    return gx, glam, grho


def maxent_pool2d_forward(x, lam, rho=None, kernel_size=2, stride=2, padding=0):
    """Max-entropy pooling, Eq. 6-7.

    Parameters
    ----------
    x : array (N, C, H, W), float32 or float64
    lam : float, or array (C,), (N, C) or (N, C, Ho, Wo) of x's dtype
        The inverse temperature: 0 average, large positive max, large negative min pooling.
    rho : None, or array (C, K) or (N, C, K) of x's dtype, K = kh*kw
        Position prior per window offset (row-major); None is rho = 0.
    kernel_size, stride, padding : int or (int, int)
        Window geometry; ``stride=None`` means ``kernel_size``; padding < kernel_size, padded
        cells are left out of each window's softmax.

    Returns
    -------
    y : array (N, C, Ho, Wo), Ho = (H + 2 ph - kh) // sh + 1 (Wo likewise)
    saved : MaxEntSaved
        Pass to :func:`maxent_pool2d_backward`.
    """
    where = "maxent_pool2d_forward"
    check_array(x, "x", ndim=4, where=where)
    win = Window.of(kernel_size, stride, padding, where)
    N, C = x.shape[:2]
    Ho, Wo = win.out_hw(*x.shape[2:], where)
    kh, kw = win.kernel
    lam4, lam_form = _normalise_lam(lam, x, Ho, Wo, where)
    rho3, rho_form = _normalise_rho(rho, x, kh, kw, where)
    xp = backend.get_array_module(x)
    x = xp.ascontiguousarray(x)
    geometry = win.flat
    y_shape = (N, C, Ho, Wo)
    y = ops.kernels("maxent_pool2d", x).forward(x, lam4, rho3, geometry, y_shape)
    return y, MaxEntSaved(x, lam4, rho3, lam_form, rho_form, geometry, y_shape)


def maxent_pool2d_backward(gy, saved):
    """Gradients of max-entropy pooling, Eq. 8-10.

    Parameters
    ----------
    gy : array (N, C, Ho, Wo), the forward output's dtype
    saved : MaxEntSaved, from :func:`maxent_pool2d_forward`

    Returns
    -------
    gx : array (N, C, H, W)
    glam : float or array shaped like lam (summed over the axes lam was broadcast along)
    grho : None (rho was None) or array shaped like rho
    """
    where = "maxent_pool2d_backward"
    gy = check_backward(gy, saved, MaxEntSaved, "maxent_pool2d_forward", where)
    x = saved.x
    gx, glam, grho = ops.kernels("maxent_pool2d", x).backward(x, saved.lam4, saved.rho3, gy, saved.geometry,
                                                              saved.rho_form is not None)
    # glam arrives as (N, C, Hl, Wl): per (n, c) plane, or per position for the "NCHW" form
    form = saved.lam_form
    if form == "scalar":
        glam = float(glam.sum())
    elif form == "C":
        glam = glam.sum(axis=(0, 2, 3))
    elif form == "NC":
        glam = glam.reshape(glam.shape[:2])
    if saved.rho_form is None:
        grho = None
    elif saved.rho_form == "CK":
        grho = grho.sum(axis=0)
    return gx, glam, grho


# ---------------------------------------------------------------------------------- the op table
LAM_FORMS = ("scalar", "C", "NC", "NCHW")
RHO_FORMS = (None, "CK", "NCK")


def _sample(draw, dtype):
    """Any window geometry (the 2x2 fast path one time in four, also with planes 32-35 wide:
    rows of a vector register and more), every lam form with lam in [-3, 3] (a scalar as a
    Python float or a 0-d array), every rho form."""
    k, s, p = cases.window(draw, max_s=3)
    n, c = cases.planes(draw)
    h, w = cases.spatial(draw, k, p)
    if (k, s, p) == ((2, 2), (2, 2), (0, 0)) and draw.bool():
        w = draw.int(32, 35)
    ho, wo = Window(k, s, p).out_hw(h, w)
    rng = draw.rng
    form = draw.choice(LAM_FORMS)
    size = {"scalar": (), "C": (c,), "NC": (n, c), "NCHW": (n, c, ho, wo)}[form]
    lam = rng.uniform(-3, 3, size).astype(dtype)
    if form == "scalar" and draw.bool():
        lam = float(lam)                  # a Python float; else a 0-d array (the checker can perturb it)
    rho_form = draw.choice(RHO_FORMS)
    rho = None if rho_form is None else rng.standard_normal((c, k[0] * k[1]) if rho_form == "CK"
                                                            else (n, c, k[0] * k[1])).astype(dtype)
    return ops.Case((cases.values(draw, (n, c, h, w), dtype), lam, rho), dict(kernel_size=k, stride=s, padding=p))


def _forward(x, lam, rho, **win):
    y, saved = maxent_pool2d_forward(x, lam, rho, **win)
    return (y,), saved


def _forward_ref(x, lam, rho, **win):
    return (_ref.maxent_pool2d_forward_ref(x, lam, rho, **win),), (x, lam, rho, win)


def _backward_ref(saved, gy):
    x, lam, rho, win = saved
    return _ref.maxent_pool2d_backward_ref(x, lam, rho, gy, **win)


ops.register(ops.Op(
    "maxent_pool2d", "softmax-weighted mean over each window (Eq. 6-10), every lam and rho form",
    forward=_forward, backward=lambda saved, gy: maxent_pool2d_backward(gy, saved),
    reference=(_forward_ref, _backward_ref), cpu=ops.Kernels(_forward_cpu, _backward_cpu), gpu="minignn.layers.maxent.gpu:KERNELS",
    sample=_sample, gradcheck=dict(max_checks=12),
    tol=lambda dtype: dict(rtol=2e-4, atol=2e-5) if dtype == np.float32 else dict(rtol=1e-9, atol=1e-10)))
