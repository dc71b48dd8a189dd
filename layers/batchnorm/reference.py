"""Plain NumPy batch normalisation over (N, C, H, W): readable, the test oracle (tests only).

Computes in float64 and returns arrays in the input's dtype.
"""
from __future__ import annotations

import numpy as np

AXES = (0, 2, 3)


def _c(v):
    """Per-channel vector -> (1, C, 1, 1) for broadcasting."""
    return np.asarray(v, dtype=np.float64).reshape(1, -1, 1, 1)


def batchnorm2d_forward_ref(x, gamma, beta, running_mean, running_var, training, momentum=0.1, eps=1e-5):
    """Returns ``y`` and the updated ``(running_mean, running_var)`` (unchanged in eval mode).

    Train: normalise with the batch mean and biased variance; running statistics move towards the
    batch mean and the *unbiased* variance ``var * M / (M - 1)``, ``M = N*H*W``, by ``momentum``.
    Eval: normalise with the running statistics.
    """
    x64 = x.astype(np.float64)
    if training:
        m = x.shape[0] * x.shape[2] * x.shape[3]
        mean = x64.mean(axis=AXES)
        var = x64.var(axis=AXES)
        new_rm = (1 - momentum) * running_mean + momentum * mean
        new_rv = (1 - momentum) * running_var + momentum * var * m / (m - 1)
    else:
        mean, var = np.asarray(running_mean, np.float64), np.asarray(running_var, np.float64)
        new_rm, new_rv = running_mean, running_var
    xhat = (x64 - _c(mean)) / np.sqrt(_c(var) + eps)
    y = _c(gamma) * xhat + _c(beta)
    return y.astype(x.dtype), (np.asarray(new_rm, dtype=x.dtype), np.asarray(new_rv, dtype=x.dtype))


def batchnorm2d_backward_ref(gy, x, gamma, running_mean, running_var, training, eps=1e-5):
    """Returns ``gx, ggamma, gbeta`` for the forward above.

    Train (the statistics depend on x), with ``xhat = (x - mean) / sqrt(var + eps)``:
    ``gx = gamma / sqrt(var + eps) * (gy - mean(gy) - xhat * mean(gy * xhat))`` (means per channel).
    Eval: ``gx = gamma / sqrt(running_var + eps) * gy``.
    """
    x64, gy64 = x.astype(np.float64), gy.astype(np.float64)
    if training:
        mean, var = x64.mean(axis=AXES), x64.var(axis=AXES)
    else:
        mean, var = np.asarray(running_mean, np.float64), np.asarray(running_var, np.float64)
    inv = 1.0 / np.sqrt(_c(var) + eps)
    xhat = (x64 - _c(mean)) * inv
    gbeta = gy64.sum(axis=AXES)
    ggamma = (gy64 * xhat).sum(axis=AXES)
    if training:
        gx = _c(gamma) * inv * (gy64 - gy64.mean(axis=AXES, keepdims=True)
                                - xhat * (gy64 * xhat).mean(axis=AXES, keepdims=True))
    else:
        gx = _c(gamma) * inv * gy64
    return gx.astype(gy.dtype), ggamma.astype(gy.dtype), gbeta.astype(gy.dtype)
