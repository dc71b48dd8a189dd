"""Gradient checks by central differences in float64.

Every hand-written backward in minignn is checked here: the analytic gradient of the scalar
``L = sum(y * r)`` (``r`` a fixed random array, so every output element matters) is compared
with ``(L(v + eps) - L(v - eps)) / (2 eps)`` for each checked element ``v`` of each input and
parameter. A mismatch raises :class:`GradcheckError` naming the tensor, the index, the expected
(numeric) and the got (analytic) value.

Two entry points:

* :func:`gradcheck` for a :class:`~minignn.module.Module` (input and every parameter);
* :func:`check_gradients` for anything else: give it a loss closure over arrays it may perturb
  in place, and the analytic gradients you computed.
"""
from __future__ import annotations

import copy
from typing import Callable, Mapping

import numpy as np

from . import backend


class GradcheckError(AssertionError):
    """An analytic gradient disagrees with central differences."""


def _indices(shape, max_checks: int | None, rng: np.random.Generator):
    size = int(np.prod(shape)) if len(shape) else 1
    if max_checks is None or size <= max_checks:
        flat = np.arange(size)
    else:
        flat = np.sort(rng.choice(size, size=max_checks, replace=False))
    return [np.unravel_index(i, shape) if len(shape) else () for i in flat]


def numerical_gradient(loss: Callable[[], float], v: np.ndarray, index, eps: float) -> float:
    """d loss / d v[index] by central differences; ``v`` is perturbed in place and restored."""
    old = v[index].copy() if hasattr(v[index], "copy") else v[index]
    v[index] = old + eps
    lp = float(loss())
    v[index] = old - eps
    lm = float(loss())
    v[index] = old
    return (lp - lm) / (2.0 * eps)


def check_gradients(loss: Callable[[], float], tensors: Mapping[str, np.ndarray],
                    analytic: Mapping[str, np.ndarray], eps: float = 1e-6, atol: float = 1e-6,
                    rtol: float = 1e-4, max_checks: int | None = 200, seed: int = 0) -> None:
    """Compare analytic gradients with central differences.

    Parameters
    ----------
    loss : callable () -> float
        Recomputes the scalar loss from the current contents of ``tensors``.
    tensors : {name: float64 array}
        Arrays the loss reads; each is perturbed in place, element by element, and restored.
    analytic : {name: array}
        The gradient of the loss with respect to each tensor, same shape.
    max_checks : int or None
        Check at most this many (randomly chosen, seeded) elements per tensor; None checks all.
    """
    rng = np.random.default_rng(seed)
    for name, v in tensors.items():
        if v.dtype != np.float64:
            raise TypeError(f"check_gradients: {name}: expected a float64 array, got {v.dtype}")
        g = backend.to_numpy(analytic[name])
        if g.shape != v.shape:
            raise GradcheckError(f"gradient of {name}: expected shape {v.shape}, got {g.shape}")
        for idx in _indices(v.shape, max_checks, rng):
            num = numerical_gradient(loss, v, idx, eps)
            got = float(g[idx])
            if not np.isfinite(got) or abs(got - num) > atol + rtol * abs(num):
                raise GradcheckError(
                    f"gradient of {name} at index {tuple(int(i) for i in idx)}: expected {num:.10g} "
                    f"(central differences, eps={eps:g}), got {got:.10g} (analytic); "
                    f"difference {abs(got - num):.3g} > atol {atol:g} + rtol {rtol:g} * |expected|")


def gradcheck(module, x, eps: float = 1e-6, atol: float = 1e-6, rtol: float = 1e-4,
              max_checks: int | None = 200, seed: int = 0, check_input: bool = True) -> bool:
    """Check a module's backward (input gradient and every parameter gradient) in float64.

    The module is deep-copied and cast to float64, so the caller's module is untouched. The module
    must be deterministic between calls (put Dropout in eval mode, or use p=0). Returns True, or
    raises :class:`GradcheckError` naming the tensor, index, expected and got.
    """
    m = copy.deepcopy(module).to(dtype=np.float64)
    x = backend.to_numpy(x).astype(np.float64).copy()
    rng = np.random.default_rng(seed)
    y = m.forward(x)
    r = rng.standard_normal(y.shape)
    m.zero_grad()
    gx = m.backward(r.copy())
    analytic = {}
    tensors = {}
    if check_input:
        tensors["input"] = x
        analytic["input"] = gx
    for name, p in m.named_parameters():
        tensors[name] = p.data
        analytic[name] = p.grad.copy()

    def loss():
        return float(np.sum(m.forward(x) * r))

    check_gradients(loss, tensors, analytic, eps=eps, atol=atol, rtol=rtol, max_checks=max_checks, seed=seed)
    return True
