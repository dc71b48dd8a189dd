"""Max-entropy pooling, the functional pair (Eq. 6-10): what is specific to it. The shared checks
(public path vs the NumPy reference on every layout and batch size, float64 central differences
for every lam/rho form, the NUMBA_DISABLE_JIT=1 run) are the contract suite's, tests/test_ops.py,
for the op ``maxent_pool2d``. Here: the limits and properties of the paper on generated shapes, the
fused kernels vs the reference to a derived rounding bound (inputs 1e-3..1e3, fast 2x2 path and
generic path), both kernel paths and their blocks agreeing, numerical safety, the float32
exponential, and every bad-input error. The layer (MaxEntPool2d) is tested in
test_maxent_layer.py."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from helpers import HypothesisDraw, assert_close, device_ok, distinct_array, dtypes, require, seeds

from minignn import backend, cases
from minignn._numba import njit
from minignn.layers import maxent_pool2d_backward, maxent_pool2d_forward
from minignn.layers.maxent import cpu as mcpu
from minignn.layers.maxent.reference import maxent_pool2d_backward_ref, maxent_pool2d_forward_ref

LAM_FORMS = ["scalar", "C", "NC", "NCHW"]
RHO_FORMS = [None, "CK", "NCK"]
FAST = ((2, 2), (2, 2), (0, 0))     # the fused kernel's geometry


def eps(dtype):
    return float(np.finfo(dtype).eps)


# ---------------------------------------------------------------------------------------------
# Strategies and independent helpers
# ---------------------------------------------------------------------------------------------
@st.composite
def geometries(draw, path="any", pad=True):
    """(x shape, kernel, stride, padding) from :mod:`minignn.cases` (window, planes, spatial),
    batch >= 1. ``path``: "fast" (2x2 / stride 2 / no padding, the fused kernel, half the time
    with planes 32-35 wide: rows of a vector register and more), "generic" (anything else) or
    "any" (the fast one drawn one time in four); ``pad=False``: no padding (every offset of a
    window is a real cell)."""
    d = HypothesisDraw(draw(st.data()))
    k, s, p = FAST if path == "fast" else cases.window(d, max_s=3, fast=4 if path == "any" else 2**16)
    if not pad:
        p = (0, 0)
    if path == "generic" and (k, s, p) == FAST:
        s = (1, 2)
    n, c = cases.planes(d, min_n=1)
    h, w = cases.spatial(d, k, p)
    if (k, s, p) == FAST and d.bool():
        w = d.int(32, 35)
    return (n, c, h, w), k, s, p


def out_hw(shape, k, s, p):
    return (shape[2] + 2 * p[0] - k[0]) // s[0] + 1, (shape[3] + 2 * p[1] - k[1]) // s[1] + 1


def windows(shape, k, s, p):
    """Every output position with the row and column slices of its *real* (unpadded) cells;
    written from the definition, independently of the kernels and of the reference."""
    H, W = shape[2:]
    Ho, Wo = out_hw(shape, k, s, p)
    for ho in range(Ho):
        r0 = ho * s[0] - p[0]
        rows = slice(max(0, r0), min(H, r0 + k[0]))
        for wo in range(Wo):
            c0 = wo * s[1] - p[1]
            yield ho, wo, rows, slice(max(0, c0), min(W, c0 + k[1]))


def per_window(x, geo, fn):
    """fn(values of a window as an (N, C, K_w) float64 array) -> (N, C) for every window: (N, C, Ho, Wo)."""
    shape, k, s, p = geo
    out = np.empty(shape[:2] + out_hw(shape, k, s, p))
    xx = np.asarray(x, dtype=np.float64)
    for ho, wo, rs, cs in windows(shape, k, s, p):
        out[:, :, ho, wo] = fn(xx[:, :, rs, cs].reshape(shape[0], shape[1], -1))
    return out


def make_lam(form, shape, Ho, Wo, values, dtype):
    """lam in one of its four forms, drawn from ``values(size)``; the scalar form is a Python float."""
    N, C = shape[:2]
    size = {"scalar": (), "C": (C,), "NC": (N, C), "NCHW": (N, C, Ho, Wo)}[form]
    v = np.asarray(values(size), dtype=dtype)
    return float(v) if form == "scalar" else v


def make_rho(form, shape, K, values, dtype):
    if form is None:
        return None
    N, C = shape[:2]
    return np.asarray(values((C, K) if form == "CK" else (N, C, K)), dtype=dtype)


def lam_full(lam, N, C, Ho, Wo):
    """Any lam form broadcast to (N, C, Ho, Wo) (float64)."""
    a = np.asarray(lam, dtype=np.float64)
    if a.ndim == 1:
        a = a[None, :, None, None]
    elif a.ndim == 2:
        a = a[:, :, None, None]
    return np.broadcast_to(a, (N, C, Ho, Wo))



def on(device, *arrays):
    """The arrays on ``device``; a float (scalar lam) or None (no rho) stays as it is."""
    return [a if a is None or isinstance(a, float) else backend.to_device(a, device) for a in arrays]


def draw_x(rng, shape, scale, offset, dtype):
    return (rng.standard_normal(shape) * scale + offset * scale).astype(dtype)


scales = st.sampled_from([1e-3, 1.0, 1e3])
offsets = st.sampled_from([-3.0, 0.0, 3.0])   # all-negative, mixed, all-positive inputs (mostly)


# ---------------------------------------------------------------------------------------------
# The limits of Eq. 7
# ---------------------------------------------------------------------------------------------
@device_ok
@given(geo=geometries(), dtype=dtypes, form=st.sampled_from(LAM_FORMS), scale=scales, offset=offsets, seed=seeds)
def test_lam_zero_is_average_over_real_cells(device, geo, dtype, form, scale, offset, seed):
    require(device, "maxent_pool2d")
    shape, k, s, p = geo
    rng = np.random.default_rng(seed)
    x = draw_x(rng, shape, scale, offset, dtype)
    Ho, Wo = out_hw(shape, k, s, p)
    lam = make_lam(form, shape, Ho, Wo, np.zeros, dtype)
    y, _ = maxent_pool2d_forward(*on(device, x, lam), None, k, s, p)
    assert y.shape == shape[:2] + (Ho, Wo) and y.dtype == dtype
    expected = per_window(x, geo, lambda v: v.mean(axis=-1))
    # lam = 0: every weight is exp(0) = 1 exactly, so y = (sum of K_w values) / K_w: K_w - 1 additions
    # and a division, each off by at most eps * max|x| -> |error| <= (K + 1) eps max|x| of the window
    K = k[0] * k[1]
    tol = (K + 1) * eps(dtype) * per_window(x, geo, lambda v: np.abs(v).max(axis=-1))
    assert np.all(np.abs(backend.to_numpy(y) - expected) <= tol), "lam=0 must be average pooling over real cells"


def exp_rounding_slack(dtype, lam, xmax):
    """How far the computed exponent lam*x_q + rho_q - max can be from the exact one: |z| <= |lam| max|x| (+
    |rho|), each of the product, the sum and the shift rounds by <= eps |z|: 3 eps |lam| max|x|."""
    return 3 * eps(dtype) * abs(lam) * xmax


@device_ok
@given(geo=geometries(), dtype=dtypes, sign=st.sampled_from([1.0, -1.0]), L=st.sampled_from([8.0, 20.0, 60.0]),
       scale=st.sampled_from([1e-2, 1.0, 30.0]), offset=st.sampled_from([-1.0, 0.0, 1.0]), seed=seeds)
def test_large_lam_is_max_pooling_and_very_negative_lam_min_pooling(device, geo, dtype, sign, L, scale, offset, seed):
    require(device, "maxent_pool2d")
    shape, k, s, p = geo
    rng = np.random.default_rng(seed)
    gap = 1e-2
    x = distinct_array(rng, shape, scale=scale, gap=gap)            # every two values >= gap*scale apart
    x = (x + offset * np.abs(x).max() * 1.5).astype(dtype)         # also all-negative / all-positive
    lam = sign * L / (gap * scale)                                  # lam * (top-two gap) >= L
    y = backend.to_numpy(maxent_pool2d_forward(backend.to_device(x, device), lam, None, k, s, p)[0]).astype(np.float64)
    # Derivation. Take lam > 0 (min pooling is the same with x -> -x). Let m = the window max,
    # g = m - (second largest) >= gap*scale and R = m - (window min). With W_q = exp(lam (x_q - m)) / Z,
    # Z >= 1 (the max's own term):
    #     m - Y = sum_{q != argmax} W_q (m - x_q),   0 <= W_q <= exp(-lam (m - x_q)) <= exp(-lam g)
    # so 0 <= m - Y <= (K_w - 1) exp(-lam g) R. Floating point: the computed exponents are off by at
    # most d = exp_rounding_slack (so W_q <= exp(-lam g + d)), the exponential by 2e-7 relative, and
    # the weighted sum / division by (K + 2) eps max|x| -> slack 4 (K + 2) eps max|x|.
    ext = np.max if sign > 0 else np.min
    target = per_window(x, geo, lambda v: ext(v, axis=-1))

    def bound(v):
        srt = np.sort(v if sign > 0 else -v, axis=-1)              # the extreme is srt[..., -1]
        kw = v.shape[-1]
        if kw == 1:
            return np.zeros(v.shape[:2])
        g = srt[..., -1] - srt[..., -2]
        R = srt[..., -1] - srt[..., 0]
        d = exp_rounding_slack(dtype, lam, np.abs(x).max())
        return (kw - 1) * np.exp(-abs(lam) * g + d) * R

    K = k[0] * k[1]
    tol = per_window(x, geo, bound) + 4 * (K + 2) * eps(dtype) * per_window(x, geo, lambda v: np.abs(v).max(-1))
    err = np.abs(y - target)
    assert np.all(err <= tol), f"{'max' if sign > 0 else 'min'} pooling limit: worst excess {np.max(err - tol):.3g}"


@device_ok
@given(geo=geometries(pad=False), dtype=dtypes, form=st.sampled_from(["CK", "NCK"]),
       lam_form=st.sampled_from(LAM_FORMS), B=st.sampled_from([25.0, 40.0, 80.0]), scale=scales, seed=seeds,
       data=st.data())
def test_lam_zero_with_large_rho_at_one_offset_is_skip(device, geo, dtype, form, lam_form, B, scale, seed, data):
    require(device, "maxent_pool2d")
    shape, k, s, p = geo                                            # no padding: offset q is a real cell
    K = k[0] * k[1]
    q = data.draw(st.integers(0, K - 1), label="offset q")
    rng = np.random.default_rng(seed)
    x = draw_x(rng, shape, scale, 0.0, dtype)
    Ho, Wo = out_hw(shape, k, s, p)
    lam = make_lam(lam_form, shape, Ho, Wo, np.zeros, dtype)
    rho = make_rho(form, shape, K, lambda sz: rng.uniform(-1, 1, sz), dtype)
    rho[..., q] = B                                                 # rho_q - rho_other >= B - 1
    y = backend.to_numpy(maxent_pool2d_forward(*on(device, x, lam, rho), k, s, p)[0]).astype(np.float64)
    i, j = divmod(q, k[1])
    expected = x[:, :, i:i + s[0] * (Ho - 1) + 1:s[0], j:j + s[1] * (Wo - 1) + 1:s[1]].astype(np.float64)
    # |Y - x_q| = |sum_{q' != q} W_q' (x_q' - x_q)| <= (K - 1) exp(-(B - 1)) R (as in the max test, with
    # exponents rho instead of lam x), plus the rounding of the weighted mean, 4 (K + 2) eps max|x|
    R = per_window(x, geo, lambda v: v.max(-1) - v.min(-1))
    tol = (K - 1) * np.exp(-(B - 1) + 3 * eps(dtype) * B) * R + 4 * (K + 2) * eps(dtype) * per_window(
        x, geo, lambda v: np.abs(v).max(-1))
    assert np.all(np.abs(y - expected) <= tol), "lam=0 with a large rho_q must pick offset q"


@device_ok
@given(geo=geometries(), dtype=dtypes, form=st.sampled_from(LAM_FORMS), rho_form=st.sampled_from(RHO_FORMS),
       lam_max=st.sampled_from([0.1, 3.0, 100.0]), scale=scales, offset=offsets, seed=seeds)
def test_every_output_lies_within_its_window_range(device, geo, dtype, form, rho_form, lam_max, scale, offset, seed):
    require(device, "maxent_pool2d")
    shape, k, s, p = geo
    rng = np.random.default_rng(seed)
    x = draw_x(rng, shape, scale, offset, dtype)
    Ho, Wo = out_hw(shape, k, s, p)
    lam = make_lam(form, shape, Ho, Wo, lambda sz: rng.uniform(-lam_max, lam_max, sz) / scale, dtype)
    rho = make_rho(rho_form, shape, k[0] * k[1], lambda sz: 3 * rng.standard_normal(sz), dtype)
    y = backend.to_numpy(maxent_pool2d_forward(*on(device, x, lam, rho), k, s, p)[0]).astype(np.float64)
    assert np.all(np.isfinite(y))
    # Y is a convex combination of the window's values; only the rounding of the mean can step out
    tol = 4 * (k[0] * k[1] + 2) * eps(dtype) * per_window(x, geo, lambda v: np.abs(v).max(-1))
    lo = per_window(x, geo, lambda v: v.min(-1))
    hi = per_window(x, geo, lambda v: v.max(-1))
    assert np.all(y >= lo - tol) and np.all(y <= hi + tol), "an output left its window's [min, max]"


# ---------------------------------------------------------------------------------------------
# Properties of the derivatives (Eq. 8-10)
# ---------------------------------------------------------------------------------------------
@device_ok
@given(geo=geometries(), dtype=dtypes, form=st.sampled_from(LAM_FORMS), rho_form=st.sampled_from(RHO_FORMS),
       lam_max=st.sampled_from([0.0, 1.0, 5.0]), seed=seeds, data=st.data())
def test_dY_dX_sums_to_one_over_the_window(device, geo, dtype, form, rho_form, lam_max, seed, data):
    require(device, "maxent_pool2d")
    shape, k, s, p = geo
    N, C = shape[:2]
    rng = np.random.default_rng(seed)
    x = draw_x(rng, shape, 1.0, 0.0, dtype)
    Ho, Wo = out_hw(shape, k, s, p)
    lam = make_lam(form, shape, Ho, Wo, lambda sz: rng.uniform(-lam_max, lam_max, sz), dtype)
    rho = make_rho(rho_form, shape, k[0] * k[1], lambda sz: rng.standard_normal(sz), dtype)
    y, saved = maxent_pool2d_forward(*on(device, x, lam, rho), k, s, p)
    # one output: gy one-hot at (n, c, ho, wo) -> gx = dY_(n,c,ho,wo) / dX, nonzero only in that window
    n, c = data.draw(st.integers(0, N - 1)), data.draw(st.integers(0, C - 1))
    ho, wo = data.draw(st.integers(0, Ho - 1)), data.draw(st.integers(0, Wo - 1))
    gy = np.zeros(y.shape, dtype)
    gy[n, c, ho, wo] = 1
    gx = backend.to_numpy(maxent_pool2d_backward(backend.to_device(gy, device), saved)[0]).astype(np.float64)
    _, _, rs, cs = next(w for w in windows(shape, k, s, p) if w[:2] == (ho, wo))
    inside = np.zeros(shape, bool)
    inside[n, c, rs, cs] = True
    assert np.all(gx[~inside] == 0), "dY/dX must vanish outside the window"
    # each term W_q (1 + lam (X_q - Y)) is at most W_q (1 + |lam| R) in size: their sum rounds by
    # <= (K + 4) eps (1 + |lam| R) (the weights themselves are off by ~(K + 4) eps relative too)
    lam_v = lam_full(lam, N, C, Ho, Wo)[n, c, ho, wo]
    win = x[n, c, rs, cs].astype(np.float64)
    tol = 4 * (k[0] * k[1] + 4) * eps(dtype) * (1 + abs(lam_v) * (win.max() - win.min()))
    assert abs(gx[inside].sum() - 1) <= tol, f"sum of dY/dX_q over the window = {gx[inside].sum()!r}, expected 1"
    # all outputs at once: summing over every cell counts every window once -> Ho * Wo per plane
    gx1 = backend.to_numpy(maxent_pool2d_backward(backend.to_device(np.ones(y.shape, dtype), device), saved)[0])
    tol_all = Ho * Wo * 4 * (k[0] * k[1] + 4) * eps(dtype) * (1 + np.max(np.abs(lam_full(lam, N, C, Ho, Wo)))
                                                             * 2 * np.abs(x).max())
    assert np.all(np.abs(gx1.astype(np.float64).sum(axis=(2, 3)) - Ho * Wo) <= tol_all)


@given(geo=geometries(), dtype=dtypes, seed=seeds)
def test_lam_zero_gradient_is_the_overlap_count_over_window_sizes(geo, dtype, seed):
    """lam = 0, rho = 0, gy = 1: gx at a cell = sum over the windows holding it of 1 / (real cells
    of that window), counted directly from the window definition."""
    shape, k, s, p = geo
    x = draw_x(np.random.default_rng(seed), shape, 1.0, 0.0, dtype)
    y, saved = maxent_pool2d_forward(x, 0.0, None, k, s, p)
    gx = maxent_pool2d_backward(np.ones_like(y), saved)[0]
    expected = np.zeros(shape)
    for _, _, rs, cs in windows(shape, k, s, p):
        cells = (rs.stop - rs.start) * (cs.stop - cs.start)
        expected[:, :, rs, cs] += 1.0 / cells
    assert_close(gx, expected, rtol=8 * eps(dtype), atol=8 * eps(dtype), name="gx with lam = 0 (overlap count)")


@device_ok
@given(geo=geometries(), dtype=dtypes, rho_form=st.sampled_from(RHO_FORMS), lam_max=st.sampled_from([1.0, 20.0]),
       scale=scales, seed=seeds)
def test_dlam_is_nonnegative_when_gy_is(device, geo, dtype, rho_form, lam_max, scale, seed):
    require(device, "maxent_pool2d")
    shape, k, s, p = geo
    N, C = shape[:2]
    rng = np.random.default_rng(seed)
    x = draw_x(rng, shape, scale, 0.0, dtype)
    Ho, Wo = out_hw(shape, k, s, p)
    lam = make_lam("NCHW", shape, Ho, Wo, lambda sz: rng.uniform(-lam_max, lam_max, sz) / scale, dtype)
    rho = make_rho(rho_form, shape, k[0] * k[1], lambda sz: rng.standard_normal(sz), dtype)
    y, saved = maxent_pool2d_forward(*on(device, x, lam, rho), k, s, p)
    gy = np.abs(rng.standard_normal(y.shape)).astype(dtype) * (rng.random(y.shape) < 0.8)   # >= 0, some zeros
    glam = backend.to_numpy(maxent_pool2d_backward(backend.to_device(gy, device), saved)[1])
    assert glam.shape == (N, C, Ho, Wo)
    assert np.all(glam >= 0), f"dlam must be >= 0 (gy times a variance), min {glam.min()!r}"
    assert np.all(glam[gy == 0] == 0)
    # and it is that variance: sum_q W_q (X_q - Y)^2 times gy, per window, from the reference
    _, glam_ref, _ = maxent_pool2d_backward_ref(x.astype(np.float64), np.asarray(lam, np.float64),
                                                None if rho is None else rho.astype(np.float64), gy.astype(np.float64),
                                                k, s, p)
    M = np.max(np.abs(gy)) * (2 * np.abs(x).max()) ** 2          # bound on every term's size
    assert_close(glam, glam_ref, rtol=1e-4 if dtype == np.float32 else 1e-10, atol=1e-5 * M * (dtype == np.float32)
                 + 1e-13 * M, name="glam (per window)")


# ---------------------------------------------------------------------------------------------
# Fused kernels vs the NumPy reference
# ---------------------------------------------------------------------------------------------
@device_ok
@pytest.mark.parametrize("path", ["fast", "generic"])
@pytest.mark.parametrize("rho_form", RHO_FORMS)
@pytest.mark.parametrize("lam_form", LAM_FORMS)
@given(data=st.data(), dtype=dtypes, scale=scales, offset=offsets, seed=seeds)
def test_kernels_match_reference(device, lam_form, rho_form, path, data, dtype, scale, offset, seed):
    require(device, "maxent_pool2d")
    geo = data.draw(geometries(path=path), label="geometry")
    shape, k, s, p = geo
    N, C = shape[:2]
    K = k[0] * k[1]
    rng = np.random.default_rng(seed)
    x = draw_x(rng, shape, scale, offset, dtype)
    Ho, Wo = out_hw(shape, k, s, p)
    lam = make_lam(lam_form, shape, Ho, Wo, lambda sz: rng.uniform(-3, 3, sz) / scale, dtype)
    rho = make_rho(rho_form, shape, K, lambda sz: rng.standard_normal(sz), dtype)
    gy = rng.standard_normal(shape[:2] + (Ho, Wo)).astype(dtype)
    dev = lambda a: a if isinstance(a, float) or a is None else backend.to_device(a, device)
    y, saved = maxent_pool2d_forward(dev(x), dev(lam), dev(rho), k, s, p)
    gx, glam, grho = maxent_pool2d_backward(dev(gy), saved)
    f64 = lambda a: a if a is None or isinstance(a, float) else np.asarray(a, np.float64)
    y_r = maxent_pool2d_forward_ref(f64(x), f64(lam), f64(rho), k, s, p)
    gx_r, glam_r, grho_r = maxent_pool2d_backward_ref(f64(x), f64(lam), f64(rho), f64(gy), k, s, p)
    assert y.dtype == gx.dtype == dtype and gx.shape == shape
    # Tolerances, derived from float rounding (a bound, not a fit):
    #   exponents z_q - max z are off by dz <= 3 eps |lam| max|x| (exp_rounding_slack), the exponential by
    #   e_exp (2e-7 for the float32 polynomial, ~1 ulp for libm) -> each weight W_q is off by a relative
    #   dW = dz + e_exp + (K + 4) eps (the sums and the division);
    #   Y = sum W_q X_q moves by <= R dW plus the rounding of the mean 4 (K + 2) eps max|x|   -> dY;
    #   gx = sum_windows gy W_q (1 + lam d_q), d_q = X_q - Y:  <= overlap max|gy| ((1 + |lam| R) dW + |lam| dY);
    #   glam = sum gy sum_q W_q d_q^2: <= dW * sum |gy| var + 2 dY sum |gy| R (+ eps per term of the sum);
    #   grho = sum gy W_q d_q: <= sum |gy| (R dW + dY).
    e = eps(dtype)
    e_exp = 2e-7 if dtype == np.float32 else 4 * e
    xm = np.abs(x).max()
    lm = np.abs(lam_full(lam, N, C, Ho, Wo)).max()
    R = per_window(x, geo, lambda v: v.max(-1) - v.min(-1))
    Rm = R.max()
    overlap = -(-k[0] // s[0]) * -(-k[1] // s[1])
    dW = exp_rounding_slack(dtype, lm, xm) + e_exp + (K + 4) * e
    dY = Rm * dW + 4 * (K + 2) * e * xm
    n_terms = N * Ho * Wo
    assert np.all(np.abs(y - y_r) <= dY), "y"
    assert np.all(np.abs(gx - gx_r) <= overlap * np.abs(gy).max() * ((1 + lm * Rm) * dW + lm * dY)), "gx"
    _, glam_abs, _ = maxent_pool2d_backward_ref(f64(x), f64(lam), f64(rho), np.abs(f64(gy)), k, s, p)
    tol_glam = (dW + n_terms * e) * np.asarray(glam_abs) + 2 * dY * np.sum(np.abs(gy) * R)
    if lam_form == "scalar":
        assert isinstance(glam, float)
    else:
        assert glam.shape == np.shape(lam) and glam.dtype == dtype
    assert np.all(np.abs(np.asarray(glam) - glam_r) <= tol_glam), "glam"
    if rho is None:
        assert grho is None
    else:
        assert grho.shape == rho.shape and grho.dtype == dtype
        tol_grho = np.sum(np.abs(gy) * (R * dW + dY)) + n_terms * e * np.sum(np.abs(gy) * R)
        assert np.all(np.abs(grho - grho_r) <= tol_grho), "grho"


@pytest.mark.parametrize("width, tile", [(8, 1024), (33, 1024), (33, 32), (12, 1)])
def test_both_kernel_paths_agree_on_the_fast_geometry(width, tile, monkeypatch):
    """2x2 stride 2 (the fused path) equals every other window of 2x2 stride 1 (the generic
    path): the paths agree on the same windows, forward and backward; also when the fused path
    splits each plane into blocks of rows (``tile`` windows per block: one row, two rows)."""
    monkeypatch.setattr(mcpu, "TILE", tile)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 6, width)).astype(np.float32)
    lam = rng.uniform(-2, 2, (2, 3)).astype(np.float32)
    y_fast, sv_fast = maxent_pool2d_forward(x, lam, None, 2, 2, 0)
    y_gen, sv_gen = maxent_pool2d_forward(x, lam, None, 2, 1, 0)         # stride 1: generic path
    assert_close(y_fast, y_gen[:, :, ::2, ::2], rtol=1e-6, atol=1e-6, name="fast vs generic path y")
    gy = np.zeros(y_gen.shape, np.float32)
    gy[:, :, ::2, ::2] = rng.standard_normal(y_fast.shape)
    gx_f, gl_f, _ = maxent_pool2d_backward(np.ascontiguousarray(gy[:, :, ::2, ::2]), sv_fast)
    gx_g, gl_g, _ = maxent_pool2d_backward(gy, sv_gen)
    assert_close(gx_f, gx_g, rtol=1e-5, atol=1e-6, name="fast vs generic path gx")
    assert_close(gl_f, gl_g, rtol=1e-5, atol=1e-6, name="fast vs generic path glam")


@settings(deadline=None)
@given(data=st.data())
def test_fused_path_blocks_agree_with_whole_planes(data):
    """The fused 2x2 path gives the same results whether a plane is one block or several (every
    lam form, with and without rho): y and gx exactly (the same arithmetic per window), glam and
    grho to float32 rounding (their sums are split differently)."""
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    N, C = data.draw(st.integers(1, 2)), data.draw(st.integers(1, 3))
    H, W = data.draw(st.integers(2, 9)), data.draw(st.integers(2, 37))
    Ho, Wo = H // 2, W // 2
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    lam = data.draw(st.sampled_from([0.7, (C,), (N, C), (N, C, Ho, Wo)]))
    if isinstance(lam, tuple):
        lam = rng.uniform(-3, 3, lam).astype(np.float32)
    rho = data.draw(st.sampled_from([None, (C, 4), (N, C, 4)]))
    if rho is not None:
        rho = rng.uniform(-1, 1, rho).astype(np.float32)
    gy = rng.standard_normal((N, C, Ho, Wo)).astype(np.float32)
    results = []
    for tile in (1024, data.draw(st.integers(1, 2 * Wo))):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(mcpu, "TILE", tile)
            y, saved = maxent_pool2d_forward(x, lam, rho)
            results.append((y,) + tuple(maxent_pool2d_backward(gy, saved)))
    (y1, gx1, gl1, gr1), (y2, gx2, gl2, gr2) = results
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_array_equal(gx1, gx2)
    assert_close(gl1, gl2, rtol=1e-5, atol=1e-5, name="glam, blocks vs whole planes")
    if rho is not None:
        assert_close(gr1, gr2, rtol=1e-5, atol=1e-5, name="grho, blocks vs whole planes")


# ---------------------------------------------------------------------------------------------
# Numerical safety
# ---------------------------------------------------------------------------------------------
def run_both(x, lam, rho, k, s, p, gy=None):
    y, saved = maxent_pool2d_forward(x, lam, rho, k, s, p)
    gy = np.ones_like(y) if gy is None else gy
    gx, glam, grho = maxent_pool2d_backward(gy, saved)
    for name, a in (("y", y), ("gx", gx), ("glam", glam), ("grho", grho)):
        if a is not None:
            assert np.all(np.isfinite(a)), f"{name} has NaN/inf"
    return y, gx, glam, grho


GEOS = [((2, 2), (2, 2), (0, 0)), ((3, 3), (2, 2), (1, 1)), ((2, 3), (1, 2), (1, 0))]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("geom", GEOS)
@pytest.mark.parametrize("lam", [100.0, -100.0, 1.0, 1e4 / 200, "NC"])
def test_all_negative_windows_with_huge_lam_x(dtype, geom, lam):
    k, s, p = geom
    rng = np.random.default_rng(0)
    x = -rng.uniform(1, 100, (2, 3, 7, 6)).astype(dtype)          # |lam x| up to 1e4
    if lam == "NC":
        lam = rng.choice([-100.0, 100.0], (2, 3)).astype(dtype)
    rho = rng.standard_normal((3, k[0] * k[1])).astype(dtype)
    y, gx, glam, grho = run_both(x, lam, rho, k, s, p)
    geo = (x.shape, k, s, p)
    lo, hi = per_window(x, geo, lambda v: v.min(-1)), per_window(x, geo, lambda v: v.max(-1))
    tol_r = 32 * eps(dtype) * 100
    assert np.all(y >= lo - tol_r) and np.all(y <= hi + tol_r)
    # vs the float64 reference on the same inputs: a perturbation dz of the exponents moves Y by at most
    # R max|dz| (dY/dz_q = W_q (X_q - Y)); |dz| <= 3 eps |lam| max|x| (exp_rounding_slack) + 2e-7
    y_r = maxent_pool2d_forward_ref(x.astype(np.float64), np.asarray(lam, np.float64), rho.astype(np.float64), k, s, p)
    R = hi - lo
    lmax = float(np.abs(lam).max())
    tol = R * (exp_rounding_slack(dtype, lmax, 100.0) + 3 * eps(dtype) * 3 + 4e-7) + tol_r
    assert np.all(np.abs(y - y_r) <= tol), f"worst excess {np.max(np.abs(y - y_r) - tol):.3g}"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("geom", GEOS)
@pytest.mark.parametrize("c,lam", [(-100.0, 100.0), (-100.0, -100.0), (100.0, 100.0), (1e4, 1.0), (0.0, 1e4),
                                   (-3.0, 0.0)])
def test_all_equal_windows(dtype, geom, c, lam):
    k, s, p = geom
    x = np.full((2, 2, 5, 7), c, dtype)
    lam4 = np.full((2, 2) + out_hw(x.shape, k, s, p), lam, dtype)
    y, gx, glam, grho = run_both(x, lam4, None, k, s, p)
    assert np.all(np.abs(y - c) <= 2 * np.spacing(dtype(abs(c)) + dtype(1e-30))), "equal values average to themselves"
    # |y - c| <= 2 ulps, so the variance sum W (c - y)^2 is at most (2 ulps)^2
    assert np.all(glam >= 0) and np.all(glam <= 4 * np.spacing(dtype(abs(c))).astype(np.float64) ** 2)
    # gx with gy = 1: every window gives each of its cells 1/K_w (1 + lam * (x - y)) = 1/K_w -> the overlap count
    expected = np.zeros(x.shape)
    for _, _, rs, cs in windows(x.shape, k, s, p):
        expected[:, :, rs, cs] += 1.0 / ((rs.stop - rs.start) * (cs.stop - cs.start))
    slack = abs(lam) * 2 * np.spacing(dtype(abs(c)))                 # lam times the rounding of y
    assert_close(gx, expected, rtol=16 * eps(dtype) + 4 * slack, atol=16 * eps(dtype), name="gx (equal windows)")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("geom", [((2, 2), (2, 2), (1, 1)), ((3, 3), (3, 3), (2, 2)), ((2, 3), (2, 3), (1, 2))])
@pytest.mark.parametrize("lam", [1e4, -1e4, 0.0])
def test_single_valid_cell_at_a_padded_corner(dtype, geom, lam):
    k, s, p = geom
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, (2, 3, 5, 4)).astype(dtype)             # |lam x| up to 1e4
    N, C = x.shape[:2]
    Ho, Wo = out_hw(x.shape, k, s, p)
    lam4 = np.full((N, C, Ho, Wo), lam, dtype)
    rho = rng.standard_normal((N, C, k[0] * k[1])).astype(dtype)
    gy = rng.standard_normal((N, C, Ho, Wo)).astype(dtype)
    y, gx, glam, grho = run_both(x, lam4, rho, k, s, p, gy)
    # the top-left window holds only x[0, 0]: its weight is exactly 1
    assert np.array_equal(y[:, :, 0, 0], x[:, :, 0, 0])
    assert np.array_equal(glam[:, :, 0, 0], np.zeros((N, C), dtype))
    # x[0, 0] is in the top-left window only (stride >= the part of the kernel inside the input)
    assert sum(1 for _, _, rs, cs in windows(x.shape, k, s, p) if rs.start == 0 and cs.start == 0) == 1
    assert np.array_equal(gx[:, :, 0, 0], gy[:, :, 0, 0])
    y_r = maxent_pool2d_forward_ref(x.astype(np.float64), lam4.astype(np.float64), rho.astype(np.float64), k, s, p)
    # elsewhere |lam| R (R <= 2) reaches 2e4: exponent rounding moves Y by R * 3 eps |lam| max|x| at most
    tol = 2 * (exp_rounding_slack(dtype, lam, 1.0) + 9 * eps(dtype) + 4e-7) + 32 * eps(dtype)
    assert np.all(np.abs(y - y_r) <= tol)


@pytest.mark.parametrize("lam", [1.0, 100.0])
@pytest.mark.parametrize("geom", GEOS)
def test_every_lam_x_below_minus_104_in_float32(geom, lam):
    """The authors' CUDA kernel shifts by max(0, max lam x): with every lam*x below about -104, every
    exp underflows in float32 and Y = 0/0. Shifting by each window's own max keeps Y the softmax mean."""
    k, s, p = geom
    assert np.exp(np.float32(-104.0)) == 0 and np.exp(np.float32(-200.0)) == 0   # what the unshifted kernel sees
    rng = np.random.default_rng(2)
    x = (-200.0 / lam * 1 + rng.uniform(0, 1, (2, 3, 6, 5)) / lam).astype(np.float32)   # lam x in [-200, -199]
    lam_nc = np.full((2, 3), lam, np.float32)
    y, gx, glam, _ = run_both(x, lam_nc, None, k, s, p)
    y_r = maxent_pool2d_forward_ref(x.astype(np.float64), lam_nc.astype(np.float64), None, k, s, p)
    gx_r, glam_r, _ = maxent_pool2d_backward_ref(x.astype(np.float64), lam_nc.astype(np.float64), None,
                                                 np.ones(y.shape), k, s, p)
    # exponents off by <= 3 eps |lam x| (<= 200), Y by R times that (R <= 1/lam) plus the mean's rounding
    K = k[0] * k[1]
    e = eps(np.float32)
    tol = (exp_rounding_slack(np.float32, lam, np.abs(x).max()) + 4e-7) / lam + 4 * (K + 2) * e * np.abs(x).max()
    assert np.all(np.abs(y - y_r) <= tol), "y (lam x < -104)"
    assert_close(gx, gx_r, rtol=1e-5, atol=1e-5, name="gx (lam x < -104)")
    assert_close(glam, glam_r, rtol=1e-4, atol=0, name="glam (lam x < -104)")


@pytest.mark.parametrize("geom", GEOS)
@pytest.mark.parametrize("base", [1000.0, -1000.0, 3e4])
def test_dlam_keeps_its_precision_for_windows_of_close_large_values_float32(geom, base):
    """Windows like [1000, 1000.03]: E[x^2] - E[x]^2 in float32 cancels every digit (x^2 ~ 1e6 has an
    ulp of 0.06, the variance is ~1e-4). The kernel's dlam must match the float64 reference (on the same
    float32 inputs) to a tolerance derived from float32 rounding."""
    k, s, p = geom
    rng = np.random.default_rng(4)
    x = (base + rng.uniform(0, 0.03, (2, 3, 7, 6))).astype(np.float32)
    Ho, Wo = out_hw(x.shape, k, s, p)
    lam = rng.uniform(0, 1, (2, 3, Ho, Wo)).astype(np.float32)    # GFGP-like lam in (0, 1), per window
    y, saved = maxent_pool2d_forward(x, lam, None, k, s, p)
    glam = maxent_pool2d_backward(np.ones_like(y), saved)[1].astype(np.float64)
    x64, lam64 = x.astype(np.float64), lam.astype(np.float64)
    _, glam_r, _ = maxent_pool2d_backward_ref(x64, lam64, None, np.ones(y.shape), k, s, p)
    geo = (x.shape, k, s, p)
    R = per_window(x, geo, lambda v: v.max(-1) - v.min(-1))
    nonconst = glam_r > 0
    assert nonconst.mean() > 0.9
    # Bound. var = sum W_q d_q^2 with d_q = X_q - Y. A kernel that works with the deviations from a
    # cell of the window (exact in float32 for close values, Sterbenz) gets each d_q to within
    # delta <= 4 eps R and each W_q to within (K + 8) eps relative (products, sums, exp's 2e-7 ~ 2 eps,
    # lam (x - x0) small). d^2 moves by <= 2 |d| delta, and sum W |d| <= sqrt(var) (Cauchy-Schwarz), so
    #     |dvar| / var <= 2 delta / sqrt(var) + (K + 8) eps  = 8 eps R / std + (K + 8) eps.
    e32 = eps(np.float32)
    K = k[0] * k[1]
    rtol = 8 * e32 * R[nonconst] / np.sqrt(glam_r[nonconst]) + (K + 8) * e32
    rel = np.abs(glam[nonconst] / glam_r[nonconst] - 1)
    assert np.all(rel <= rtol), f"dlam relative error up to {rel.max():.3g} (allowed {rtol[rel.argmax()]:.3g})"
    assert np.all(glam[~nonconst] == 0)
    # the case is a real one: the one-pass E[x^2] - E[x]^2 in float32 (here with lam = 0 weights, for
    # simplicity) is off by more than 50% of the variance on some window
    _, var0, _ = maxent_pool2d_backward_ref(x64, 0.0, None, np.ones(y.shape), k, s, p)    # summed: per window below
    mean32 = lambda v: np.mean(v.astype(np.float32), axis=-1, dtype=np.float32).astype(np.float64)
    one_pass = per_window(x, geo, lambda v: mean32(v * v)) - per_window(x, geo, mean32) ** 2
    true_var = per_window(x, geo, lambda v: v.var(axis=-1))
    assert np.isclose(true_var.sum(), var0, rtol=1e-9)
    assert np.max(np.abs(one_pass - true_var)[true_var > 0] / true_var[true_var > 0]) > 0.5


# ---------------------------------------------------------------------------------------------
# The float32 exponential
# ---------------------------------------------------------------------------------------------
@njit
def _exp_array(v, out):
    for i in range(v.size):
        out[i] = mcpu.exp_nonpos_f32(v[i])


def test_exp_nonpos_f32_accuracy():
    """Relative error against float64 exp over [EXP_LO, 0]. Bound: the range reduction's r is exact to
    ~1 ulp of r (Cody-Waite), the degree-7 polynomial truncates at < 7.5e-9 relative and its Horner
    steps round to ~1 ulp, the scaling by 2^n is exact and the final product rounds once: about 3
    float32 ulps = 3 * 2^-24 ~ 1.8e-7 relative; 2e-7 leaves room. Measured: ~1.0e-7 (1.2 ulps)."""
    lo = float(mcpu.EXP_LO)
    assert lo > np.log(np.finfo(np.float32).tiny)                  # exp(EXP_LO) is still a normal float32
    rng = np.random.default_rng(0)
    v = np.concatenate([np.linspace(lo, 0, 600_001, dtype=np.float32), rng.uniform(lo, 0, 400_000).astype(np.float32),
                        -np.abs(rng.standard_normal(20_000)).astype(np.float32) * 1e-3,
                        -np.float32(2.0) ** -np.arange(1, 120, dtype=np.float32), np.float32([lo, 0.0, -0.0])])
    out = np.empty_like(v)
    _exp_array(v, out)
    ref = np.exp(v.astype(np.float64))
    rel = np.abs(out.astype(np.float64) - ref) / ref
    assert rel.max() < 2e-7, f"max relative error {rel.max():.3g} at v = {v[rel.argmax()]!r}"
    assert out[-1] == 1.0 and out[-2] == 1.0
    # below EXP_LO (true value < 1.2e-38) and -inf: exactly 0, never NaN
    tail = np.float32([-np.inf, -1e30, -1000.0, -87.34, np.nextafter(np.float32(lo), np.float32(-np.inf))])
    out_t = np.empty_like(tail)
    _exp_array(tail, out_t)
    assert np.array_equal(out_t, np.zeros_like(tail))
    assert mcpu.exp_nonpos_f32(np.float32(-np.inf)) == 0.0
    # the plain-Python fallback (NUMBA_DISABLE_JIT=1) computes the same float32 numbers
    sample = v[::997]
    py = np.array([mcpu.exp_nonpos_f32.py_func(np.float32(t)) for t in sample], np.float32)
    assert np.array_equal(py, out[::997])


# ---------------------------------------------------------------------------------------------
# Bad inputs
# ---------------------------------------------------------------------------------------------
def test_bad_inputs_name_the_argument():
    F = "maxent_pool2d_forward"
    x = np.zeros((2, 3, 6, 5), np.float32)
    with pytest.raises(ValueError, match=rf"{F}: lam: expected a float or an array of shape \(C,\) = \(3,\).*got shape \(2, 3, 1\)"):
        maxent_pool2d_forward(x, np.ones((2, 3, 1), np.float32))
    with pytest.raises(ValueError, match=rf"{F}: lam: .*\(N, C, Ho, Wo\) = \(2, 3, 3, 2\).*got shape \(2, 3, 3, 3\)"):
        maxent_pool2d_forward(x, np.ones((2, 3, 3, 3), np.float32))
    with pytest.raises(ValueError, match=rf"{F}: lam: .*got shape \(2,\)"):
        maxent_pool2d_forward(x, np.ones(2, np.float32))
    with pytest.raises(TypeError, match=rf"{F}: lam: expected a float or an array .*got str"):
        maxent_pool2d_forward(x, "1.0")
    with pytest.raises(TypeError, match=rf"{F}: lam: expected a float or an array .*got bool"):
        maxent_pool2d_forward(x, True)
    with pytest.raises(TypeError, match=rf"{F}: lam: expected a float or an array .*got list"):
        maxent_pool2d_forward(x, [1.0, 1.0, 1.0])
    with pytest.raises(TypeError, match=rf"{F}: lam: expected dtype float32 .*got float64"):
        maxent_pool2d_forward(x, np.ones(3))
    with pytest.raises(ValueError, match=rf"{F}: lam: expected a finite number, got nan"):
        maxent_pool2d_forward(x, float("nan"))
    with pytest.raises(ValueError, match=rf"{F}: lam: expected a finite number, got -inf"):
        maxent_pool2d_forward(x, -np.inf)
    with pytest.raises(ValueError, match=rf"{F}: lam: expected finite values"):
        maxent_pool2d_forward(x, np.array([1, np.inf, 0], np.float32))
    with pytest.raises(ValueError, match=rf"{F}: rho: expected shape \(C, K\) = \(3, 4\) .*K = kh\*kw = 4 .*got shape \(3, 9\)"):
        maxent_pool2d_forward(x, 1.0, np.zeros((3, 9), np.float32))
    with pytest.raises(ValueError, match=rf"{F}: rho: expected shape .*\(N, C, K\) = \(2, 3, 9\).*got shape \(2, 3, 4\)"):
        maxent_pool2d_forward(x, 1.0, np.zeros((2, 3, 4), np.float32), kernel_size=3, stride=1)
    with pytest.raises(TypeError, match=rf"{F}: rho: expected dtype float32"):
        maxent_pool2d_forward(x, 1.0, np.zeros((3, 4)))
    with pytest.raises(ValueError, match=rf"{F}: rho: expected finite values"):
        maxent_pool2d_forward(x, 1.0, np.full((3, 4), np.nan, np.float32))
    with pytest.raises(ValueError, match=rf"{F}: padding: expected smaller than kernel_size \(2, 2\) .*got \(2, 2\)"):
        maxent_pool2d_forward(x, 1.0, padding=2)
    with pytest.raises(ValueError, match=rf"{F}: padding: expected smaller than kernel_size \(3, 2\) .*got \(1, 2\)"):
        maxent_pool2d_forward(x, 1.0, kernel_size=(3, 2), padding=(1, 2))
    with pytest.raises(ValueError, match=rf"{F}: kernel_size: expected at most the padded input W = 5 \+ 2\*0 = 5, got kernel W size 6"):
        maxent_pool2d_forward(x, 1.0, kernel_size=(2, 6))
    with pytest.raises(ValueError, match=rf"{F}: kernel_size: expected at most the padded input H"):
        maxent_pool2d_forward(np.zeros((1, 1, 1, 5), np.float32), 1.0, kernel_size=3, padding=(0, 1))
    with pytest.raises(ValueError, match=rf"{F}: kernel_size: expected an integer >= 1"):
        maxent_pool2d_forward(x, 1.0, kernel_size=0)
    with pytest.raises(ValueError, match=rf"{F}: stride: expected an integer >= 1"):
        maxent_pool2d_forward(x, 1.0, stride=(1, 0))
    with pytest.raises(ValueError, match=rf"{F}: padding: expected an integer >= 0"):
        maxent_pool2d_forward(x, 1.0, padding=-1)
    with pytest.raises(TypeError, match=rf"{F}: x: expected dtype float32 or float64, got int64"):
        maxent_pool2d_forward(np.zeros((2, 3, 6, 5), np.int64), 1.0)
    with pytest.raises(ValueError, match=rf"{F}: x: expected a 4-D array \(N, C, H, W\), got shape \(3, 6, 5\)"):
        maxent_pool2d_forward(x[0], 1.0)
    with pytest.raises(TypeError, match=rf"{F}: x: expected a numpy or cupy array, got list"):
        maxent_pool2d_forward([[[[1.0]]]], 1.0)

    B = "maxent_pool2d_backward"
    y, saved = maxent_pool2d_forward(x, 1.0)
    with pytest.raises(ValueError, match=rf"{B}: gy: expected shape \(2, 3, 3, 2\) \(the forward output's\), got \(2, 3, 2, 3\)"):
        maxent_pool2d_backward(np.zeros((2, 3, 2, 3), np.float32), saved)
    with pytest.raises(TypeError, match=rf"{B}: gy: expected dtype float32 \(the forward output's\), got float64"):
        maxent_pool2d_backward(y.astype(np.float64), saved)
    with pytest.raises(TypeError, match=rf"{B}: gy: expected dtype float32 or float64, got int32"):
        maxent_pool2d_backward(y.astype(np.int32), saved)
    with pytest.raises(TypeError, match=rf"{B}: saved: expected the MaxEntSaved returned by maxent_pool2d_forward, got tuple"):
        maxent_pool2d_backward(y, (x, 1.0))
    with pytest.raises(TypeError, match=rf"{B}: saved: expected the MaxEntSaved .*got NoneType"):
        maxent_pool2d_backward(y, None)


def test_matches_torch_autograd():
    """Independent check (optional): the same pooling written in PyTorch (unfold + softmax), autograd."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 3, 7, 6))
    for k, s, p in ((2, 2, 0), (3, 2, 1)):
        Ho, Wo = out_hw(x.shape, (k, k), (s, s), (p, p))
        lam = rng.uniform(-2, 2, (2, 3))
        rho = rng.standard_normal((2, 3, k * k))
        y, saved = maxent_pool2d_forward(x, lam, rho, k, s, p)
        gy = rng.standard_normal(y.shape)
        gx, glam, grho = maxent_pool2d_backward(gy, saved)
        tx, tl, tr = (torch.from_numpy(a.copy()).requires_grad_(True) for a in (x, lam, rho))
        cols = torch.nn.functional.unfold(tx, k, padding=p, stride=s).reshape(2, 3, k * k, Ho * Wo)
        valid = torch.nn.functional.unfold(torch.ones(1, 1, 7, 6, dtype=torch.float64), k, padding=p,
                                           stride=s).reshape(1, 1, k * k, Ho * Wo) > 0
        z = (tl[:, :, None, None] * cols + tr[:, :, :, None]).masked_fill(~valid, -float("inf"))
        ty = (torch.softmax(z, dim=2) * cols).sum(2).reshape(2, 3, Ho, Wo)
        ty.backward(torch.from_numpy(gy))
        assert_close(y, ty.detach().numpy(), rtol=1e-12, atol=1e-12, name="y vs torch")
        assert_close(gx, tx.grad.numpy(), rtol=1e-10, atol=1e-12, name="gx vs torch")
        assert_close(glam, tl.grad.numpy(), rtol=1e-10, atol=1e-12, name="glam vs torch")
        assert_close(grho, tr.grad.numpy(), rtol=1e-10, atol=1e-12, name="grho vs torch")
