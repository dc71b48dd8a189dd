"""Max-entropy pooling on the CPU: fused Numba kernels.

``maxent_pool2d_fwd_cpu`` and ``maxent_pool2d_bwd_cpu`` serve every form of ``lam`` and
``rho``: the wrapper in ``__init__`` hands them ``lam4`` of shape (Nl, Cl, Hl, Wl), each dimension
either 1 or full (N, C, Ho, Wo), and ``rho3`` of shape (Nr, Cr, K), each of the first two 1 or
full; a dimension of size 1 is read at index 0 (a broadcast without a copy, and one compiled
kernel per dtype for all forms).

Parallel over (n, c) planes (``prange`` over chunks of planes, each allocating its scratch once):
a plane's iteration is the only writer of that plane's outputs, so the loop is race-free, and
overlapping windows accumulate serially inside their plane.

Two window loops exist, chosen per call:

* ``_fwd_plane_2x2`` / ``_bwd_plane_2x2``: 2x2 / stride 2 / no padding, fused: a plane in blocks
  of whole output rows (about ``TILE`` windows; the whole plane for the planes of a CIFAR net),
  each block's windows de-interleaved into contiguous scratch, then one loop over the block
  computes max, exps, sums and gradients.
* ``_fwd_plane_generic`` / ``_bwd_plane_generic``: any kernel, stride and padding. The plane's
  windows are laid out as (K, P) scratch by the window template
  (:func:`minignn.layers._window.gather_plane`; K = kh*kw offsets, P = Ho*Wo windows; padded
  cells get z = -inf, so exp gives 0 and they drop out of the softmax), the max-entropy logits
  are added, and :func:`_softmax_mean` forms the weighted mean; every pass runs over P
  contiguous values. A pooling whose weights are another softmax (a per-cell logit map, as in
  LIP) needs only its own logits on the same scratch.

Both keep every loop free of exceptions (``error_model="numpy"``: float division never raises)
and of mixed precision, so LLVM vectorises them, the exponential included: :func:`fexp` is a
range reduction + polynomial (below) for float32 and libm ``exp`` for float64 (used for exact
gradient checks, where speed is not the aim). No fastmath: NaN and inf keep their meaning, and
float reductions are not reordered (:func:`_sum_lanes` keeps 16 partial sums in place of a
vector reduction).

Shifted data: both loops exponentiate z = lam (X_q - x0) + rho_q, with x0 the window's top-left
real cell, and form Y = x0 + sum_q W_q (X_q - x0) (the constant lam x0 cancels in the softmax).
For windows of close values (like [1000, 1000.03]) X_q - x0 is exact in float32, so the weights,
Y - x0 and the backward's deviations X_q - Y = (X_q - x0) - (Y - x0) keep full relative precision;
with lam X_q directly the exponents and Y lose the bits that float32 spends on the common 1000,
and dlam for such windows was off by up to 0.75% relative (measured; now below 3e-7).

The backward recomputes the softmax from x rather than saving it: the exps are cheap once
vectorised, and then nothing but x has to be kept and re-read (the smallest memory traffic).
With ``NUMBA_DISABLE_JIT=1`` all of this runs as plain Python with the same float32 arithmetic.
"""
from __future__ import annotations

import math

import numba
import numpy as np
from numba import types
from numba.extending import overload

from minignn._numba import njit, pjit, prange
from minignn.layers._window import gather_plane, is_2x2, param_plane, param_steps, valid_range

_KW = dict(error_model="numpy")   # division by zero gives inf/nan instead of raising: no early exits

# ---------------------------------------------------------------------------------------------
# exp(v) for v <= 0 in float32, vectorisable.
#
# v is clamped at EXP_LO = -87.33 (exp(EXP_LO) ~ 1.2e-38, the smallest normal float32); below it
# the result is exactly 0 (the true value is < 1.2e-38, so the absolute error is < 1.2e-38, and
# -inf gives 0, never NaN). Range reduction v = n ln2 + r, n = round(v / ln2), |r| <= ln2/2, with
# ln2 split in two (Cody-Waite: n * _LN2_HI is exact for |n| < 2^12) so r is accurate; exp(r) by
# its Taylor polynomial to degree 7 (truncation error <= |r|^8/8! * e^|r| < 7.5e-9 relative), and
# 2^n built from the exponent bits ((n + 127) * 2^23 read as a float32). Measured against float64
# exp over [-87.33, 0]: relative error < 2e-7 (about 1.5 float32 ulps); see test_maxent.py.
# Positive v are not its job (the kernels only exponentiate z - max z <= 0).
# ---------------------------------------------------------------------------------------------
_F = np.float32
EXP_LO = _F(-87.33)
_LOG2E = _F(1.4426950408889634)
_HALF = _F(0.5)
_LN2_HI = _F(0.693145751953125)        # 11 significant bits
_LN2_LO = _F(1.4286068203094173e-06)   # ln 2 - _LN2_HI
_C2 = _F(1.0 / 2)
_C3 = _F(1.0 / 6)
_C4 = _F(1.0 / 24)
_C5 = _F(1.0 / 120)
_C6 = _F(1.0 / 720)
_C7 = _F(1.0 / 5040)
_ONE = _F(1.0)
_ZERO = _F(0.0)
_BIAS = _F(127.0)
_TWO23 = _F(8388608.0)                 # 2^23: (n + 127) * 2^23 are the bits of 2^n


@njit(**_KW)
def exp_nonpos_f32(v):
    """exp(v) for a float32 v <= 0 (-inf gives 0); vectorisable when inlined in a loop."""
    u = v if v > EXP_LO else EXP_LO
    nf = np.floor(u * _LOG2E + _HALF)
    r = (u - nf * _LN2_HI) - nf * _LN2_LO
    p = _C7
    p = p * r + _C6
    p = p * r + _C5
    p = p * r + _C4
    p = p * r + _C3
    p = p * r + _C2
    p = p * r + _ONE
    p = p * r + _ONE
    scale = np.int32((nf + _BIAS) * _TWO23).view(np.float32)
    return p * scale if v >= EXP_LO else _ZERO


def fexp(v):
    """exp(v) for v <= 0 in v's precision: the polynomial for float32, libm for float64.
    (Plain-Python version, used with NUMBA_DISABLE_JIT=1; compiled code uses the overload.)"""
    if isinstance(v, np.float32):
        return exp_nonpos_f32(v)
    # a NumPy float64, not a Python float: under NumPy 2's promotion rules np.float32 op (Python
    # float) is float32, which would silently round the float64 path (e.g. _ONE / sum of exps)
    return np.float64(math.exp(v))


@overload(fexp, inline="always")
def _fexp_ov(v):
    if v == types.float32:
        return lambda v: exp_nonpos_f32(v)
    return lambda v: math.exp(v)


@njit(**_KW)
def _fmax(a, b):
    return a if a > b else b


def planes_per_chunk(NC):
    """Planes per prange iteration: about four iterations per thread (for balance), each
    allocating its scratch once."""
    return max(1, NC // (4 * numba.get_num_threads()))


# ---------------------------------------------------------------------------------------------
# The common case: 2x2 windows, stride 2, no padding (rho offsets ra rb / rc rd, row-major).
#
# A plane is done in blocks of whole output rows, about TILE windows each (the whole plane up to
# 32x32 outputs): the block's windows are de-interleaved into contiguous scratch (the first cell
# a, the deviations of the other three from it, lam and gy per window), one loop over the block
# does the arithmetic, vectorised exps included, and the results go back to their places. One
# long loop per block instead of one per output row: rows of a CIFAR net are 16 windows wide or
# less, too short for the vector loop, so a per-row version is dominated by loop set-up (and
# needed a third loop for narrower planes). Timings: benchmarks/results/kernel-history.md.
# ---------------------------------------------------------------------------------------------
TILE = 1024
LANES = 16                             # partial sums of _sum_lanes: 16 float32 = one AVX-512 register


def rows_per_block(Ho: int, Wo: int) -> int:
    """Output rows per block on the 2x2 path: about TILE windows, at least one row."""
    return max(1, min(Ho, TILE // max(1, Wo)))


@njit(inline="always", **_KW)
def _gather_2x2(x, lam4, n, c, nl, cl, hl, wl, h0, h1, xa, ub, uc, ud, lv):
    """Windows of output rows [h0, h1) of plane (n, c) into xa (first cell) and ub uc ud (the
    other three minus it: exact for close values), lam per window into lv; returns their count."""
    Wo = (x.shape[3]) // 2
    i = 0
    for ho in range(h0, h1):
        for wo in range(Wo):
            a = x[n, c, 2 * ho, 2 * wo]
            xa[i] = a
            ub[i] = x[n, c, 2 * ho, 2 * wo + 1] - a
            uc[i] = x[n, c, 2 * ho + 1, 2 * wo] - a
            ud[i] = x[n, c, 2 * ho + 1, 2 * wo + 1] - a
            i += 1
    if hl or wl:
        i = 0
        for ho in range(h0, h1):
            for wo in range(Wo):
                lv[i] = lam4[nl, cl, ho * hl, wo * wl]
                i += 1
    else:
        lam = lam4[nl, cl, 0, 0]
        for j in range(i):
            lv[j] = lam
    return i


@njit(inline="always", **_KW)
def _sum_lanes(a, L, lanes):
    """sum of a[:L] with len(lanes) independent partial sums (a vector register's worth, so the
    loop vectorises without fastmath; the order is fixed, so the result is deterministic)."""
    V = lanes.shape[0]
    lanes[:] = 0
    i = 0
    while i + V <= L:
        for j in range(V):
            lanes[j] += a[i + j]
        i += V
    s = lanes[0]
    for j in range(1, V):
        s += lanes[j]
    while i < L:
        s += a[i]
        i += 1
    return s


@njit(inline="always", **_KW)
def _fwd_plane_2x2(x, lam4, rho3, n, c, rb, yf, xa, ub, uc, ud, lv):
    C = x.shape[1]
    Ho, Wo = x.shape[2] // 2, x.shape[3] // 2
    nl, cl = param_plane(lam4, n, c)
    hl, wl = param_steps(lam4)
    nr, cr = param_plane(rho3, n, c)
    ra, rb_, rc, rd = rho3[nr, cr, 0], rho3[nr, cr, 1], rho3[nr, cr, 2], rho3[nr, cr, 3]
    for h0 in range(0, Ho, rb):
        h1 = min(Ho, h0 + rb)
        L = _gather_2x2(x, lam4, n, c, nl, cl, hl, wl, h0, h1, xa, ub, uc, ud, lv)
        base = ((n * C + c) * Ho + h0) * Wo          # y is C-contiguous: the block's outputs in a run
        for i in range(L):
            a, lam = xa[i], lv[i]
            b, d, e = ub[i], uc[i], ud[i]
            za, zb, zc, zd = ra, lam * b + rb_, lam * d + rc, lam * e + rd
            m = _fmax(_fmax(za, zb), _fmax(zc, zd))     # each window's own max: no overflow
            ea, eb, ec, ed = fexp(za - m), fexp(zb - m), fexp(zc - m), fexp(zd - m)
            yf[base + i] = a + (eb * b + ec * d + ed * e) / (ea + eb + ec + ed)


@njit(inline="always", **_KW)
def _bwd_plane_2x2(x, lam4, rho3, gy, n, c, rb, want_grho, gx, glam, grho,
                   xa, ub, uc, ud, lv, gv, gl, pa_, pb_, pc_, pd_, lanes):
    H, W = x.shape[2], x.shape[3]
    Ho, Wo = H // 2, W // 2
    nl, cl = param_plane(lam4, n, c)
    hl, wl = param_steps(lam4)
    nr, cr = param_plane(rho3, n, c)
    ra, rb_, rc, rd = rho3[nr, cr, 0], rho3[nr, cr, 1], rho3[nr, cr, 2], rho3[nr, cr, 3]
    lanes[0] = 0
    s_l = lanes[0]                        # plane sums (in x's dtype): glam, grho
    s_a, s_b, s_c, s_d = s_l, s_l, s_l, s_l
    for h0 in range(0, Ho, rb):
        h1 = min(Ho, h0 + rb)
        L = _gather_2x2(x, lam4, n, c, nl, cl, hl, wl, h0, h1, xa, ub, uc, ud, lv)
        i = 0
        for ho in range(h0, h1):
            for wo in range(Wo):
                gv[i] = gy[n, c, ho, wo]
                i += 1
        for i in range(L):
            lam, b, d, e = lv[i], ub[i], uc[i], ud[i]
            za, zb, zc, zd = ra, lam * b + rb_, lam * d + rc, lam * e + rd
            m = _fmax(_fmax(za, zb), _fmax(zc, zd))
            ea, eb, ec, ed = fexp(za - m), fexp(zb - m), fexp(zc - m), fexp(zd - m)
            inv = _ONE / (ea + eb + ec + ed)
            t = (eb * b + ec * d + ed * e) * inv                     # Y - a
            g = gv[i] * inv
            ea, eb, ec, ed = ea * g, eb * g, ec * g, ed * g           # gy * W_q
            da, db, dc, dd = -t, b - t, d - t, e - t                   # X_q - Y (two-pass, shifted)
            pa, pb, pc, pd = ea * da, eb * db, ec * dc, ed * dd        # gy W_q (X_q - Y): Eq. 10
            gl[i] = pa * da + pb * db + pc * dc + pd * dd              # Eq. 9
            pa_[i] = pa
            pb_[i] = pb
            pc_[i] = pc
            pd_[i] = pd
            xa[i] = ea + lam * pa                                      # Eq. 8, into spent scratch
            ub[i] = eb + lam * pb
            uc[i] = ec + lam * pc
            ud[i] = ed + lam * pd
        i = 0
        for ho in range(h0, h1):
            for wo in range(Wo):
                gx[n, c, 2 * ho, 2 * wo] = xa[i]
                gx[n, c, 2 * ho, 2 * wo + 1] = ub[i]
                gx[n, c, 2 * ho + 1, 2 * wo] = uc[i]
                gx[n, c, 2 * ho + 1, 2 * wo + 1] = ud[i]
                i += 1
        if hl or wl:                     # lam per position: its gradient per position
            i = 0
            for ho in range(h0, h1):
                for wo in range(Wo):
                    glam[n, c, ho, wo] = gl[i]
                    i += 1
        else:
            s_l += _sum_lanes(gl, L, lanes)
        if want_grho:
            s_a += _sum_lanes(pa_, L, lanes)
            s_b += _sum_lanes(pb_, L, lanes)
            s_c += _sum_lanes(pc_, L, lanes)
            s_d += _sum_lanes(pd_, L, lanes)
    # a last odd row / column is in no window
    for h in range(2 * Ho, H):
        for w in range(W):
            gx[n, c, h, w] = 0
    for h in range(2 * Ho):
        for w in range(2 * Wo, W):
            gx[n, c, h, w] = 0
    if not (hl or wl):
        glam[n, c, 0, 0] = s_l
    if want_grho:
        grho[n, c, 0] = s_a
        grho[n, c, 1] = s_b
        grho[n, c, 2] = s_c
        grho[n, c, 3] = s_d


# ---------------------------------------------------------------------------------------------
# Any geometry: the plane's windows as (K, P) scratch.
# ---------------------------------------------------------------------------------------------
@njit(**_KW)
def _softmax_plane_generic(x, lam4, rho3, n, c, kh, kw, sh, sw, ph, pw, Ho, Wo, x0, xs, e, lamp, s, y):
    """For plane (n, c): x0 (P,) each window's top-left real cell, xs (K, P) the window values
    shifted by it, X_q - x0 (0 at padded cells), lamp (P,) lam per window, e (K, P) the
    unnormalised weights exp(z - max z) with z = lam (X_q - x0) + rho_q (0 at padded cells), s (P,)
    their sums and y (P,) the shifted outputs Y - x0 = sum_q e (X_q - x0) / s.

    The window template's scratch (:func:`~minignn.layers._window.gather_plane`) with the
    max-entropy logits added to its log-mask: shifting by a cell of the window changes no weight
    (lam x0 cancels in the softmax), and for windows of close values (like [1000, 1000.03])
    X_q - x0 is exact, so z, Y - x0 and the deviations X_q - Y of the backward keep full relative
    precision."""
    gather_plane(x, n, c, kh, kw, sh, sw, ph, pw, Ho, Wo, x0, xs, e)
    nl, cl = param_plane(lam4, n, c)
    hl, wl = param_steps(lam4)
    for ho in range(Ho):
        for wo in range(Wo):
            lamp[ho * Wo + wo] = lam4[nl, cl, ho * hl, wo * wl]
    nr, cr = param_plane(rho3, n, c)
    for q in range(kh * kw):              # the logits: z = lam (X_q - x0) + rho_q, -inf at padding
        rq = rho3[nr, cr, q]
        for p in range(Ho * Wo):
            e[q, p] += lamp[p] * xs[q, p] + rq
    _softmax_mean(e, xs, s, y)


@njit(**_KW)
def _softmax_mean(e, xs, s, y):
    """Logits e (K, P) -> e = exp(e - max_q e) in place, s = sum_q e, y = sum_q e xs / s: the
    softmax-weighted mean of every window (every window holds a real cell: padding < kernel)."""
    K, P = e.shape
    for p in range(P):
        s[p] = e[0, p]
    for q in range(1, K):
        for p in range(P):
            s[p] = _fmax(s[p], e[q, p])
    for q in range(K):
        for p in range(P):
            e[q, p] = fexp(e[q, p] - s[p])
    for p in range(P):
        s[p] = e[0, p]
        y[p] = e[0, p] * xs[0, p]
    for q in range(1, K):
        for p in range(P):
            s[p] += e[q, p]
            y[p] += e[q, p] * xs[q, p]
    for p in range(P):
        y[p] = y[p] / s[p]


@njit(**_KW)
def _fwd_plane_generic(x, lam4, rho3, n, c, kh, kw, sh, sw, ph, pw, y, x0, xs, e, lamp, s, yp):
    Ho, Wo = y.shape[2], y.shape[3]
    _softmax_plane_generic(x, lam4, rho3, n, c, kh, kw, sh, sw, ph, pw, Ho, Wo, x0, xs, e, lamp, s, yp)
    for ho in range(Ho):
        for wo in range(Wo):
            y[n, c, ho, wo] = x0[ho * Wo + wo] + yp[ho * Wo + wo]


@njit(**_KW)
def _bwd_plane_generic(x, lam4, rho3, gy, n, c, kh, kw, sh, sw, ph, pw, want_grho, gx, glam, grho,
                       x0, xs, e, lamp, s, yp, gl):
    H, W = x.shape[2], x.shape[3]
    Ho, Wo = gy.shape[2], gy.shape[3]
    K = kh * kw
    P = Ho * Wo
    _softmax_plane_generic(x, lam4, rho3, n, c, kh, kw, sh, sw, ph, pw, Ho, Wo, x0, xs, e, lamp, s, yp)
    for ho in range(Ho):
        for wo in range(Wo):
            s[ho * Wo + wo] = gy[n, c, ho, wo] / s[ho * Wo + wo]     # gy / sum e: e * s = gy W
    gl[:] = 0
    for q in range(K):
        for p in range(P):
            a = e[q, p] * s[p]           # gy * W_q
            dv = xs[q, p] - yp[p]        # X_q - Y = (X_q - x0) - (Y - x0)  (two-pass, shifted)
            ad = a * dv
            gl[p] += ad * dv             # gy * W_q (X_q - Y)^2            (Eq. 9)
            e[q, p] = a + ad * lamp[p]   # gy * W_q (1 + lam (X_q - Y))    (Eq. 8)
            xs[q, p] = ad                # gy * W_q (X_q - Y)              (Eq. 10)
    if want_grho:
        for q in range(K):
            acc = xs[q, 0]
            for p in range(1, P):
                acc += xs[q, p]
            grho[n, c, q] = acc
    # glam: per position, or summed over the plane
    if glam.shape[2] > 1 or glam.shape[3] > 1:
        for ho in range(Ho):
            for wo in range(Wo):
                glam[n, c, ho, wo] = gl[ho * Wo + wo]
    else:
        acc = gl[0]
        for p in range(1, P):
            acc += gl[p]
        glam[n, c, 0, 0] = acc
    # gx: zero the plane, then scatter-add every window's share (overlaps accumulate)
    for h in range(H):
        for w in range(W):
            gx[n, c, h, w] = 0
    for q in range(K):
        i = q // kw
        j = q - i * kw
        lo, hi = valid_range(j, sw, pw, W, Wo)
        for ho in range(Ho):
            r = ho * sh + i - ph
            if r < 0 or r >= H:
                continue
            base = ho * Wo
            for wo in range(lo, hi):
                gx[n, c, r, wo * sw + j - pw] += e[q, base + wo]


# ---------------------------------------------------------------------------------------------
# The kernels.
# ---------------------------------------------------------------------------------------------
@pjit(**_KW)
def maxent_pool2d_fwd_cpu(x, lam4, rho3, kh, kw, sh, sw, ph, pw, per, rb, y):
    """Forward: y (N, C, Ho, Wo) <- max-entropy pooling of x (N, C, H, W); ``per`` planes per
    parallel iteration (:func:`planes_per_chunk`), ``rb`` output rows per block on the 2x2 path
    (:func:`rows_per_block`)."""
    N, C = x.shape[0], x.shape[1]
    Ho, Wo = y.shape[2], y.shape[3]
    K = kh * kw
    P = Ho * Wo
    fast = is_2x2(kh, kw, sh, sw, ph, pw)
    nchunks = (N * C + per - 1) // per
    for chunk in prange(nchunks):
        lo, hi = chunk * per, min((chunk + 1) * per, N * C)   # this iteration's planes
        if fast:
            L = rb * Wo
            xa = np.empty(L, dtype=x.dtype)
            ub = np.empty(L, dtype=x.dtype)
            uc = np.empty(L, dtype=x.dtype)
            ud = np.empty(L, dtype=x.dtype)
            lv = np.empty(L, dtype=x.dtype)
            yf = y.reshape(-1)
            for nc in range(lo, hi):
                _fwd_plane_2x2(x, lam4, rho3, nc // C, nc % C, rb, yf, xa, ub, uc, ud, lv)
        else:
            x0 = np.empty(P, dtype=x.dtype)
            xs = np.empty((K, P), dtype=x.dtype)
            e = np.empty((K, P), dtype=x.dtype)
            lamp = np.empty(P, dtype=x.dtype)
            s = np.empty(P, dtype=x.dtype)
            yp = np.empty(P, dtype=x.dtype)
            for nc in range(lo, hi):
                _fwd_plane_generic(x, lam4, rho3, nc // C, nc % C, kh, kw, sh, sw, ph, pw, y, x0, xs, e, lamp, s, yp)


@pjit(**_KW)
def maxent_pool2d_bwd_cpu(x, lam4, rho3, gy, kh, kw, sh, sw, ph, pw, per, rb, want_grho, gx, glam, grho):
    """Backward (Eq. 8-10), recomputing the softmax from x.

    gx (N, C, H, W) <- sum over the windows holding each cell of gy W_q (1 + lam (X_q - Y))
    (0 for cells in no window); glam (N, C, Hl, Wl) <- gy sum_q W_q (X_q - Y)^2, summed over the
    plane's positions when (Hl, Wl) = (1, 1), per position when (Hl, Wl) = (Ho, Wo) (as lam4);
    grho (N, C, K) <- sum over positions of gy W_q (X_q - Y) (written only when ``want_grho``).
    """
    N, C = x.shape[0], x.shape[1]
    Ho, Wo = gy.shape[2], gy.shape[3]
    K = kh * kw
    P = Ho * Wo
    fast = is_2x2(kh, kw, sh, sw, ph, pw)
    nchunks = (N * C + per - 1) // per
    for chunk in prange(nchunks):
        lo, hi = chunk * per, min((chunk + 1) * per, N * C)   # this iteration's planes
        if fast:
            L = rb * Wo
            sc = np.empty((11, L), dtype=x.dtype)
            lanes = np.empty(LANES, dtype=x.dtype)
            for nc in range(lo, hi):
                _bwd_plane_2x2(x, lam4, rho3, gy, nc // C, nc % C, rb, want_grho, gx, glam, grho,
                               sc[0], sc[1], sc[2], sc[3], sc[4], sc[5], sc[6], sc[7], sc[8], sc[9],
                               sc[10], lanes)
        else:
            x0 = np.empty(P, dtype=x.dtype)
            xs = np.empty((K, P), dtype=x.dtype)
            e = np.empty((K, P), dtype=x.dtype)
            lamp = np.empty(P, dtype=x.dtype)
            s = np.empty(P, dtype=x.dtype)
            yp = np.empty(P, dtype=x.dtype)
            gl = np.empty(P, dtype=x.dtype)
            for nc in range(lo, hi):
                _bwd_plane_generic(x, lam4, rho3, gy, nc // C, nc % C, kh, kw, sh, sw, ph, pw, want_grho,
                                   gx, glam, grho, x0, xs, e, lamp, s, yp, gl)
