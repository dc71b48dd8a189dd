"""Numba kernels of mixed and gated max-average pooling (NCHW, C-contiguous arrays).

One forward and one backward serve both poolings: a window's gate is ``a[n, c]`` (mixed: one
value per channel, or per sample and channel) or ``sigmoid(omega . x_R)`` (gated: ``omega`` of
K = kh*kw weights, one per window offset; ``omega`` of length 0 selects the mixed form).

The forward makes one pass over each window: the running max with its offset (the tie and NaN
rule of every max-like kernel, :func:`minignn.layers.pooling.cpu._takes_over`: the first
maximum stays, the first NaN wins), the float64 sum, and for the gated form the dot product
``omega . x_R``. It writes ``y``, ``d = max - avg`` and the argmax offset (the backward needs
both) and, gated, the gate ``g`` per window.

The backward runs in parallel over the ``N*C`` planes; an iteration writes only its own plane of
``gx`` (zeroed just before, while in cache) and its own row of ``gom``, the per-plane partial
sums of the gradient of omega (gated) or of a (mixed: ``sum gy d``) that the caller adds up, so overlapping windows are race-free.
Window geometry from :mod:`minignn.layers._window`: padded cells are never part of a window.
"""
from __future__ import annotations

import math

from minignn._numba import njit, pjit, prange
from minignn.layers._window import is_2x2, param_plane, real_offsets
from minignn.layers.pooling.cpu import _takes_over, max4


@njit(inline='always')
def sigmoid(z):
    """1 / (1 + exp(-z)) without overflow for either sign of z."""
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


@njit(inline='always')
def _fwd_plane(x, n, c, av, omega, gated, kh, kw, sh, sw, ph, pw, y, d, g, arg):
    h_in, w_in = x.shape[2], x.shape[3]
    for oh in range(y.shape[2]):
        h0 = oh * sh - ph
        i0, i1 = real_offsets(h0, kh, h_in)
        for ow in range(y.shape[3]):
            w0 = ow * sw - pw
            j0, j1 = real_offsets(w0, kw, w_in)
            best = x[n, c, h0 + i0, w0 + j0]
            bi = i0 * kw + j0
            s = 0.0
            z = 0.0
            for di in range(i0, i1):
                for dj in range(j0, j1):
                    v = x[n, c, h0 + di, w0 + dj]
                    s += v
                    if gated:
                        z += omega[di * kw + dj] * v
                    if _takes_over(v, best):
                        best = v
                        bi = di * kw + dj
            mean = s / ((i1 - i0) * (j1 - j0))
            gate = av
            if gated:
                gate = sigmoid(z)
                g[n, c, oh, ow] = gate
            y[n, c, oh, ow] = gate * best + (1.0 - gate) * mean
            d[n, c, oh, ow] = best - mean
            arg[n, c, oh, ow] = bi


@njit(inline='always')
def _gated_plane_2x2(x, n, c, omega, y, d, g, arg):
    """The 2x2, stride 2, no padding case of gated pooling: four cells per window, fixed offsets."""
    o0, o1, o2, o3 = omega[0], omega[1], omega[2], omega[3]
    for oh in range(y.shape[2]):
        h0 = 2 * oh
        for ow in range(y.shape[3]):
            w0 = 2 * ow
            v0 = x[n, c, h0, w0]
            v1 = x[n, c, h0, w0 + 1]
            v2 = x[n, c, h0 + 1, w0]
            v3 = x[n, c, h0 + 1, w0 + 1]
            best, bi = max4(v0, v1, v2, v3)
            mean = ((v0 + 0.0) + v1 + v2 + v3) * 0.25
            gate = sigmoid(o0 * v0 + o1 * v1 + o2 * v2 + o3 * v3 + 0.0)
            g[n, c, oh, ow] = gate
            y[n, c, oh, ow] = gate * best + (1.0 - gate) * mean
            d[n, c, oh, ow] = best - mean
            arg[n, c, oh, ow] = bi


@njit(inline='always')
def _mixed_plane_2x2(x, n, c, av, y, d, arg):
    """The 2x2 case of mixed pooling (a constant gate per plane). Mixed and gated pooling have a
    plane body each: one body with a runtime ``gated`` flag ran mixed pooling 3x slower."""
    a = av + 0.0
    for oh in range(y.shape[2]):
        h0 = 2 * oh
        for ow in range(y.shape[3]):
            w0 = 2 * ow
            v0 = x[n, c, h0, w0]
            v1 = x[n, c, h0, w0 + 1]
            v2 = x[n, c, h0 + 1, w0]
            v3 = x[n, c, h0 + 1, w0 + 1]
            best, bi = max4(v0, v1, v2, v3)
            mean = ((v0 + 0.0) + v1 + v2 + v3) * 0.25
            y[n, c, oh, ow] = a * best + (1.0 - a) * mean
            d[n, c, oh, ow] = best - mean
            arg[n, c, oh, ow] = bi


@pjit
def mixpool2d_fwd_cpu(x, a, omega, kh, kw, sh, sw, ph, pw, y, d, g, arg):
    """y = gate max + (1 - gate) avg per window, gate = a[n or 0, c or 0] (a of shape (Na, Ca),
    each 1 or full) or, when omega is not empty, sigmoid(omega . x_R) (written to g). Also writes
    d = max - avg and arg, the offset ``di*kw + dj`` of the window's first maximum."""
    n_ch = x.shape[1]
    gated = omega.shape[0] > 0
    fast = is_2x2(kh, kw, sh, sw, ph, pw)
    for plane in prange(x.shape[0] * n_ch):
        n = plane // n_ch
        c = plane - n * n_ch
        na, ca = param_plane(a, n, c)
        if fast and not gated:
            _mixed_plane_2x2(x, n, c, a[na, ca], y, d, arg)
        elif fast:
            _gated_plane_2x2(x, n, c, omega, y, d, g, arg)
        else:
            _fwd_plane(x, n, c, a[na, ca], omega, gated, kh, kw, sh, sw, ph, pw, y, d, g, arg)


@njit(inline='always')
def _bwd_plane(gy, x, plane, n, c, av, omega, gated, g, d, arg, kh, kw, sh, sw, ph, pw, gx, gom):
    h_in, w_in = gx.shape[2], gx.shape[3]
    for h in range(h_in):
        for w in range(w_in):
            gx[n, c, h, w] = 0
    for q in range(gom.shape[1]):
        gom[plane, q] = 0.0
    for oh in range(gy.shape[2]):
        h0 = oh * sh - ph
        i0, i1 = real_offsets(h0, kh, h_in)
        for ow in range(gy.shape[3]):
            w0 = ow * sw - pw
            j0, j1 = real_offsets(w0, kw, w_in)
            gv = gy[n, c, oh, ow]
            gate = g[n, c, oh, ow] if gated else av
            q = arg[n, c, oh, ow]
            dq = q // kw
            gx[n, c, h0 + dq, w0 + q - dq * kw] += gv * gate
            share = gv * (1.0 - gate) / ((i1 - i0) * (j1 - j0))
            if gated:
                t = gv * d[n, c, oh, ow] * gate * (1.0 - gate)
                for di in range(i0, i1):
                    for dj in range(j0, j1):
                        k = di * kw + dj
                        gx[n, c, h0 + di, w0 + dj] += share + t * omega[k]
                        gom[plane, k] += t * x[n, c, h0 + di, w0 + dj]
            else:
                gom[plane, 0] += gv * d[n, c, oh, ow]
                for di in range(i0, i1):
                    for dj in range(j0, j1):
                        gx[n, c, h0 + di, w0 + dj] += share


@njit(inline='always')
def _gated_bwd_plane_2x2(gy, x, plane, n, c, omega, g, d, arg, gx, gom):
    """The 2x2, stride 2, no padding case of gated pooling: every gx cell written once (the odd
    last row and column, in no window, get 0)."""
    h_in, w_in = gx.shape[2], gx.shape[3]
    s0 = 0.0
    s1 = 0.0
    s2 = 0.0
    s3 = 0.0
    o0, o1, o2, o3 = omega[0], omega[1], omega[2], omega[3]
    for oh in range(gy.shape[2]):
        h0 = 2 * oh
        for ow in range(gy.shape[3]):
            w0 = 2 * ow
            gv = gy[n, c, oh, ow]
            gate = g[n, c, oh, ow]
            q = arg[n, c, oh, ow]
            share = gv * (1.0 - gate) * 0.25
            top = gv * gate
            e0 = share + (top if q == 0 else 0.0)
            e1 = share + (top if q == 1 else 0.0)
            e2 = share + (top if q == 2 else 0.0)
            e3 = share + (top if q == 3 else 0.0)
            t = gv * d[n, c, oh, ow] * gate * (1.0 - gate)
            e0 += t * o0
            e1 += t * o1
            e2 += t * o2
            e3 += t * o3
            s0 += t * x[n, c, h0, w0]
            s1 += t * x[n, c, h0, w0 + 1]
            s2 += t * x[n, c, h0 + 1, w0]
            s3 += t * x[n, c, h0 + 1, w0 + 1]
            gx[n, c, h0, w0] = e0
            gx[n, c, h0, w0 + 1] = e1
            gx[n, c, h0 + 1, w0] = e2
            gx[n, c, h0 + 1, w0 + 1] = e3
        for h in range(h0, h0 + 2):
            for w in range(2 * gy.shape[3], w_in):
                gx[n, c, h, w] = 0
    for h in range(2 * gy.shape[2], h_in):
        for w in range(w_in):
            gx[n, c, h, w] = 0
    gom[plane, 0] = s0
    gom[plane, 1] = s1
    gom[plane, 2] = s2
    gom[plane, 3] = s3


@njit(inline='always')
def _mixed_bwd_plane_2x2(gy, plane, n, c, av, d, arg, gx, gom):
    """The 2x2 case of mixed pooling's backward (a constant gate per plane)."""
    h_in, w_in = gx.shape[2], gx.shape[3]
    a = av + 0.0
    s0 = 0.0
    for oh in range(gy.shape[2]):
        for di in range(2):
            h = 2 * oh + di
            for ow in range(gy.shape[3]):
                gv = gy[n, c, oh, ow]
                q = arg[n, c, oh, ow] - 2 * di
                share = gv * (1.0 - a) * 0.25
                top = gv * a
                gx[n, c, h, 2 * ow] = share + (top if q == 0 else 0.0)
                gx[n, c, h, 2 * ow + 1] = share + (top if q == 1 else 0.0)
                if di == 0:
                    s0 += gv * d[n, c, oh, ow]
            for w in range(2 * gy.shape[3], w_in):
                gx[n, c, h, w] = 0
    for h in range(2 * gy.shape[2], h_in):
        for w in range(w_in):
            gx[n, c, h, w] = 0
    gom[plane, 0] = s0


@pjit
def mixpool2d_bwd_cpu(gy, x, a, omega, g, d, arg, kh, kw, sh, sw, ph, pw, gx, gom):
    """gx = 0, then for every window: gy gate at its argmax cell, gy (1 - gate) / |R| at each real
    cell and, gated, gy d g (1 - g) omega_q at cell q, with gom[plane, q] += gy d g (1 - g) x_q
    (the per-plane partial sums of omega's gradient; x is only read when gated). Mixed: gom is
    (N*C, 1), gom[plane, 0] = sum of gy d over the plane (the partial sums of a's gradient)."""
    n_ch = gx.shape[1]
    gated = omega.shape[0] > 0
    fast = is_2x2(kh, kw, sh, sw, ph, pw)
    for plane in prange(gx.shape[0] * n_ch):
        n = plane // n_ch
        c = plane - n * n_ch
        na, ca = param_plane(a, n, c)
        if fast and not gated:
            _mixed_bwd_plane_2x2(gy, plane, n, c, a[na, ca], d, arg, gx, gom)
            continue
        if fast:
            _gated_bwd_plane_2x2(gy, x, plane, n, c, omega, g, d, arg, gx, gom)
            continue
        _bwd_plane(gy, x, plane, n, c, a[na, ca], omega, gated, g, d, arg, kh, kw, sh, sw, ph, pw, gx, gom)
