r"""Gaussian-based pooling (Kobayashi, NeurIPS 2019): the forward/backward pair, the op
``gaussian_pool2d``, and the layer :class:`GaussianPool2d` (in ``layer.py``).

Each window is summarised by a Gaussian fitted to its values, and pooled to a point on that
Gaussian's upper side: its mean plus eta standard deviations. For channel c and output (oh, ow)
with window R (the cells of the kh x kw window that lie inside the input: padded cells are
*excluded*, and K = |R| counts the real cells only)::

    mu    = 1/K sum_{q in R} x_q
    v     = 1/K sum_{q in R} (x_q - mu)^2          two passes: the mean first, then the deviations
    sigma = sqrt(max(v, EPS)),   EPS = 1e-6        a flat window has sigma = 1e-3, not 0
    y     = mu + eta sigma,      eta >= 0 given per window

eta = 0 is average pooling; as eta grows y moves from the mean towards (and past) the window's
max (for K cells, max_R x <= mu + sqrt(K - 1) sigma, so eta = sqrt(K - 1) already reaches the max
of any non-flat window).

Backward, by hand. Where v > EPS, ``dsigma/dx_q = (1/(2 sigma)) dv/dx_q`` and ``dv/dx_q =
(2/K) (x_q - mu) - (2/K) sum_j (x_j - mu) dmu/dx_q``; the last sum is 0 (deviations from the mean
add up to nothing), so the path through mu inside v vanishes and::

    dy/dx_q  = 1/K + eta (x_q - mu) / (K sigma)          where v > EPS
             = 1/K                                         where v <= EPS (the clamp is flat)
    dy/deta  = sigma                                       elementwise, (N, C, Ho, Wo)

Overlapping windows (stride < kernel) add the contributions of every window a cell is in. At
v = EPS the output has a kink (the clamp switches on); nothing else is non-smooth.

Inputs: x (N, C, H, W), float32 or float64; eta an array of x's dtype on x's device, of shape
(N, C, Ho, Wo) (one value per window; a TypeError for a non-array, another dtype or device, a
ValueError for another shape), every value finite and >= 0 (a ValueError naming eta, the first
bad index and its value). Non-finite x is not an error: a NaN in a window makes that window's y,
its eta gradient and the gradients of its cells NaN; a window holding +inf or -inf has
``mu = +-inf`` and ``v = (inf - inf)^2 = NaN`` (the variance of a sample with an infinite value is
undefined), so its y is NaN as well, whatever eta, eta = 0 included.

Numbers: every sum and product is formed in float64 whatever x's dtype; the forward keeps mu and
sigma per window in float64 (for float32 x a float32 mu would lose the small deviations
``x_q - mu`` of a near-flat window) and a reference to x (not a copy): do not modify x in place
between forward and backward. The CPU kernels are in ``cpu.py`` (Numba, parallel over planes, a
2x2 stride-2 fast path), the CUDA ones in ``kernels.cu`` (glue in ``gpu.py``; also run by
``gpu-sim``), the NumPy oracle in ``reference.py``.

The layer :class:`GaussianPool2d` predicts eta from the input's global average (the paper's
GFGP-style network, with a learned noise scale in training): see ``layer.py``.
"""
from __future__ import annotations

import numpy as np

from minignn import backend, cases, ops
from minignn.checks import check_array, check_backward

from .._window import Window
from . import cpu as _cpu
from . import reference as _ref
from .reference import EPS

__all__ = ["GaussianPool2d", "gaussian_pool2d_forward", "gaussian_pool2d_backward", "GaussSaved", "EPS"]


class GaussSaved:
    """What :func:`gaussian_pool2d_backward` needs from the forward (treat as opaque).

    Attributes: ``x`` (N, C, H, W) the (C-contiguous) input; ``eta`` (N, C, Ho, Wo) C-contiguous,
    x's dtype; ``mu``, ``sigma`` (N, C, Ho, Wo) float64, each window's mean and floored standard
    deviation; ``geometry`` (kh, kw, sh, sw, ph, pw); ``y_shape`` (N, C, Ho, Wo).
    """

    __slots__ = ("x", "eta", "mu", "sigma", "geometry", "y_shape")

    def __init__(self, x, eta, mu, sigma, geometry, y_shape):
        self.x, self.eta, self.mu, self.sigma = x, eta, mu, sigma
        self.geometry, self.y_shape = geometry, y_shape

    def __repr__(self):
        return f"GaussSaved(x{tuple(self.x.shape)}, geometry={self.geometry}, y{self.y_shape})"


def _check_eta(eta, x, y_shape, where):
    """eta: an (N, C, Ho, Wo) array of x's dtype on x's device, every value finite and >= 0."""
    want = f"an array of shape (N, C, Ho, Wo) = {tuple(y_shape)}"
    if not hasattr(eta, "shape") or not hasattr(eta, "dtype"):
        raise TypeError(f"{where}: eta: expected {want}, got {type(eta).__name__}")
    if tuple(eta.shape) != tuple(y_shape):
        raise ValueError(f"{where}: eta: expected {want}, got shape {tuple(eta.shape)}")
    if np.dtype(eta.dtype) != np.dtype(x.dtype):
        raise TypeError(f"{where}: eta: expected dtype {np.dtype(x.dtype)} (x's dtype), got {eta.dtype};"
                        f" convert with eta.astype(x.dtype)")
    if backend.device_of(eta) != backend.device_of(x):
        raise TypeError(f"{where}: eta: expected an array on the same device as x ({backend.device_of(x)}),"
                        f" got one on {backend.device_of(eta)}")
    xp = backend.get_array_module(eta)
    if eta.size and not bool(xp.all(xp.isfinite(eta) & (eta >= 0))):     # one reduction on eta's device
        host = backend.to_numpy(eta)
        bad = np.argwhere(~(np.isfinite(host) & (host >= 0)))
        shown = ", ".join(f"eta[{', '.join(str(int(i)) for i in idx)}] = {float(host[tuple(idx)])!r}"
                          for idx in bad[:3]) + (", ..." if len(bad) > 3 else "")
        raise ValueError(f"{where}: eta: expected every value finite and >= 0, got {shown}"
                         f" ({len(bad)} bad value{'s' if len(bad) != 1 else ''})")
    return xp.ascontiguousarray(eta)


def _forward_cpu(x, eta, geometry, y_shape):
    """(y in x's dtype, mu and sigma float64), each (N, C, Ho, Wo)."""
    y = np.empty(y_shape, dtype=x.dtype)
    mu = np.empty(y_shape, dtype=np.float64)
    sigma = np.empty(y_shape, dtype=np.float64)
    _cpu.gausspool2d_fwd_cpu(x, eta, *geometry, y, mu, sigma)
    return y, mu, sigma


def _backward_cpu(x, eta, gy, mu, sigma, geometry):
    """(gx (N, C, H, W), geta (N, C, Ho, Wo)), both in x's dtype."""
    gx = np.empty_like(x)
    geta = np.empty(gy.shape, dtype=x.dtype)
    _cpu.gausspool2d_bwd_cpu(x, eta, gy, mu, sigma, *geometry, gx, geta)
    return gx, geta


def gaussian_pool2d_forward(x, eta, kernel_size=2, stride=None, padding=0):
    """Gaussian-based pooling ``y = mu + eta sigma`` over each window's real cells.

    Parameters
    ----------
    x : array (N, C, H, W), float32 or float64
    eta : array (N, C, Ho, Wo) of x's dtype, on x's device
        One value per window, every value finite and >= 0 (0: average pooling).
    kernel_size, stride, padding : int or (int, int)
        Window geometry; ``stride=None`` means ``kernel_size``; padding < kernel_size, padded
        cells are left out of each window (and of its count K).

    Returns
    -------
    y : array (N, C, Ho, Wo), x's dtype; Ho = (H + 2 ph - kh) // sh + 1 (Wo likewise)
    saved : GaussSaved
        Pass to :func:`gaussian_pool2d_backward`.
    """
    where = "gaussian_pool2d_forward"
    check_array(x, "x", ndim=4, where=where)
    win = Window.of(kernel_size, stride, padding, where)
    y_shape = win.out_shape(x.shape, where)
    eta = _check_eta(eta, x, y_shape, where)
    xp = backend.get_array_module(x)
    x = xp.ascontiguousarray(x)
    geometry = win.flat
    y, mu, sigma = ops.kernels("gaussian_pool2d", x).forward(x, eta, geometry, y_shape)
    return y, GaussSaved(x, eta, mu, sigma, geometry, y_shape)


def gaussian_pool2d_backward(gy, saved):
    """Gradients of Gaussian-based pooling.

    Parameters
    ----------
    gy : array (N, C, Ho, Wo), the forward output's dtype and device
    saved : GaussSaved, from :func:`gaussian_pool2d_forward`

    Returns
    -------
    gx : array (N, C, H, W), x's dtype: ``sum over windows of gy (1/K + eta (x_q - mu) / (K sigma))``
        (``gy / K`` for a flat window, v <= EPS)
    geta : array (N, C, Ho, Wo), x's dtype: ``gy sigma``
    """
    where = "gaussian_pool2d_backward"
    gy = check_backward(gy, saved, GaussSaved, "gaussian_pool2d_forward", where)
    return ops.kernels("gaussian_pool2d", saved.x).backward(saved.x, saved.eta, gy, saved.mu, saved.sigma,
                                                            saved.geometry)


# ---------------------------------------------------------------------------------- the op table
def _sample(draw, dtype):
    """Any window geometry, x standard normal (so v > EPS almost surely wherever K > 1: the clamp's
    kink at v = EPS is never straddled by central differences; one-cell windows have v = 0, flat
    and smooth), eta uniform in [0.1, 2] (stays >= 0 when perturbed)."""
    k, s, pad = cases.window(draw)
    n, c = cases.planes(draw)
    h, w = cases.spatial(draw, k, pad)
    y_shape = Window.of(k, s, pad).out_shape((n, c, h, w))
    rng = draw.rng
    x = cases.values(draw, (n, c, h, w), dtype)
    eta = rng.uniform(0.1, 2.0, y_shape).astype(dtype)
    return ops.Case((x, eta), dict(kernel_size=k, stride=s, padding=pad))


def _forward(x, eta, **win):
    y, saved = gaussian_pool2d_forward(x, eta, **win)
    return (y,), saved


def _forward_ref(x, eta, **win):
    return (_ref.gaussian_pool2d_forward_ref(x, eta, **win),), (x, eta, win)


def _backward_ref(saved, gy):
    x, eta, win = saved
    return _ref.gaussian_pool2d_backward_ref(x, eta, gy, **win)


def _tol(dtype):
    return dict(rtol=2e-5, atol=5e-6) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-12)


ops.register(ops.Op(
    "gaussian_pool2d", "mu + eta sigma of each window's real cells (two-pass variance, sigma >= 1e-3), eta >= 0"
    " per window",
    forward=_forward, backward=lambda saved, gy: gaussian_pool2d_backward(gy, saved),
    reference=(_forward_ref, _backward_ref), cpu=ops.Kernels(_forward_cpu, _backward_cpu),
    gpu="minignn.layers.gaussian.gpu:KERNELS", sample=_sample, gradcheck=dict(max_checks=12), tol=_tol))

from .layer import GaussianPool2d  # noqa: E402  (the layer uses the functionals above)
