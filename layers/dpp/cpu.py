"""Numba kernels of detail-preserving pooling (NCHW, C-contiguous arrays, k x k windows at stride k).

Both kernels run in parallel over the ``N*C`` image planes (``prange``): an iteration reads and
writes only its own plane of each array (and its own entries of the per-plane sums), so nothing
races. gamma and alpha arrive as (N, C) arrays (the glue broadcasts a scalar or a (C,) array);
plane (n, c) reads ``gamma[n, c]`` and ``alpha[n, c]``. ``asym`` is 1 for the "asym" variant
(``e = ReLU(d)``), 0 for "sym" (``e = d``); either way ``v = e^2 + eps`` and ``f'(d) = 2 e``.

Per window, in float64 whatever x's dtype (every value is read as ``np.float64``, so that the
plain-Python run of ``NUMBA_DISABLE_JIT=1`` computes in float64 too), with ``l_q = log(v_q / V)``
and ``p_q = exp(gamma l_q)``::

    forward   m, e_q, v_q, V, p_q, S = sum p + n alpha, y = sum I (p + alpha) / S
    backward  a_q = (I_q - y) / S,   dgamma += gy sum a_q p_q l_q,   dalpha += gy sum a_q
              c_q = gamma a_q p_q,   gd_q = (c_q / v_q - mean(c) / V) 2 e_q
              gx_q = gy ((p_q + alpha) / S + gd_q - mean(gd))

(the derivation is in the package docstring). The backward recomputes the window from x; the
2x2 bodies keep the four cells in registers (4 logs and 4 exps per window, forward and backward
alike, from :mod:`minignn._fastmath`, branch-free, so LLVM runs the window loops in SIMD lanes:
the forward directly, 2.3x faster than libm's one-at-a-time calls; the backward on a row of
windows de-interleaved into a unit-stride scratch, its parameter terms summed after the row, as a
running float sum inside the loop would not vectorise: 1.9x faster), the general bodies keep a window's e, v, p and l in a per-plane scratch of 4 x k*k.
Every gx cell is written exactly once: the window cells by their window, the trailing rows and
columns (in no window) with 0, so gx needs no separate memset. The per-plane sums are float64
(N, C) arrays that the glue reduces to each parameter's form.
"""
from __future__ import annotations

import math

import numpy as np

from minignn._fastmath import div, exp, log
from minignn._numba import njit, pjit, prange
from minignn.layers.pooling.cpu import gather_row_2x2, scatter_row_2x2, zero_trailing

#: eps in ``v = e^2 + eps``.
DPP_EPS = 1e-3


@njit(inline='always')
def _emph(dv, asym):
    """e = d ("sym") or ReLU(d) ("asym")."""
    return 0.0 if (asym != 0) & (dv < 0.0) else dv     # a select, not a branch (vectorisable)


# -------------------------------------------------------------------------------------- forward
@njit(inline='always')
def _fwd_plane_2x2(x, gamma, alpha, asym, n, c, y):
    gm = np.float64(gamma[n, c])
    al = np.float64(alpha[n, c])
    for oh in range(y.shape[2]):
        h0 = 2 * oh
        for ow in range(y.shape[3]):
            w0 = 2 * ow
            i0 = np.float64(x[n, c, h0, w0])
            i1 = np.float64(x[n, c, h0, w0 + 1])
            i2 = np.float64(x[n, c, h0 + 1, w0])
            i3 = np.float64(x[n, c, h0 + 1, w0 + 1])
            m = ((i0 + i1) + (i2 + i3)) * 0.25
            e0 = _emph(i0 - m, asym)
            e1 = _emph(i1 - m, asym)
            e2 = _emph(i2 - m, asym)
            e3 = _emph(i3 - m, asym)
            v0 = e0 * e0 + DPP_EPS
            v1 = e1 * e1 + DPP_EPS
            v2 = e2 * e2 + DPP_EPS
            v3 = e3 * e3 + DPP_EPS
            iv = div(4.0, (v0 + v1) + (v2 + v3))
            p0 = exp(gm * log(v0 * iv))
            p1 = exp(gm * log(v1 * iv))
            p2 = exp(gm * log(v2 * iv))
            p3 = exp(gm * log(v3 * iv))
            s = ((p0 + p1) + (p2 + p3)) + 4.0 * al
            t = (i0 * (p0 + al) + i1 * (p1 + al)) + (i2 * (p2 + al) + i3 * (p3 + al))
            y[n, c, oh, ow] = div(t, s)


@njit(inline='always')
def _fwd_plane(x, gamma, alpha, k, asym, n, c, y):
    gm = np.float64(gamma[n, c])
    al = np.float64(alpha[n, c])
    inv_n = 1.0 / (k * k)
    for oh in range(y.shape[2]):
        h0 = k * oh
        for ow in range(y.shape[3]):
            w0 = k * ow
            m = 0.0
            for di in range(k):
                for dj in range(k):
                    m += np.float64(x[n, c, h0 + di, w0 + dj])
            m *= inv_n
            vs = 0.0
            for di in range(k):
                for dj in range(k):
                    e = _emph(np.float64(x[n, c, h0 + di, w0 + dj]) - m, asym)
                    vs += e * e + DPP_EPS
            iv = 1.0 / (vs * inv_n)
            s = 0.0
            t = 0.0
            for di in range(k):
                for dj in range(k):
                    xv = np.float64(x[n, c, h0 + di, w0 + dj])
                    e = _emph(xv - m, asym)
                    wq = math.exp(gm * math.log((e * e + DPP_EPS) * iv)) + al
                    s += wq
                    t += xv * wq
            y[n, c, oh, ow] = t / s


@pjit
def dpp_pool2d_fwd_cpu(x, gamma, alpha, k, asym, y):
    """y[n, c, oh, ow] = sum_R I w / sum_R w over window (oh, ow) of plane (n, c) (float64
    arithmetic; gamma, alpha (N, C))."""
    n_ch = x.shape[1]
    for plane in prange(x.shape[0] * n_ch):
        n = plane // n_ch
        c = plane - n * n_ch
        if k == 2:
            _fwd_plane_2x2(x, gamma, alpha, asym, n, c, y)
        else:
            _fwd_plane(x, gamma, alpha, k, asym, n, c, y)


# ------------------------------------------------------------------------------------- backward
@njit(inline='always')
def _bwd_row_2x2(sc, wo, gm, al, asym):
    """One output row's windows, from the de-interleaved scratch rows (0..3: the cells I; 4: gy)
    to rows 5..8 (the four cells' gradients), 9 and 10 (each window's gy dy/dgamma, gy dy/dalpha).
    Unit-stride and branch-free, with :mod:`minignn._fastmath`'s log and exp, so LLVM vectorises it."""
    for ow in range(wo):
        g = sc[4, ow]
        i0 = sc[0, ow]
        i1 = sc[1, ow]
        i2 = sc[2, ow]
        i3 = sc[3, ow]
        m = ((i0 + i1) + (i2 + i3)) * 0.25
        e0 = _emph(i0 - m, asym)
        e1 = _emph(i1 - m, asym)
        e2 = _emph(i2 - m, asym)
        e3 = _emph(i3 - m, asym)
        v0 = e0 * e0 + DPP_EPS
        v1 = e1 * e1 + DPP_EPS
        v2 = e2 * e2 + DPP_EPS
        v3 = e3 * e3 + DPP_EPS
        iv = div(4.0, (v0 + v1) + (v2 + v3))
        l0 = log(v0 * iv)
        l1 = log(v1 * iv)
        l2 = log(v2 * iv)
        l3 = log(v3 * iv)
        p0 = exp(gm * l0)
        p1 = exp(gm * l1)
        p2 = exp(gm * l2)
        p3 = exp(gm * l3)
        inv_s = div(1.0, ((p0 + p1) + (p2 + p3)) + 4.0 * al)
        yv = ((i0 * (p0 + al) + i1 * (p1 + al)) + (i2 * (p2 + al) + i3 * (p3 + al))) * inv_s
        a0 = (i0 - yv) * inv_s
        a1 = (i1 - yv) * inv_s
        a2 = (i2 - yv) * inv_s
        a3 = (i3 - yv) * inv_s
        q0 = a0 * p0
        q1 = a1 * p1
        q2 = a2 * p2
        q3 = a3 * p3
        sc[9, ow] = g * ((q0 * l0 + q1 * l1) + (q2 * l2 + q3 * l3))
        sc[10, ow] = g * ((a0 + a1) + (a2 + a3))
        cbar_v = gm * ((q0 + q1) + (q2 + q3)) * 0.25 * iv      # mean(c) / V
        d0 = (gm * div(q0, v0) - cbar_v) * 2.0 * e0
        d1 = (gm * div(q1, v1) - cbar_v) * 2.0 * e1
        d2 = (gm * div(q2, v2) - cbar_v) * 2.0 * e2
        d3 = (gm * div(q3, v3) - cbar_v) * 2.0 * e3
        dbar = ((d0 + d1) + (d2 + d3)) * 0.25
        sc[5, ow] = g * ((p0 + al) * inv_s + d0 - dbar)
        sc[6, ow] = g * ((p1 + al) * inv_s + d1 - dbar)
        sc[7, ow] = g * ((p2 + al) * inv_s + d2 - dbar)
        sc[8, ow] = g * ((p3 + al) * inv_s + d3 - dbar)


@njit(inline='always')
def _bwd_plane_2x2(x, gamma, alpha, gy, asym, n, c, gx, sc):
    """Write the plane's gx; return its sums of gy dy/dgamma and gy dy/dalpha. A row of windows
    at a time: its cells and gy de-interleaved into the float64 scratch ``sc`` (11, Wo), the
    windows computed by :func:`_bwd_row_2x2`, the gradients written back and the row's
    parameter terms summed in order."""
    gm = np.float64(gamma[n, c])
    al = np.float64(alpha[n, c])
    dg = 0.0
    da = 0.0
    wo = gy.shape[3]
    for oh in range(gy.shape[2]):
        gather_row_2x2(x, gy, n, c, oh, sc)
        _bwd_row_2x2(sc, wo, gm, al, asym)
        scatter_row_2x2(gx, n, c, oh, wo, sc)
        for ow in range(wo):
            dg += sc[9, ow]
            da += sc[10, ow]
    zero_trailing(gx, n, c, 2 * gy.shape[2], 2 * gy.shape[3])
    return dg, da


@njit(inline='always')
def _bwd_plane(x, gamma, alpha, gy, k, asym, n, c, gx):
    """The general body: scratch rows e, v, p, l (then gd) of one window at a time."""
    gm = np.float64(gamma[n, c])
    al = np.float64(alpha[n, c])
    kk = k * k
    inv_n = 1.0 / kk
    sc = np.empty((4, kk), dtype=np.float64)
    dg = 0.0
    da = 0.0
    for oh in range(gy.shape[2]):
        h0 = k * oh
        for ow in range(gy.shape[3]):
            w0 = k * ow
            g = np.float64(gy[n, c, oh, ow])
            m = 0.0
            for di in range(k):
                for dj in range(k):
                    m += np.float64(x[n, c, h0 + di, w0 + dj])
            m *= inv_n
            vs = 0.0
            for q in range(kk):
                di = q // k
                e = _emph(np.float64(x[n, c, h0 + di, w0 + q - di * k]) - m, asym)
                sc[0, q] = e
                sc[1, q] = e * e + DPP_EPS
                vs += sc[1, q]
            iv = 1.0 / (vs * inv_n)
            s = 0.0
            t = 0.0
            for q in range(kk):
                di = q // k
                lq = math.log(sc[1, q] * iv)
                pq = math.exp(gm * lq)
                sc[2, q] = pq
                sc[3, q] = lq
                s += pq + al
                t += np.float64(x[n, c, h0 + di, w0 + q - di * k]) * (pq + al)
            inv_s = 1.0 / s
            yv = t * inv_s
            sdg = 0.0
            sda = 0.0
            sc_ = 0.0
            for q in range(kk):
                di = q // k
                aq = (np.float64(x[n, c, h0 + di, w0 + q - di * k]) - yv) * inv_s
                qq = aq * sc[2, q]
                sdg += qq * sc[3, q]
                sda += aq
                sc_ += qq
                sc[3, q] = gm * qq                                  # c_q (l_q is no longer needed)
            dg += g * sdg
            da += g * sda
            cbar_v = gm * sc_ * inv_n * iv
            sd = 0.0
            for q in range(kk):
                dq = (sc[3, q] / sc[1, q] - cbar_v) * 2.0 * sc[0, q]
                sc[3, q] = dq
                sd += dq
            dbar = sd * inv_n
            for q in range(kk):
                di = q // k
                gx[n, c, h0 + di, w0 + q - di * k] = g * ((sc[2, q] + al) * inv_s + sc[3, q] - dbar)
    zero_trailing(gx, n, c, k * gy.shape[2], k * gy.shape[3])
    return dg, da


@pjit
def dpp_pool2d_bwd_cpu(x, gamma, alpha, gy, k, asym, gx, gg, ga):
    """gx (written whole, the trailing zeros included); gg[n, c], ga[n, c] (float64) = the
    plane's sums over windows of gy dy/dgamma and gy dy/dalpha."""
    n_ch = x.shape[1]
    for plane in prange(x.shape[0] * n_ch):
        n = plane // n_ch
        c = plane - n * n_ch
        if k == 2:
            dg, da = _bwd_plane_2x2(x, gamma, alpha, gy, asym, n, c, gx, np.empty((11, gy.shape[3])))
        else:
            dg, da = _bwd_plane(x, gamma, alpha, gy, k, asym, n, c, gx)
        gg[n, c] = dg
        ga[n, c] = da
