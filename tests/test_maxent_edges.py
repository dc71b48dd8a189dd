"""Max-entropy pooling at the edges of floating point: outliers anywhere in a window, infinite and
NaN cells, lam at the limit of x's dtype, and the kernels' exponential with NaN.

The reference here is computed in extended precision (``np.longdouble``: 64-bit significands on
x86) straight from the definition, W = softmax(lam X + rho) and Y = sum W X, with no shift trick:
its own rounding is far below the float64 kernels', and for float32 and float64 inputs alike it
does not overflow (lam X up to 1e308 * 1e3 fits its range).

The bound under test: every cell finite with |x| <= max(dtype) / 2 (so the difference of two cells
of a window is finite), lam and rho finite in x's dtype. Under it, y, gx, glam and grho agree with
the reference to a tolerance derived per window below from the kernels' arithmetic (a bound, not a
fit), wherever the reference value itself is representable (a glam of 1e60 is inf in float32).
"""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from helpers import HypothesisDraw

from minignn import cases
from minignn.layers import maxent_pool2d_backward, maxent_pool2d_forward
from minignn.layers.maxent import cpu as mcpu
from minignn.layers.maxent.reference import _windows

LD = np.longdouble
GEOMS = {"2x2": ((2, 2), (2, 2), (0, 0)), "3x3 s2 p1": ((3, 3), (2, 2), (1, 1)), "3x3 s1": ((3, 3), (1, 1), (0, 0))}
LAMS = [0.0, 1e-30, -1e-30, 1e-3, -1e-3, 1.0, -1.0, 5.0, -5.0, 50.0, -50.0]


def unit(dtype):
    """The unit roundoff u: every float operation's relative error is at most u."""
    return float(np.finfo(dtype).eps) / 2


def exp_error(dtype):
    """Relative error of the kernels' exponential, in units of u: the float32 polynomial is good to
    2e-7 (test_maxent.py::test_exp_nonpos_f32_accuracy), libm's float64 exp to about 1 ulp."""
    return 2e-7 / unit(np.float32) if dtype == np.float32 else 2.0


def scatter(vals, shape, k, s, p):
    """Sum per-window, per-offset values (N, C, Ho, Wo, K) onto the input cells they belong to."""
    (kh, kw), (sh, sw), (ph, pw) = k, s, p
    N, C, H, W = shape
    Ho, Wo = vals.shape[2:4]
    out = np.zeros((N, C, H + 2 * ph, W + 2 * pw), vals.dtype)
    for i in range(kh):
        for j in range(kw):
            out[:, :, i:i + sh * (Ho - 1) + 1:sh, j:j + sw * (Wo - 1) + 1:sw] += vals[..., i * kw + j]
    return out[:, :, ph:ph + H, pw:pw + W]


def reference_and_bounds(x, lam4, rho3, gy, k, s, p):
    """The extended-precision reference (y, gx, glam per window, grho per window and offset) and the
    error bounds of the kernels' results, derived from their arithmetic:

    The kernel picks a shift cell r (the largest computed logit lam X + rho; any cell whose exact
    logit is within that logit's rounding of the maximum may win, so the bound is the largest over
    those candidates), forms d_q = X_q - X_r (one rounding), z_q = lam d_q + rho_q (two),
    e_q = exp(z_q - max z) (one more, and the exponential's own error), the weights e_q / sum e
    (K + 1 roundings), t = sum W_q d_q (K + 1) and Y = X_r + t (one). A relative perturbation of an
    exponent dz changes e_q by the factor exp(dz): with kappa_q = 3 |lam d_q| + 2 |rho_q| + |z_q - m|
    the absolute error of z_q - m is at most u (kappa_q + kappa_max), so each weight is off by the
    relative eps_q = expm1(u (kappa_q + kappa_max)) + (sum_p W_p eps_p) + (K + 2) u, and weights
    below the smallest normal number may come out as 0: dW_q = W_q eps_q (+ W_q when W_q < tiny);
        |dY| <= u |Y| + sum_q |d_q| (dW_q + W_q (K + 3) u).
    The backward's deviations dev_q = d_q - t are off by u |d_q| + |dY| + u |dev_q|, and
        gx  (per window and offset) = gy W_q (1 + lam dev_q):
              |d| <= |gy| (dW_q |1 + lam dev_q| + W_q (|lam| ddev_q + 3 u (1 + |lam dev_q|))),
        glam (per window) = gy sum_q W_q dev_q^2:
              |d| <= |gy| sum_q (dW_q dev_q^2 + W_q (2 |dev_q| ddev_q + (K + 3) u dev_q^2)),
        grho (per window and offset) = gy W_q dev_q:
              |d| <= |gy| (dW_q |dev_q| + W_q (ddev_q + 2 u |dev_q|)),
    plus, for every sum over windows (overlapping windows in gx, positions in glam and grho), the
    summation's n u sum |terms|."""
    dtype = x.dtype
    u = unit(dtype)
    tiny = float(np.finfo(dtype).tiny)        # exp(EXP_LO) of the float32 exponential is about this
    K = k[0] * k[1]
    xw, valid = _windows(x.astype(LD), k, s, p)                  # (N, C, Ho, Wo, K), 0 at padding
    lam = lam4.astype(LD)[..., None]
    rho = np.broadcast_to(rho3.astype(LD)[:, :, None, None, :], xw.shape)
    z = np.where(valid, lam * xw + rho, -np.inf)
    m = z.max(-1, keepdims=True)
    e = np.where(valid, np.exp(z - m), 0)
    W = e / e.sum(-1, keepdims=True)
    Y = (W * xw).sum(-1)
    dev = np.where(valid, xw - Y[..., None], 0)
    g = gy.astype(LD)[..., None]
    gxw = g * W * (1 + lam * dev)
    ref = {"y": Y, "gx": scatter(gxw, x.shape, k, s, p), "glam": (g * W * dev * dev).sum(-1) * 1,
           "grho": (g * W * dev)}

    # candidates for the shift cell: exact logit within the rounding of the computed ones of the max
    slack = 3 * u * (np.abs(lam * xw) + np.abs(rho)) + 1e-300
    imax = np.argmax(z, -1)[..., None]
    slack_max = np.take_along_axis(slack, imax, -1)
    cand = valid & (z + slack >= m - slack_max)
    tol = {n: np.zeros_like(v) for n, v in ref.items()}
    tol["gxw"] = np.zeros_like(gxw)
    for r in range(K):
        use = cand[..., r]
        if not use.any():
            continue
        d = np.where(valid, xw - xw[..., r:r + 1], 0)
        kappa = np.where(valid, 3 * np.abs(lam * d) + 2 * np.abs(rho) + np.abs(z - m), 0)
        kmax = np.take_along_axis(kappa, imax, -1)
        eps_q = np.expm1(np.minimum(u * (kappa + kmax + exp_error(dtype)), 50))
        eps_q = eps_q + (W * eps_q).sum(-1, keepdims=True) + (K + 2) * u
        dW = W * eps_q + np.where(W < 2 * tiny, W, 0)         # + a weight below tiny flushed to 0
        dY = u * np.abs(Y) + (np.abs(d) * (dW + W * (K + 3) * u)).sum(-1)
        ddev = u * np.abs(d) + dY[..., None] + u * np.abs(dev)
        t_gx = np.abs(g) * (dW * np.abs(1 + lam * dev) + W * (np.abs(lam) * ddev + 3 * u * (1 + np.abs(lam * dev))))
        t_gl = (np.abs(g) * (dW * dev * dev + W * (2 * np.abs(dev) * ddev + (K + 3) * u * dev * dev))).sum(-1)
        t_gr = np.abs(g) * (dW * np.abs(dev) + W * (ddev + 2 * u * np.abs(dev)))
        for name, t in (("y", dY), ("glam", t_gl), ("grho", t_gr), ("gxw", t_gx)):
            mask = use if t.ndim == 4 else use[..., None]
            tol[name] = np.where(mask, np.maximum(tol[name], t), tol[name])
    overlap = -(-k[0] // s[0]) * -(-k[1] // s[1])
    tol["gx"] = scatter(tol.pop("gxw"), x.shape, k, s, p) + overlap * u * scatter(np.abs(gxw), x.shape, k, s, p)
    return ref, tol


def draw_case(data, dtype):
    """x with 1-3 outliers (position anywhere, so at every offset of some window; magnitude 10^0 ..
    max/2; either sign) among moderate values, a window geometry, lam (a scalar from LAMS or one
    per window) and rho (None or one per channel and offset)."""
    d = HypothesisDraw(data)
    name = data.draw(st.sampled_from(sorted(GEOMS)), label="geometry")
    k, s, p = GEOMS[name]
    N, C = d.int(1, 2), d.int(1, 2)
    H, W = d.int(k[0], 7), d.int(k[1], 7)
    rng = d.rng
    x = rng.uniform(-2, 2, (N, C, H, W))
    top = float(np.log10(np.finfo(dtype).max / 2))
    for _ in range(d.int(1, 3)):
        e = data.draw(st.floats(0, top), label="log10 |outlier|")
        sign = data.draw(st.sampled_from([-1.0, 1.0]), label="sign")
        x[d.int(0, N - 1), d.int(0, C - 1), d.int(0, H - 1), d.int(0, W - 1)] = sign * 10 ** e
    x = x.astype(dtype)
    Ho, Wo = (H + 2 * p[0] - k[0]) // s[0] + 1, (W + 2 * p[1] - k[1]) // s[1] + 1
    if d.bool():
        lam = float(data.draw(st.sampled_from(LAMS), label="lam"))
        lam4 = np.full((N, C, Ho, Wo), lam, dtype)
    else:
        lam = rng.uniform(-5, 5, (N, C, Ho, Wo)).astype(dtype)
        lam4 = lam
    rho = rng.standard_normal((C, k[0] * k[1])).astype(dtype) if d.bool() else None
    rho3 = np.zeros((N, C, k[0] * k[1]), dtype) if rho is None else np.broadcast_to(rho, (N,) + rho.shape)
    gy = rng.standard_normal((N, C, Ho, Wo)).astype(dtype)
    return x, lam, rho, lam4, rho3, gy, (k, s, p)


def check_against(name, got, ref, tol, dtype):
    """got vs ref within tol wherever the reference is representable in dtype (well inside its
    range: a sum of terms near the limit may overflow on the way)."""
    got = np.asarray(got, np.float64)
    ok = np.abs(ref) <= np.finfo(dtype).max / 64
    err = np.abs(got.astype(LD) - ref)
    bad = ok & ~(err <= tol)
    assert not bad.any(), (f"{name}: {bad.sum()} values off; first: got {got[bad][0]!r}, reference "
                           f"{float(ref[bad][0])!r}, tolerance {float(tol[bad][0]):.3g}")
    assert np.all(np.isfinite(got[ok])), f"{name}: non-finite where the reference is finite"


@settings(max_examples=150, deadline=None)
@given(data=st.data(), dtype=st.sampled_from([np.float32, np.float64]))
def test_outliers_anywhere_in_a_window_match_the_extended_precision_reference(data, dtype):
    x, lam, rho, lam4, rho3, gy, (k, s, p) = draw_case(data, dtype)
    y, saved = maxent_pool2d_forward(x, lam, rho, k, s, p)
    with np.errstate(invalid="ignore"):   # a glam beyond the dtype's range: +-inf terms may meet in its sum
        gx, glam, grho = maxent_pool2d_backward(gy, saved)
    ref, tol = reference_and_bounds(x, lam4, rho3, gy, k, s, p)
    check_against("y", y, ref["y"], tol["y"], dtype)
    check_against("gx", gx, ref["gx"], tol["gx"], dtype)
    n = ref["glam"][0, 0].size
    if isinstance(lam, float):                   # summed over every window
        gl_ref, gl_tol = ref["glam"].sum(), tol["glam"].sum() + n * x.shape[0] * x.shape[1] * unit(dtype) * np.abs(ref["glam"]).sum()
    else:
        gl_ref, gl_tol = ref["glam"], tol["glam"]
    check_against("glam", glam, gl_ref, gl_tol, dtype)
    if rho is not None:                          # (C, K): summed over N and positions
        gr_ref = ref["grho"].sum(axis=(0, 2, 3))
        gr_tol = tol["grho"].sum(axis=(0, 2, 3)) + n * x.shape[0] * unit(dtype) * np.abs(ref["grho"]).sum(axis=(0, 2, 3))
        check_against("grho", grho, gr_ref, gr_tol, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_reported_outlier_cases(dtype):
    """The cases that gave wrong answers when every window was shifted by its top-left cell."""
    f = lambda v, lam, k=2, s=2, shape=(2, 2): maxent_pool2d_forward(np.array(v, dtype).reshape((1, 1) + shape),
                                                                      lam, None, k, s)[0].item()
    exact = lambda v, lam: float((np.exp(lam * np.array(v, LD)) * np.array(v, LD)).sum() / np.exp(lam * np.array(v, LD)).sum())
    tol = 16 * unit(dtype)
    assert f([-1e30, -1e30, 1, 2], 1.0) == pytest.approx(exact([1, 2], 1.0), rel=tol)
    assert f([-1e5, 1, 2, 3], 1.0) == pytest.approx(exact([1, 2, 3], 1.0), rel=tol)
    assert f([-3e38, 0, 1, 2], 1.0) == pytest.approx(exact([0, 1, 2], 1.0), rel=tol)
    assert f([-1e30] + list(range(1, 9)), 1.0, 3, 1, (3, 3)) == pytest.approx(exact(list(range(1, 9)), 1.0), rel=tol)
    # lam = 0 (average pooling) on [-1e30, -1e30, 1, 2]: dlam is the window's variance, 2.5e59 (it was
    # NaN): right in float64, and in float32, where it is beyond the range, +inf (an overflow, not NaN)
    x = np.array([-1e30, -1e30, 1, 2], dtype).reshape(1, 1, 2, 2)
    y, saved = maxent_pool2d_forward(x, 0.0)
    glam = maxent_pool2d_backward(np.ones_like(y), saved)[1]
    var = float(np.var(np.array([-1e30, -1e30, 1, 2], LD)))
    assert y.item() == pytest.approx(-5e29, rel=tol)
    if dtype == np.float64:
        assert glam == pytest.approx(var, rel=tol)
    else:
        assert glam == np.inf
    # close values keep the precision that shifting was for
    v = np.array([1000, 1000.03, 1000, 1000.03], dtype)
    assert f(v, 1.0) == pytest.approx(exact(v.astype(LD), 1.0), rel=4 * unit(dtype))


# ---------------------------------------------------------------------------------------------
# Infinite and NaN cells: the limits
# ---------------------------------------------------------------------------------------------
def run(x, lam, k, s, p, gy=None):
    y, saved = maxent_pool2d_forward(x, lam, None, k, s, p)
    gy = np.ones_like(y) if gy is None else gy
    gx, glam, _ = maxent_pool2d_backward(gy, saved)
    return y, gx, glam


@settings(max_examples=60, deadline=None)
@given(data=st.data(), dtype=st.sampled_from([np.float32, np.float64]), sign=st.sampled_from([1.0, -1.0]),
       lam_mag=st.sampled_from([1e-3, 1.0, 50.0]))
def test_infinite_cells(data, dtype, sign, lam_mag):
    """An infinite cell whose logit lam X is +inf takes the whole weight (+inf with lam > 0 is max
    pooling, -inf with lam < 0 min pooling: y = that inf, its gradient gy, the rest 0, dlam 0); a
    cell whose logit is -inf gets weight 0 (the window is pooled over its other cells, exactly as if
    the cell held a very large finite value of that sign). Every geometry, any position."""
    name = data.draw(st.sampled_from(sorted(GEOMS)), label="geometry")
    k, s, p = GEOMS[name]
    d = HypothesisDraw(data)
    H, W = d.int(k[0], 6), d.int(k[1], 6)
    x = d.rng.uniform(-2, 2, (1, 1, H, W)).astype(dtype)
    i, j = d.int(0, H - 1), d.int(0, W - 1)
    inf = sign * np.inf
    x[0, 0, i, j] = inf
    lam = data.draw(st.sampled_from([1.0, -1.0]), label="lam sign") * lam_mag
    y, gx, glam = run(x, lam, k, s, p)
    # the same window with the infinity replaced by a large finite value of its sign
    big = x.copy()
    big[0, 0, i, j] = sign * np.finfo(dtype).max / 4
    yb = run(big, lam, k, s, p)[0]
    ones = np.zeros(x.shape, dtype)
    ones[0, 0, i, j] = 1
    inside = maxent_pool2d_forward(ones, 0.0, None, k, s, p)[0] > 0
    if sign * lam > 0:               # logit +inf: the cell wins its windows
        assert np.all(y[inside] == inf)
        assert gx[0, 0, i, j] == inside.sum()                    # gy = 1 from every window holding it
        others = np.ones(x.shape, bool)
        others[0, 0, i, j] = False
        gx_out, _ = maxent_pool2d_backward(np.where(inside, 0, 1).astype(dtype),
                                           maxent_pool2d_forward(x, lam, None, k, s, p)[1])[:2]
        assert np.all(gx[others] == gx_out[others])              # the other cells: only their other windows
    else:                            # logit -inf: weight 0, the other cells pooled as usual
        np.testing.assert_allclose(y[inside], yb[inside], rtol=8 * unit(dtype), atol=8 * unit(dtype) * 2)
        # (the windows holding an infinity take the kernels' careful path, whose sum rounds differently)
        assert gx[0, 0, i, j] == 0
    np.testing.assert_array_equal(y[~inside], yb[~inside])
    assert np.all(np.isfinite(gx)) and np.isfinite(glam)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", sorted(GEOMS))
def test_lam_zero_with_an_infinite_cell_is_average_pooling(dtype, name):
    """lam = 0 is average pooling even for an infinite cell: y = inf (or -inf), gx = gy / |window|."""
    k, s, p = GEOMS[name]
    x = np.arange(25, dtype=dtype).reshape(1, 1, 5, 5)
    x[0, 0, 1, 1] = np.inf
    y, gx, _ = run(x, 0.0, k, s, p)
    ones = np.zeros_like(x)
    ones[0, 0, 1, 1] = 1
    inside = maxent_pool2d_forward(ones, 0.0, None, k, s, p)[0] > 0
    assert np.all(y[inside] == np.inf) and np.all(np.isfinite(y[~inside]))
    _, gx_avg, _ = run(np.zeros_like(x), 0.0, k, s, p)
    np.testing.assert_array_equal(gx, gx_avg)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", sorted(GEOMS))
@pytest.mark.parametrize("lam", [0.0, 1.0, -50.0])
def test_nan_cells_propagate(dtype, name, lam):
    """A NaN cell makes y NaN in every window holding it (whatever lam), and nowhere else."""
    k, s, p = GEOMS[name]
    rng = np.random.default_rng(0)
    for i in range(5):
        for j in range(5):
            x = rng.uniform(-2, 2, (1, 1, 5, 5)).astype(dtype)
            x[0, 0, i, j] = np.nan
            ones = np.zeros_like(x)
            ones[0, 0, i, j] = 1
            inside = maxent_pool2d_forward(ones, 0.0, None, k, s, p)[0] > 0
            y, gx, _ = run(x, lam, k, s, p)
            assert np.all(np.isnan(y[inside])) and not np.isnan(y[~inside]).any(), (i, j)


def test_exp_nonpos_f32_keeps_nan():
    """NaN stays NaN in the float32 exponential (as in float64's libm), compiled and plain Python;
    -inf still gives 0."""
    for f in (mcpu.exp_nonpos_f32, mcpu.exp_nonpos_f32.py_func):
        assert np.isnan(f(np.float32(np.nan)))
        assert f(np.float32(-np.inf)) == 0
    out = np.empty(40, np.float32)
    v = np.full(40, np.nan, np.float32)
    v[::3] = -1.0
    from test_maxent import _exp_array                # the vectorised loop, not only the scalar call
    _exp_array(v, out)
    assert np.all(np.isnan(out[np.isnan(v)])) and np.allclose(out[::3], np.exp(-1.0))


@pytest.mark.parametrize("lam", [1e39, -3.5e38, np.float64(1e300)])
def test_lam_must_be_representable_in_the_dtype_of_x(lam):
    """A lam that is finite as a Python float but overflows x's dtype is an error naming lam and the
    dtype (it used to become inf on the cast, and the output NaN); in float64 it is fine."""
    x = np.ones((1, 1, 2, 2), np.float32)
    with pytest.raises(ValueError, match=r"lam: expected a number representable in x's dtype float32"
                                         r" \(\|lam\| <= 3\.40282e\+38\), got"):
        maxent_pool2d_forward(x, lam)
    y, _ = maxent_pool2d_forward(x.astype(np.float64), lam)
    assert np.isfinite(y).all()
