"""Parameter-free layers: ReLU, Flatten and (inverted) Dropout.

    ReLU:     y = max(x, 0)                  gx = gy * [x > 0]
    Flatten:  (N, d1, d2, ...) -> (N, d1*d2*...)   gx = gy reshaped back
    Dropout:  y = x * mask / (1 - p)         gx = gy * mask / (1 - p),  mask ~ Bernoulli(1 - p)

ReLU runs in every block of a network, forward and backward, so its CPU path is one fused Numba
pass each way (no temporary boolean array): parallel over the flat array when it is large, a
single thread when it is small (a parallel launch costs more than the work there). On a CuPy
array it is the same formula in ``xp`` code. Flatten and Dropout are device-agnostic ``xp`` code.
"""
from __future__ import annotations

import numpy as np

from minignn import backend, cases, ops
from minignn.checks import check_array, check_grad_output, check_probability
from minignn.module import Module
from minignn._numba import njit, pjit, prange

__all__ = ["ReLU", "Flatten", "Dropout", "relu_forward", "relu_backward", "dropout_forward"]

# Below this many elements the single-threaded kernels are faster than a parallel launch.
PARALLEL_MIN_SIZE = 1 << 16


# ---------------------------------------------------------------------------------------- kernels
@njit
def _relu_fwd_serial(x, y):
    for i in range(x.size):
        v = x[i]
        y[i] = 0 if v <= 0 else v  # a NaN compares false: it propagates


@pjit
def relu_fwd_cpu(x, y):
    """y = max(x, 0) over flat arrays (NaN propagates)."""
    for i in prange(x.size):
        v = x[i]
        y[i] = 0 if v <= 0 else v


@njit
def _relu_bwd_serial(x, gy, gx):
    for i in range(x.size):
        gx[i] = gy[i] if x[i] > 0 else 0


@pjit
def relu_bwd_cpu(x, gy, gx):
    """gx = gy where x > 0, else 0, over flat arrays."""
    for i in prange(x.size):
        gx[i] = gy[i] if x[i] > 0 else 0


def _relu_fwd(x):
    x = np.ascontiguousarray(x)
    y = np.empty_like(x)
    kernel = relu_fwd_cpu if x.size >= PARALLEL_MIN_SIZE else _relu_fwd_serial
    kernel(x.reshape(-1), y.reshape(-1))
    return y


def _relu_bwd(x, gy):
    gy = np.ascontiguousarray(gy)
    gx = np.empty_like(gy)
    kernel = relu_bwd_cpu if x.size >= PARALLEL_MIN_SIZE else _relu_bwd_serial
    kernel(np.ascontiguousarray(x).reshape(-1), gy.reshape(-1), gx.reshape(-1))
    return gx


def _relu_fwd_xp(x):
    xp = backend.get_array_module(x)
    return xp.where(x <= 0, xp.zeros((), dtype=x.dtype), x)


def _relu_bwd_xp(x, gy):
    xp = backend.get_array_module(gy)
    return xp.where(x > 0, gy, xp.zeros((), dtype=gy.dtype))


def relu_forward(x):
    """y = max(x, 0) (NaN propagates), x's shape and dtype."""
    return ops.kernels("relu", x).forward(x)


def relu_backward(x, gy):
    """gx = gy where x > 0, else 0."""
    return ops.kernels("relu", gy).backward(x, gy)


def dropout_forward(x, p, rng):
    """Inverted dropout in train mode: returns ``y = x * mask`` and the mask (x's shape and dtype,
    0 or ``1/(1-p)``), drawn on the host from ``rng`` (so a seeded run gives the same masks on
    either device) and moved to x's device."""
    keep = rng.random(x.shape, dtype=np.float32) >= p
    mask = keep.astype(x.dtype) * x.dtype.type(1.0 / (1.0 - p))
    mask = backend.get_array_module(x).asarray(mask)
    return x * mask, mask


# ---------------------------------------------------------------------------------- the op table
def _sample_any(draw, dtype):
    """Any rank from 1 to 5, empty and odd sizes included; values away from zero (no kink)."""
    return ops.Case((cases.distinct(draw, cases.any_shape(draw), dtype, gap=0.05),))


def _sample_relu(draw, dtype):
    """As :func:`_sample_any`, and one draw in eight above PARALLEL_MIN_SIZE (the parallel kernels)."""
    if draw.int(0, 7) == 0:
        # values within +-0.7 (the checker's loss stays well conditioned), >= 2.5e-6 from zero
        return ops.Case((cases.distinct(draw, (2, PARALLEL_MIN_SIZE // 2 + draw.int(1, 9)), dtype, gap=1e-5),))
    return _sample_any(draw, dtype)


def _relu_ref(x):
    return np.where(x <= 0, x.dtype.type(0), x)


def _dropout_ref(x, p, seed):
    keep = np.random.default_rng(seed).random(x.shape, dtype=np.float32) >= p
    return (np.where(keep, x.astype(np.float64) / (1.0 - p), 0.0).astype(x.dtype),), (keep, p)


def _dropout_forward(x, p, seed):
    y, mask = dropout_forward(x, p, np.random.default_rng(seed))
    return (y,), mask


def _sample_dropout(draw, dtype):
    case = _sample_any(draw, dtype)
    return ops.Case(case.inputs, dict(p=draw.choice([0.1, 0.5, 0.9]), seed=draw.int(0, 2**31 - 1)))


ops.register(ops.Op(
    "relu", "max(x, 0), elementwise; NaN propagates",
    forward=lambda x: ((relu_forward(x),), x), backward=lambda x, gy: (relu_backward(x, gy),),
    reference=(lambda x: ((_relu_ref(x),), x), lambda x, gy: (np.where(x > 0, gy, gy.dtype.type(0)),)),
    cpu=ops.Kernels(_relu_fwd, _relu_bwd), gpu=ops.Kernels(_relu_fwd_xp, _relu_bwd_xp), sample=_sample_relu))

ops.register(ops.Op(
    "dropout", "inverted dropout with a host-drawn mask: x * mask / (1 - p)",
    forward=_dropout_forward, backward=lambda mask, gy: (gy * mask,),
    reference=(_dropout_ref, lambda saved, gy: (np.where(saved[0], gy.astype(np.float64) / (1.0 - saved[1]),
                                                         0.0).astype(gy.dtype),)),
    cpu=ops.XP, gpu=ops.XP, sample=_sample_dropout))


# ----------------------------------------------------------------------------------------- layers
class ReLU(Module):
    """Rectified linear unit, elementwise: y = max(x, 0); a NaN input stays NaN.

    Shapes: any float array -> same shape and dtype. Backward passes ``gy`` where ``x > 0``.
    The forward keeps a reference to ``x`` (not a copy) for the backward.
    """

    def __init__(self):
        super().__init__()
        self._saved = None

    def forward(self, x):
        check_array(x, "x", where="ReLU.forward")
        y = relu_forward(x)
        self._saved = x
        return y

    def backward(self, gy):
        x = self._saved_or_raise(self._saved)
        check_grad_output(gy, x.shape, x.dtype, where="ReLU.backward")
        return relu_backward(x, gy)


class Flatten(Module):
    """(N, d1, d2, ...) -> (N, d1*d2*...), a view when ``x`` is contiguous; backward reshapes
    ``gy`` (N, d1*d2*...) back to the input's shape."""

    def __init__(self):
        super().__init__()
        self._saved = None

    def forward(self, x):
        check_array(x, "x", where="Flatten.forward")
        if x.ndim < 2:
            raise ValueError(f"Flatten.forward: x: expected at least 2 dimensions (N, ...), got shape {tuple(x.shape)}")
        self._saved = (tuple(x.shape), x.dtype)
        return x.reshape(x.shape[0], int(np.prod(x.shape[1:])))  # not -1: that fails for an empty batch

    def backward(self, gy):
        shape, dtype = self._saved_or_raise(self._saved)
        check_grad_output(gy, (shape[0], int(np.prod(shape[1:]))), dtype, where="Flatten.backward")
        return gy.reshape(shape)


class Dropout(Module):
    """Inverted dropout: in train mode each element is kept with probability ``1 - p`` and scaled
    by ``1 / (1 - p)``, so the expected output equals the input; in eval mode (and for p = 0) it
    is the identity.

    Parameters
    ----------
    p : float in [0, 1), default 0.5
        Probability of zeroing an element.
    rng : numpy.random.Generator, optional
        Source of the masks. Default: the library-wide generator ``minignn.init.get_rng()``,
        looked up at each forward (so ``minignn.init.manual_seed`` takes effect).

    Shapes: any float array -> same shape and dtype. The mask (x's shape and dtype, holding
    0 or ``1/(1-p)``) is saved for the backward. Masks are drawn on the host with NumPy, so a
    seeded run gives the same masks on either device (on a GPU the mask is copied over).
    """

    def __init__(self, p: float = 0.5, rng: np.random.Generator | None = None):
        super().__init__()
        self.p = check_probability(p, "p", "Dropout")
        if rng is not None and not isinstance(rng, np.random.Generator):
            raise TypeError(f"Dropout: rng: expected a numpy.random.Generator or None, got {type(rng).__name__}"
                            f" (make one with numpy.random.default_rng(seed))")
        self.rng = rng
        self._saved = None

    def forward(self, x):
        check_array(x, "x", where="Dropout.forward")
        if not self.training or self.p == 0.0:
            self._saved = (None, tuple(x.shape), x.dtype)
            return x
        from minignn.init import get_rng
        rng = self.rng if self.rng is not None else get_rng()
        y, mask = dropout_forward(x, self.p, rng)
        self._saved = (mask, tuple(x.shape), x.dtype)
        return y

    def backward(self, gy):
        mask, shape, dtype = self._saved_or_raise(self._saved)
        check_grad_output(gy, shape, dtype, where="Dropout.backward")
        return gy if mask is None else gy * mask

    def extra_repr(self):
        return f"p={self.p:g}"
