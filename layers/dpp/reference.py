"""Detail-preserving pooling in plain NumPy: the readable truth the kernels are tested against.

Slow on purpose and used by the tests only. It works in float64 with every window as an
(N, C, Ho, Wo, n) array (n = k*k cells, row-major in the window) and writes the backward as an
explicit chain of per-window Jacobians, matrix by matrix, instead of the kernels' closed form::

    dy/dI = w / S  +  (dy/dw  diag(dw/dr)  J_rv  diag(f'(d)))  J_dI
    dy/dw_q = (I_q - y) / S,   dw_q/dr_q = gamma r_q^(gamma - 1)
    J_rv[q, j] = dr_q/dv_j = (delta_qj - r_q / n) / V        (n x n, through V = mean v)
    J_dI[q, j] = dd_q/dI_j = delta_qj - 1/n                  (n x n, through the average)
    dy/dgamma = sum_q dy/dw_q r_q^gamma log r_q,   dy/dalpha = sum_q dy/dw_q

so it shares no formulation with the kernels it checks (those use ``c_q / v_q - mean(c) / V``).
"""
from __future__ import annotations

import numpy as np

EPS = 1e-3


def _windows(x, k):
    """x's windows as (N, C, Ho, Wo, k*k) float64 (trailing rows and columns dropped)."""
    N, C, H, W = x.shape
    Ho, Wo = H // k, W // k
    xw = np.asarray(x, dtype=np.float64)[:, :, :Ho * k, :Wo * k].reshape(N, C, Ho, k, Wo, k)
    return xw.transpose(0, 1, 2, 4, 3, 5).reshape(N, C, Ho, Wo, k * k)


def _per_window(v, N, C):
    """gamma or alpha (a float, a 0-d array, (C,) or (N, C)) as (N, C, 1, 1, 1) float64."""
    v = np.asarray(v, dtype=np.float64)
    return np.broadcast_to(v, (N, C))[:, :, None, None, None]


def _pool(x, gamma, alpha, k, variant):
    N, C = x.shape[:2]
    I = _windows(x, k)
    g = _per_window(gamma, N, C)
    a = _per_window(alpha, N, C)
    m = I.mean(axis=-1, keepdims=True)
    d = I - m
    e = d if variant == "sym" else np.maximum(d, 0.0)
    v = e * e + EPS
    V = v.mean(axis=-1, keepdims=True)
    r = v / V
    p = r ** g
    w = p + a
    S = w.sum(axis=-1, keepdims=True)
    y = (I * w).sum(axis=-1, keepdims=True) / S
    return dict(I=I, g=g, d=d, e=e, v=v, V=V, r=r, p=p, w=w, S=S, y=y)


def dpp_pool2d_forward_ref(x, gamma, alpha, kernel_size=2, variant="sym"):
    """y (N, C, H // k, W // k) in x's dtype."""
    return _pool(x, gamma, alpha, kernel_size, variant)["y"][..., 0].astype(x.dtype)


def _like(grad, param, dtype):
    """A per-window gradient (N, C, Ho, Wo) summed to the parameter's form."""
    if np.ndim(param) == 0:
        return float(grad.sum())
    if np.ndim(param) == 1:
        return grad.sum(axis=(0, 2, 3)).astype(dtype)
    return grad.sum(axis=(2, 3)).astype(dtype)


def dpp_pool2d_backward_ref(x, gamma, alpha, gy, kernel_size=2, variant="sym"):
    """(gx, ggamma, galpha) for the upstream gradient gy: gx (N, C, H, W) in x's dtype (0 at the
    trailing rows and columns), ggamma and galpha shaped like gamma and alpha (a Python float for
    a scalar)."""
    k = kernel_size
    n = k * k
    s = _pool(x, gamma, alpha, k, variant)
    N, C, H, W = x.shape
    Ho, Wo = H // k, W // k
    dydw = (s["I"] - s["y"]) / s["S"]                                   # (N, C, Ho, Wo, n)
    dwdr = s["g"] * s["r"] ** (s["g"] - 1.0)
    eye = np.eye(n)
    J_rv = (eye - s["r"][..., :, None] / n) / s["V"][..., None]         # (..., n, n): [q, j]
    J_dI = eye - 1.0 / n
    fprime = 2.0 * s["e"]
    gv = np.einsum("...q,...qj->...j", dydw * dwdr, J_rv)
    gI = s["w"] / s["S"] + np.einsum("...q,qj->...j", gv * fprime, J_dI)
    g = np.asarray(gy, dtype=np.float64)
    gxw = g[..., None] * gI
    gx = np.zeros((N, C, H, W))
    gx[:, :, :Ho * k, :Wo * k] = gxw.reshape(N, C, Ho, Wo, k, k).transpose(0, 1, 2, 4, 3, 5).reshape(
        N, C, Ho * k, Wo * k)
    dgamma = (dydw * s["p"] * np.log(s["r"])).sum(axis=-1)
    dalpha = dydw.sum(axis=-1)
    return gx.astype(x.dtype), _like(g * dgamma, gamma, x.dtype), _like(g * dalpha, alpha, x.dtype)
