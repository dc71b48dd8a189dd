r"""Local importance pooling (LIP; Gao, Wang & Wu, "LIP: Local Importance-based Pooling", ICCV
2019): the pooling functional pair, the op "lip_pool2d", and (re-exported) the
:class:`LIPPool2d` layer (``layer.py``) and instance normalisation (``instnorm.py``).

For channel c and output position (oh, ow) with window R (the cells of the kh x kw window that
lie inside the input: padded cells are *excluded*, as in every pooling of minignn), given a
logit map L of x's shape (N, C, H, W)::

    y = sum_{q in R} x_q e^{L_q} / sum_{q in R} e^{L_q}  =  sum_R w_q x_q,    w_q = e^{L_q} / sum_R e^{L_q}

a softmax-weighted mean of the window with weights from L (the "importance" map). It is
computed with the window's max logit m subtracted (``e^{L_q - m}``: nothing overflows, the
weights are unchanged). Constant logits (of any value) give average pooling over the real cells
(``avg_pool2d``, which also excludes padding from its count); a logit much larger at one cell of
a window gives that cell's value (max-like limit; L = beta x with beta -> inf is max pooling).

Backward, by hand. With ``dw_p/dL_q = w_p ([p = q] - w_q)``::

    dy/dx_q = w_q
    dy/dL_q = sum_p x_p w_p ([p = q] - w_q) = w_q x_q - w_q y = w_q (x_q - y)

Overlapping windows (stride < kernel, e.g. the default 3x3 stride 2) add the contributions of
every window a cell is in: ``gx_q = sum_{windows o holding q} gy_o w_{o,q}``,
``glogit_q = sum_o gy_o w_{o,q} (x_q - y_o)``. y is smooth in L everywhere (the max shift
cancels), so ties in L need no rule.

Non-finite values (a convention, documented and tested, never a silent NaN of our making): the
first NaN logit of a window makes its y and gradients NaN; cells whose logit equals the window's
max get e = 1, so +inf logits share their window's weight equally (the limit of the softmax)
and a window of -inf logits is the average; a cell of weight 0 (an exp underflowing to 0, or
L = -inf) contributes nothing, not 0 * x (an infinite x there is ignored); an infinite x of
positive weight gives y = +-inf (and NaN logit gradients, where y is not differentiable).

Inputs: x and logit (N, C, H, W), float32 or float64, the same shape, dtype and device (errors
name the argument otherwise; no casts). Arithmetic in float64 in every kernel. The CPU kernels
are in ``cpu.py`` (Numba, parallel over planes, a fast path for 3x3 / stride 2 / padding 1), the
CUDA ones in ``kernels.cu`` (glue in ``gpu.py``; also run by ``gpu-sim``), the NumPy oracle in
``reference.py``. The forward keeps references to x and logit (not copies) in ``saved``: do not
modify them in place between forward and backward; the backward recomputes each window's
softmax from them.

The layer :class:`LIPPool2d` forms ``L = 12 sigmoid(IN(conv3x3(x)))`` (the paper's logit
module) and pools with it; :class:`InstanceNorm2d` and its op "instance_norm2d" are in
``instnorm.py``.
"""
from __future__ import annotations

import numpy as np

from minignn import backend, cases, ops
from minignn.checks import check_array, check_backward

from .._window import Window
from . import cpu as _cpu
from . import reference as _ref

__all__ = ["LIPPool2d", "InstanceNorm2d", "lip_pool2d_forward", "lip_pool2d_backward", "LipSaved",
           "instance_norm2d_forward", "instance_norm2d_backward", "InstanceNormSaved"]


class LipSaved:
    """What :func:`lip_pool2d_backward` needs from the forward (treat as opaque).

    Attributes: ``x`` and ``logit`` (N, C, H, W), C-contiguous (references to the inputs when
    they already were); ``geometry`` (kh, kw, sh, sw, ph, pw); ``y_shape`` (N, C, Ho, Wo).
    """

    __slots__ = ("x", "logit", "geometry", "y_shape")

    def __init__(self, x, logit, geometry, y_shape):
        self.x, self.logit, self.geometry, self.y_shape = x, logit, geometry, y_shape

    def __repr__(self):
        return f"LipSaved(x{tuple(self.x.shape)}, geometry={self.geometry}, y{self.y_shape})"


def _forward_cpu(x, logit, geometry, y_shape):
    y = np.empty(y_shape, dtype=x.dtype)
    _cpu.lip_pool2d_fwd_cpu(x, logit, *geometry, y)
    return y


def _backward_cpu(x, logit, gy, geometry):
    """(gx, glogit), both (N, C, H, W) in x's dtype."""
    gx = np.empty_like(x)
    gl = np.empty_like(x)
    _cpu.lip_pool2d_bwd_cpu(x, logit, gy, *geometry, gx, gl)
    return gx, gl


def _check_logit(logit, x, where):
    check_array(logit, "logit", ndim=4, where=where)
    if tuple(logit.shape) != tuple(x.shape):
        raise ValueError(f"{where}: logit: expected x's shape {tuple(x.shape)} (one logit per input cell),"
                         f" got {tuple(logit.shape)}")
    if np.dtype(logit.dtype) != np.dtype(x.dtype):
        raise TypeError(f"{where}: logit: expected dtype {np.dtype(x.dtype)} (x's dtype), got {logit.dtype};"
                        f" convert with logit.astype(x.dtype)")
    if backend.device_of(logit) != backend.device_of(x):
        raise TypeError(f"{where}: logit: expected an array on the same device as x ({backend.device_of(x)}),"
                        f" got one on {backend.device_of(logit)}")


def lip_pool2d_forward(x, logit, kernel_size=3, stride=2, padding=1):
    """Local importance pooling ``y = sum_R x e^L / sum_R e^L`` over each window's real cells.

    Parameters
    ----------
    x : array (N, C, H, W), float32 or float64
    logit : array (N, C, H, W), x's dtype and device
        The importance logits L, one per input cell.
    kernel_size, stride, padding : int or (int, int)
        Window geometry, default 3x3 / stride 2 / padding 1 (the paper's); ``stride=None`` means
        ``kernel_size``; padding < kernel_size, padded cells are left out of every window.

    Returns
    -------
    y : array (N, C, Ho, Wo), x's dtype; Ho = (H + 2 ph - kh) // sh + 1 (Wo likewise)
    saved : LipSaved
        Pass to :func:`lip_pool2d_backward`.
    """
    where = "lip_pool2d_forward"
    check_array(x, "x", ndim=4, where=where)
    _check_logit(logit, x, where)
    win = Window.of(kernel_size, stride, padding, where)
    y_shape = win.out_shape(x.shape, where)
    xp = backend.get_array_module(x)
    x, logit = xp.ascontiguousarray(x), xp.ascontiguousarray(logit)
    geometry = win.flat
    y = ops.kernels("lip_pool2d", x).forward(x, logit, geometry, y_shape)
    return y, LipSaved(x, logit, geometry, y_shape)


def lip_pool2d_backward(gy, saved):
    """Gradients of local importance pooling.

    Parameters
    ----------
    gy : array (N, C, Ho, Wo), the forward output's dtype and device
    saved : LipSaved, from :func:`lip_pool2d_forward`

    Returns
    -------
    gx : array (N, C, H, W), x's dtype: ``sum over windows of gy w_q``
    glogit : array (N, C, H, W), x's dtype: ``sum over windows of gy w_q (x_q - y)``
    """
    where = "lip_pool2d_backward"
    gy = check_backward(gy, saved, LipSaved, "lip_pool2d_forward", where)
    x = saved.x
    return ops.kernels("lip_pool2d", x).backward(x, saved.logit, gy, saved.geometry)


# ---------------------------------------------------------------------------------- the op table
def _sample(draw, dtype):
    """One draw in three the models' 3x3 / stride 2 / padding 1 window, else any window
    geometry (the 2x2 one included); x standard normal, logits standard normal times 0.5, 3 or
    0 (constant logits: average pooling)."""
    if draw.int(0, 2) == 0:
        k, s, pad = (3, 3), (2, 2), (1, 1)
    else:
        k, s, pad = cases.window(draw)
    n, c = cases.planes(draw)
    h, w = cases.spatial(draw, k, pad)
    x = cases.values(draw, (n, c, h, w), dtype)
    scale = draw.choice([0.5, 3.0, 0.0])
    logit = (cases.values(draw, (n, c, h, w), np.float64, scale) + draw.rng.uniform(-5, 5)).astype(dtype)
    return ops.Case((x, logit), dict(kernel_size=k, stride=s, padding=pad))


def _forward(x, logit, **win):
    y, saved = lip_pool2d_forward(x, logit, **win)
    return (y,), saved


def _forward_ref(x, logit, **win):
    return (_ref.lip_pool2d_forward_ref(x, logit, **win),), (x, logit, win)


def _backward_ref(saved, gy):
    x, logit, win = saved
    return _ref.lip_pool2d_backward_ref(x, logit, gy, **win)


ops.register(ops.Op(
    "lip_pool2d", "softmax(logit)-weighted mean of x over each window's real cells (LIP), logit of x's shape",
    forward=_forward, backward=lambda saved, gy: lip_pool2d_backward(gy, saved),
    reference=(_forward_ref, _backward_ref), cpu=ops.Kernels(_forward_cpu, _backward_cpu),
    gpu="minignn.layers.lip.gpu:KERNELS", sample=_sample, gradcheck=dict(max_checks=12),
    tol=lambda dtype: dict(rtol=1e-5, atol=2e-6) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-12)))


from .instnorm import InstanceNorm2d, InstanceNormSaved, instance_norm2d_backward, instance_norm2d_forward  # noqa: E402
from .layer import LIPPool2d  # noqa: E402
