"""Plain-NumPy global statistics: the slow, readable truth the Numba kernels are tested against
(used by the tests only).

For every sample n and channel c, over the H x W cells of ``x[n, c]``::

    avg = mean(x)
    std = sqrt(mean((x - avg)**2) + eps)          (population variance, two-pass)
    max = max(x)

and their gradients::

    d avg / d x = 1 / (H W)
    d std / d x = (x - avg) / (H W std)           (the d avg / d x term cancels: sum(x - avg) = 0)
    d max / d x = 1 at the first argmax (row-major), 0 elsewhere
"""
from __future__ import annotations

import numpy as np

STATS = ("avg", "avg+std", "max")


def global_stats_reference(x: np.ndarray, stat: str = "avg", eps: float = 1e-5) -> np.ndarray:
    """t of shape (N, C) for "avg" / "max", (N, 2C) for "avg+std" (avg block, then std block)."""
    n, c, h, w = x.shape
    flat = x.reshape(n, c, h * w).astype(np.float64)
    avg = flat.mean(axis=2)
    if stat == "avg":
        t = avg
    elif stat == "avg+std":
        var = ((flat - avg[:, :, None]) ** 2).mean(axis=2)
        t = np.concatenate([avg, np.sqrt(var + eps)], axis=1)
    elif stat == "max":
        t = flat.max(axis=2)
    else:
        raise ValueError(f"stat: expected one of {STATS}, got {stat!r}")
    return t.astype(x.dtype)


def global_stats_backward_reference(gt: np.ndarray, x: np.ndarray, stat: str = "avg",
                                    eps: float = 1e-5) -> np.ndarray:
    """gx (N, C, H, W) from gt (the gradient of t) and the forward input x."""
    n, c, h, w = x.shape
    hw = h * w
    flat = x.reshape(n, c, hw).astype(np.float64)
    gt = gt.astype(np.float64)
    if stat == "avg":
        gx = np.broadcast_to(gt[:, :, None] / hw, flat.shape).copy()
    elif stat == "avg+std":
        g_avg, g_std = gt[:, :c], gt[:, c:]
        avg = flat.mean(axis=2, keepdims=True)
        std = np.sqrt(((flat - avg) ** 2).mean(axis=2, keepdims=True) + eps)
        gx = g_avg[:, :, None] / hw + g_std[:, :, None] * (flat - avg) / (hw * std)
    elif stat == "max":
        gx = np.zeros_like(flat)
        arg = flat.argmax(axis=2)  # first occurrence
        for i in range(n):
            for j in range(c):
                gx[i, j, arg[i, j]] = gt[i, j]
    else:
        raise ValueError(f"stat: expected one of {STATS}, got {stat!r}")
    return gx.reshape(x.shape).astype(x.dtype)


def local_stats_reference(x: np.ndarray, stat: str = "avg", kernel_size=(2, 2), stride=(2, 2), padding=(0, 0),
                          eps: float = 1e-5) -> np.ndarray:
    """Window statistics (N, kC, Ho, Wo) by explicit loops over the windows' real (unpadded) cells."""
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    n, c, h, w = x.shape
    ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    k = 2 if stat == "avg+std" else 1
    t = np.empty((n, k * c, ho, wo), dtype=np.float64)
    for i in range(ho):
        for j in range(wo):
            r0, c0 = i * sh - ph, j * sw - pw
            win = x[:, :, max(r0, 0):min(r0 + kh, h), max(c0, 0):min(c0 + kw, w)].astype(np.float64)
            win = win.reshape(n, c, win.shape[2] * win.shape[3])
            t[:, :c, i, j] = win.max(axis=2) if stat == "max" else win.mean(axis=2)
            if stat == "avg+std":
                t[:, c:, i, j] = np.sqrt(win.var(axis=2) + eps)
    return t.astype(x.dtype)


def _act(name, z):
    if name == "sigmoid":
        return 1.0 / (1.0 + np.exp(-z))
    if name == "softplus":
        return np.log1p(np.exp(z))
    if name == "tanh":
        return np.tanh(z)
    return z


def gfgp_mapping_reference(t, V_lam, activation="sigmoid", U=None, b_U=None, b_lam=None, V_rho=None, b_rho=None):
    """lam = s(V_lam ReLU(U t + b_U) + b_lam) (U None: the SLP s(V_lam t + b_lam)) and, when V_rho
    is given, rho = V_rho ReLU(U t + b_U) + b_rho reshaped to (N, C, K) (or (N, C, K, Ho, Wo)),
    for t (N, F) or (N, F, Ho, Wo), written with einsum over the feature axis (no batch norm)."""
    t = np.asarray(t, dtype=np.float64)
    spatial = "hw" if t.ndim == 4 else ""

    def lin(w, b, v):
        out = np.einsum(f"of,nf{spatial}->no{spatial}", w, v)
        if b is not None:
            out = out + b.reshape((1, -1) + (1,) * len(spatial))
        return out

    hid = t if U is None else np.maximum(lin(U, b_U, t), 0.0)
    lam = _act(activation, lin(V_lam, b_lam, hid))
    rho = None
    if V_rho is not None:
        r = lin(V_rho, b_rho, hid)
        c = V_lam.shape[0]
        rho = r.reshape((r.shape[0], c, -1) + r.shape[2:])
    return lam, rho


def local_stats_backward_reference(gt: np.ndarray, x: np.ndarray, stat: str = "avg", kernel_size=(2, 2),
                                   stride=(2, 2), padding=(0, 0), eps: float = 1e-5) -> np.ndarray:
    """gx (N, C, H, W) of the window statistics, window by window: avg spreads g / |R| over the
    real cells, max sends g to the first argmax (row-major), std adds g (x - mean) / (|R| std)."""
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    n, c, h, w = x.shape
    ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    gt = gt.astype(np.float64)
    gx = np.zeros((n, c, h, w))
    for i in range(ho):
        for j in range(wo):
            r0, c0 = i * sh - ph, j * sw - pw
            rows, cols = slice(max(r0, 0), min(r0 + kh, h)), slice(max(c0, 0), min(c0 + kw, w))
            win = x[:, :, rows, cols].astype(np.float64)
            m = win.shape[2] * win.shape[3]
            g = gt[:, :c, i, j][:, :, None, None]
            if stat == "max":
                flat = win.reshape(n, c, m)
                onehot = np.zeros_like(flat)
                np.put_along_axis(onehot, flat.argmax(axis=2)[:, :, None], 1.0, axis=2)
                gx[:, :, rows, cols] += g * onehot.reshape(win.shape)
                continue
            gx[:, :, rows, cols] += g / m
            if stat == "avg+std":
                mean = win.mean(axis=(2, 3), keepdims=True)
                std = np.sqrt(win.var(axis=(2, 3), keepdims=True) + eps)
                gx[:, :, rows, cols] += gt[:, c:, i, j][:, :, None, None] * (win - mean) / (m * std)
    return gx.astype(x.dtype)
