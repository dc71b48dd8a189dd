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

Shifted data: both loops first find each window's *shift cell* X_r, the cell with the largest
logit lam X + rho (the first of ties; a NaN logit never wins), then exponentiate
z = lam (X_q - X_r) + rho_q (the constant lam X_r cancels in the softmax) and form
Y = X_r + sum_q W_q (X_q - X_r), the weights normalised before the sum (|Y - X_r| <= max |X_q - X_r|:
no overflow). The shift cell carries weight >= 1/K of the largest, so an outlier elsewhere in the
window (-1e30 with lam = 1, whose weight is 0) changes nothing, and for windows of close values
(like [1000, 1000.03]) X_q - X_r is exact in float32, so the weights, Y - X_r and the backward's
deviations X_q - Y = (X_q - X_r) - (Y - X_r) keep full relative precision (with lam X_q directly,
dlam for such windows was off by up to 0.75% relative; shifted, below 3e-7). Shifting by a fixed
cell (the top-left one, as before) lost everything to an outlier there: [-1e30, -1e30, 1, 2] gave 0.
The bound tests/test_maxent_edges.py checks to a derived tolerance: finite cells with
|x| <= max(dtype) / 2, so every difference of two cells of a window is finite.

Non-finite cells: the 2x2 loops run plain arithmetic over a block (vectorised), then redo the
few windows whose result is not finite with the careful helpers (``careful=True``: selects, no
branches); the generic path is careful throughout. A cell whose logit is +inf
(+inf with lam > 0, -inf with lam < 0) takes the window's weight (shared with equal cells), as max
(min) pooling does: y is that infinity, its gradient gy, dlam 0; a cell whose logit is -inf gets
weight 0 and contributes nothing, not 0 * inf (``_kept``); lam = 0 is average pooling whatever the
values (lam X = 0 even for infinite X: y = inf for a window holding +inf, gx = gy / |window|); a
NaN cell makes its windows NaN (``exp_nonpos_f32`` keeps NaN).

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
_NEG_INF = _F(-np.inf)
_BIAS = _F(127.0)
_TWO23 = _F(8388608.0)                 # 2^23: (n + 127) * 2^23 are the bits of 2^n


@njit(**_KW)
def exp_nonpos_f32(v):
    """exp(v) for a float32 v <= 0 (-inf gives 0, NaN gives NaN); vectorisable when inlined."""
    u = v if v > EXP_LO else EXP_LO      # NaN -> EXP_LO here, so the integer conversion is defined
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
    res = p * scale if v >= EXP_LO else _ZERO
    return res if v == v else v          # NaN stays NaN


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
# 32x32 outputs): the block's windows are de-interleaved into contiguous scratch (the four cells,
# lam and gy per window), one loop over the block (shift cell, deviations and weights per window)
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
def _gather_2x2(x, lam4, n, c, nl, cl, hl, wl, h0, h1, xa, xb, xc, xd, lv):
    """Windows of output rows [h0, h1) of plane (n, c) into xa xb xc xd (the four cells,
    row-major), lam per window into lv; returns their count."""
    Wo = (x.shape[3]) // 2
    i = 0
    for ho in range(h0, h1):
        for wo in range(Wo):
            xa[i] = x[n, c, 2 * ho, 2 * wo]
            xb[i] = x[n, c, 2 * ho, 2 * wo + 1]
            xc[i] = x[n, c, 2 * ho + 1, 2 * wo]
            xd[i] = x[n, c, 2 * ho + 1, 2 * wo + 1]
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


# ---------------------------------------------------------------------------------------------
# One window's arithmetic, shared by both paths (scalar helpers, inlined into the vector loops;
# the careful branches are selects).
# ---------------------------------------------------------------------------------------------
@njit(inline="always", **_KW)
def _pick(best, xr, v, lam, r):
    """One step of the shift-cell search: (best, xr) <- (lam v + r, v) when that logit is larger
    (strictly: the first of ties is kept, and a NaN logit never wins)."""
    k = lam * v + r
    return (k, v) if k > best else (best, xr)


# The selects below handle non-finite cells (``careful=True``); with ``careful=False`` each is the
# plain arithmetic, which is right (the same numbers, up to the rounding of one sum) on every
# window whose cells, differences and sums are finite, and otherwise gives NaN or inf, so the 2x2
# loops run the plain version and redo just the windows whose result is not finite carefully.
# ``careful`` is a constant at every call site, so the compiler keeps one branch.
@njit(inline="always", **_KW)
def _dev(v, xr, careful):
    """v - xr, the deviation from the shift cell: 0 for a cell equal to it (also inf == inf)."""
    if careful:
        return v - xr if v != xr else _ZERO
    return v - xr


@njit(inline="always", **_KW)
def _logit(lam, d, r, careful):
    """lam d + rho, with lam d = 0 when lam = 0 (also for an infinite d: average pooling)."""
    if careful:
        return (lam * d if lam != _ZERO else _ZERO) + r
    return lam * d + r


@njit(inline="always", **_KW)
def _weight(z, m, careful):
    """exp(z - m) for the window's max logit m; 1 at the max itself (also when m = +inf)."""
    if careful:
        return _ONE if z == m else fexp(z - m)
    return fexp(z - m)


@njit(inline="always", **_KW)
def _kept(e, v, careful):
    """v for a cell of weight e > 0, 0 for a cell of weight 0 (whose v may be infinite or NaN)."""
    if careful:
        return v if e != _ZERO else _ZERO
    return v


@njit(inline="always", **_KW)
def _window_2x2(a, b, c, d, lam, ra, rb, rc, rd, careful):
    """One 2x2 window: (xr, da, db, dc, dd, ea, eb, ec, ed, inv, t) with xr the shift cell,
    d_q = X_q - xr, e_q the unnormalised weights, inv the reciprocal of their sum and
    t = Y - xr = sum_q (e_q inv) d_q (normalised before the sum: |t| <= max |d_q|, no overflow)."""
    if careful:
        best, xr = _pick(_NEG_INF, a, a, lam, ra)
        best, xr = _pick(best, xr, b, lam, rb)
        best, xr = _pick(best, xr, c, lam, rc)
        best, xr = _pick(best, xr, d, lam, rd)
    else:                            # the same cell for finite logits, in fewer operations
        ka, kb, kc, kd = lam * a + ra, lam * b + rb, lam * c + rc, lam * d + rd
        k = _fmax(_fmax(ka, kb), _fmax(kc, kd))
        xr = c if kc == k else d
        xr = b if kb == k else xr
        xr = a if ka == k else xr
    da, db, dc, dd = _dev(a, xr, careful), _dev(b, xr, careful), _dev(c, xr, careful), _dev(d, xr, careful)
    za, zb = _logit(lam, da, ra, careful), _logit(lam, db, rb, careful)
    zc, zd = _logit(lam, dc, rc, careful), _logit(lam, dd, rd, careful)
    m = _fmax(_fmax(za, zb), _fmax(zc, zd))
    ea, eb, ec, ed = _weight(za, m, careful), _weight(zb, m, careful), _weight(zc, m, careful), _weight(zd, m, careful)
    inv = _ONE / (ea + eb + ec + ed)
    if careful:                      # normalised before the sum: no overflow for |x| <= max / 2
        t = ((ea * _kept(ea, da, True) * inv + eb * _kept(eb, db, True) * inv)
             + (ec * _kept(ec, dc, True) * inv + ed * _kept(ed, dd, True) * inv))
    else:                            # one product (a sum that overflows is redone carefully)
        t = ((ea * da + eb * db) + (ec * dc + ed * dd)) * inv
    return xr, da, db, dc, dd, ea, eb, ec, ed, inv, t


@njit(inline="always", **_KW)
def _fwd_plane_2x2(x, lam4, rho3, n, c, rb, yf, xa, xb, xc, xd, lv):
    C = x.shape[1]
    Ho, Wo = x.shape[2] // 2, x.shape[3] // 2
    nl, cl = param_plane(lam4, n, c)
    hl, wl = param_steps(lam4)
    nr, cr = param_plane(rho3, n, c)
    ra, rb_, rc, rd = rho3[nr, cr, 0], rho3[nr, cr, 1], rho3[nr, cr, 2], rho3[nr, cr, 3]
    for h0 in range(0, Ho, rb):
        h1 = min(Ho, h0 + rb)
        L = _gather_2x2(x, lam4, n, c, nl, cl, hl, wl, h0, h1, xa, xb, xc, xd, lv)
        base = ((n * C + c) * Ho + h0) * Wo          # y is C-contiguous: the block's outputs in a run
        for i in range(L):               # plain arithmetic, vectorised
            xr, da, db, dc, dd, ea, eb, ec, ed, inv, t = _window_2x2(xa[i], xb[i], xc[i], xd[i], lv[i],
                                                                     ra, rb_, rc, rd, False)
            yf[base + i] = xr + t
        for i in range(L):               # a non-finite result: that window again, carefully
            v = yf[base + i]
            if v - v != _ZERO:
                xr, da, db, dc, dd, ea, eb, ec, ed, inv, t = _window_2x2(xa[i], xb[i], xc[i], xd[i], lv[i],
                                                                         ra, rb_, rc, rd, True)
                yf[base + i] = xr + t


@njit(inline="always", **_KW)
def _bwd_window_2x2(i, xa, xb, xc, xd, lv, gv, gl, pa_, pb_, pc_, pd_, tv, ra, rb, rc, rd, careful):
    """Window i of a block: its cells' gradients into xa..xd (in place of the cells), gy W_q (X_q - Y)
    into pa_..pd_ (for grho), the window's dlam into gl and t = Y - X_r into tv."""
    lam = lv[i]
    xr, da, db, dc, dd, ea, eb, ec, ed, inv, t = _window_2x2(xa[i], xb[i], xc[i], xd[i], lam, ra, rb, rc, rd, careful)
    g = gv[i] * inv
    wa, wb, wc, wd = ea * g, eb * g, ec * g, ed * g           # gy * W_q
    da, db, dc, dd = da - t, db - t, dc - t, dd - t           # X_q - Y (two-pass, shifted)
    pa, pb = _kept(ea, wa * da, careful), _kept(eb, wb * db, careful)      # gy W_q (X_q - Y): Eq. 10
    pc, pd = _kept(ec, wc * dc, careful), _kept(ed, wd * dd, careful)
    gl[i] = ((_kept(ea, pa * da, careful) + _kept(eb, pb * db, careful))   # their sum times X_q - Y:
             + (_kept(ec, pc * dc, careful) + _kept(ed, pd * dd, careful)))  # Eq. 9
    pa_[i] = pa
    pb_[i] = pb
    pc_[i] = pc
    pd_[i] = pd
    tv[i] = t
    xa[i] = wa + _logit(lam, pa, _ZERO, careful)             # Eq. 8, into spent scratch
    xb[i] = wb + _logit(lam, pb, _ZERO, careful)
    xc[i] = wc + _logit(lam, pc, _ZERO, careful)
    xd[i] = wd + _logit(lam, pd, _ZERO, careful)


@njit(inline="always", **_KW)
def _bwd_plane_2x2(x, lam4, rho3, gy, n, c, rb, want_grho, gx, glam, grho,
                   xa, xb, xc, xd, lv, gv, gl, pa_, pb_, pc_, pd_, tv, lanes):
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
        L = _gather_2x2(x, lam4, n, c, nl, cl, hl, wl, h0, h1, xa, xb, xc, xd, lv)
        i = 0
        for ho in range(h0, h1):
            for wo in range(Wo):
                gv[i] = gy[n, c, ho, wo]
                i += 1
        for i in range(L):               # plain arithmetic, vectorised
            _bwd_window_2x2(i, xa, xb, xc, xd, lv, gv, gl, pa_, pb_, pc_, pd_, tv, ra, rb_, rc, rd, False)
        for i in range(L):               # a window with a non-finite t: its cells again, carefully
            if tv[i] - tv[i] != _ZERO:
                ho, wo = h0 + i // Wo, i % Wo
                xa[i], xb[i] = x[n, c, 2 * ho, 2 * wo], x[n, c, 2 * ho, 2 * wo + 1]
                xc[i], xd[i] = x[n, c, 2 * ho + 1, 2 * wo], x[n, c, 2 * ho + 1, 2 * wo + 1]
                _bwd_window_2x2(i, xa, xb, xc, xd, lv, gv, gl, pa_, pb_, pc_, pd_, tv, ra, rb_, rc, rd, True)
        i = 0
        for ho in range(h0, h1):
            for wo in range(Wo):
                gx[n, c, 2 * ho, 2 * wo] = xa[i]
                gx[n, c, 2 * ho, 2 * wo + 1] = xb[i]
                gx[n, c, 2 * ho + 1, 2 * wo] = xc[i]
                gx[n, c, 2 * ho + 1, 2 * wo + 1] = xd[i]
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
    """For plane (n, c): x0 (P,) each window's shift cell X_r, xs (K, P) the deviations
    X_q - X_r (0 at padded cells), lamp (P,) lam per window, e (K, P) the unnormalised weights
    exp(z - max z) with z = lam (X_q - X_r) + rho_q (0 at padded cells), s (P,) their sums and y (P,)
    the shifted outputs Y - X_r = sum_q e (X_q - X_r) / s.

    The window template's scratch (:func:`~minignn.layers._window.gather_plane`: the values and a
    log-mask, -inf at padding) with the max-entropy logits added to the mask. The shift cell is
    the window's largest logit lam X + rho (so it carries weight; see the module docstring)."""
    gather_plane(x, n, c, kh, kw, sh, sw, ph, pw, Ho, Wo, x0, xs, e)
    nl, cl = param_plane(lam4, n, c)
    hl, wl = param_steps(lam4)
    P = Ho * Wo
    for ho in range(Ho):
        for wo in range(Wo):
            lamp[ho * Wo + wo] = lam4[nl, cl, ho * hl, wo * wl]
    nr, cr = param_plane(rho3, n, c)
    for p in range(P):                    # the shift cell: x0 starts at the first real cell
        s[p] = _NEG_INF
    for q in range(kh * kw):
        rq = rho3[nr, cr, q]
        for p in range(P):                # padded cells: logit -inf (the mask), never picked
            s[p], x0[p] = _pick(s[p], x0[p], xs[q, p], lamp[p], rq + e[q, p])
    for q in range(kh * kw):              # the logits: z = lam (X_q - X_r) + rho_q, -inf at padding
        rq = rho3[nr, cr, q]
        for p in range(P):
            d = _dev(xs[q, p], x0[p], True) if e[q, p] == _ZERO else _ZERO
            xs[q, p] = d
            e[q, p] += _logit(lamp[p], d, rq, True)
    _softmax_mean(e, xs, s, y)


@njit(**_KW)
def _softmax_mean(e, xs, s, y):
    """Logits e (K, P) -> e = exp(e - max_q e) in place, s = sum_q e, y = sum_q (e / s) xs: the
    softmax-weighted mean of every window (every window holds a real cell: padding < kernel)."""
    K, P = e.shape
    for p in range(P):
        s[p] = e[0, p]
    for q in range(1, K):
        for p in range(P):
            s[p] = _fmax(s[p], e[q, p])
    for q in range(K):
        for p in range(P):
            e[q, p] = _weight(e[q, p], s[p], True)
    for p in range(P):
        s[p] = e[0, p]
    for q in range(1, K):
        for p in range(P):
            s[p] += e[q, p]
    for p in range(P):                    # normalised before the sum: |y| <= max |xs|, no overflow
        y[p] = e[0, p] * _kept(e[0, p], xs[0, p], True) / s[p]
    for q in range(1, K):
        for p in range(P):
            y[p] += e[q, p] * _kept(e[q, p], xs[q, p], True) / s[p]


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
            w = e[q, p]
            a = w * s[p]                 # gy * W_q
            dv = xs[q, p] - yp[p]        # X_q - Y = (X_q - X_r) - (Y - X_r)  (two-pass, shifted)
            ad = _kept(w, a * dv, True)
            gl[p] += _kept(w, ad * dv, True)   # gy * W_q (X_q - Y)^2            (Eq. 9)
            e[q, p] = a + _logit(lamp[p], ad, _ZERO, True)   # gy * W_q (1 + lam (X_q - Y))  (Eq. 8)
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
            sc = np.empty((12, L), dtype=x.dtype)
            lanes = np.empty(LANES, dtype=x.dtype)
            for nc in range(lo, hi):
                _bwd_plane_2x2(x, lam4, rho3, gy, nc // C, nc % C, rb, want_grho, gx, glam, grho,
                               sc[0], sc[1], sc[2], sc[3], sc[4], sc[5], sc[6], sc[7], sc[8], sc[9],
                               sc[10], sc[11], lanes)
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
