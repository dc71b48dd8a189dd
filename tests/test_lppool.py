"""Power-average (Lp) pooling and the learned-norm layer LPPool2d: what is specific to them. The
shared checks (public path vs the NumPy reference on every layout and batch size, gpu-sim vs the
CPU kernels, float64 central differences for x and every form of p, the NUMBA_DISABLE_JIT=1 run)
are the contract suite's, tests/test_ops.py, for the op ``lp_pool2d``. Here: the two limits
(p = 1 is average pooling, large p tends to max pooling within the bound |R|^(-1/p)), all-zero
windows and zero cells, huge values (the max normalisation), every bad input, and the layer
(theta's gradient by central differences, last_p, p_init)."""
import math
import warnings

import numpy as np
import pytest
from helpers import assert_close, require

from minignn import backend
from minignn.gradcheck import check_gradients, gradcheck
from minignn.layers import LPPool2d, lp_pool2d_backward, lp_pool2d_forward
from minignn.layers.lppool.reference import lp_pool2d_backward_ref, lp_pool2d_forward_ref
from minignn.layers.pooling import avg_pool2d_backward, avg_pool2d_forward, max_pool2d_forward

#: (kernel, stride, padding): the 2x2 fast path, overlapping and padded generic windows
GEOMS = [(2, 2, 0), (3, 2, 1), ((2, 3), (1, 2), (1, 0)), (3, 1, 1), (1, 1, 0), ((3, 2), 3, (2, 1))]
GEOM_IDS = ["2x2", "3s2p1", "2x3s1x2p1x0", "3s1p1", "1x1", "3x2s3p2x1"]


def counts(shape, k, s, p):
    """|R|, the number of real cells of every window, (Ho, Wo): from the definition."""
    k, s, p = (tuple(v) if isinstance(v, tuple) else (v, v) for v in (k, s, p))
    H, W = shape[2:]
    Ho, Wo = (H + 2 * p[0] - k[0]) // s[0] + 1, (W + 2 * p[1] - k[1]) // s[1] + 1
    rows = np.array([min(H, o * s[0] - p[0] + k[0]) - max(0, o * s[0] - p[0]) for o in range(Ho)])
    cols = np.array([min(W, o * s[1] - p[1] + k[1]) - max(0, o * s[1] - p[1]) for o in range(Wo)])
    return rows[:, None] * cols[None, :]


def on(device, *arrays):
    return [backend.to_device(a, device) for a in arrays]


def host(a):
    return backend.to_numpy(a)


# ---------------------------------------------------------------------------------------------
# The limits
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("geo", GEOMS, ids=GEOM_IDS)
def test_p_one_is_average_pooling(device, geo):
    require(device, "lp_pool2d", "avg_pool2d")
    k, s, p = geo
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 3, (2, 3, 7, 8))
    x[0, 1, :4, :4] = 0.0                        # zero cells: their p = 1 gradient is still 1/|R|
    gy = rng.standard_normal(host(avg_pool2d_forward(x, k, s, p)).shape)
    xd, gyd = on(device, x, gy)
    for pv in (1.0, np.ones(3)):
        y, saved = lp_pool2d_forward(xd, on(device, pv)[0] if isinstance(pv, np.ndarray) else pv, k, s, p)
        assert_close(y, avg_pool2d_forward(xd, k, s, p), rtol=1e-13, atol=1e-15, name="y at p = 1")
        gx, gp = lp_pool2d_backward(gyd, saved)
        assert_close(gx, avg_pool2d_backward(gyd, x.shape, k, s, p), rtol=1e-13, atol=1e-15, name="gx at p = 1")
        assert np.all(np.isfinite(host(gp)))


@pytest.mark.parametrize("geo", GEOMS, ids=GEOM_IDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_large_p_tends_to_max_pooling_within_the_bound(device, geo, dtype):
    """max |R|^(-1/p) <= y <= max for every p, so the gap to max pooling shrinks as p grows."""
    require(device, "lp_pool2d", "max_pool2d")
    k, s, p = geo
    rng = np.random.default_rng(2)
    x = rng.uniform(0.1, 2.0, (2, 3, 7, 8)).astype(dtype)
    mx = host(max_pool2d_forward(on(device, x)[0], k, s, p)[0]).astype(np.float64)
    R = counts(x.shape, k, s, p)
    errs = []
    for pv in (8.0, 64.0, 256.0, 4096.0):
        y = host(lp_pool2d_forward(on(device, x)[0], pv, k, s, p)[0]).astype(np.float64)
        assert np.all(y <= mx), f"p = {pv}: y above the window max"
        lower = mx * R ** (-1.0 / pv)
        assert np.all(y >= lower * (1 - 4 * np.finfo(dtype).eps)), f"p = {pv}: y below max |R|^(-1/p)"
        errs.append(float(np.max((mx - y) / mx)))
    if R.max() == 1:                              # one-cell windows: y = x = max for every p
        assert errs == [0.0] * 4, errs
    else:
        assert errs[0] > errs[1] > errs[2] > errs[3], errs
    assert errs[2] <= 1 - float(R.max()) ** (-1 / 256.0) + 1e-7
    # p = 64 and 256 against max pooling itself, to the bound
    for pv in (64.0, 256.0):
        y = host(lp_pool2d_forward(on(device, x)[0], pv, k, s, p)[0])
        np.testing.assert_allclose(y, mx, rtol=1 - float(R.max()) ** (-1 / pv) + 1e-6)


def test_p_between_average_and_max_is_monotone():
    """The power mean grows with p (dy/dp >= 0): y(1) <= y(1.5) <= y(3) <= y(20)."""
    x = np.random.default_rng(3).uniform(0.0, 2.0, (2, 3, 6, 7))
    ys = [lp_pool2d_forward(x, pv, 3, 2, 1)[0] for pv in (1.0, 1.5, 3.0, 20.0)]
    for a, b in zip(ys, ys[1:]):
        assert np.all(a <= b * (1 + 1e-14))
    _, saved = lp_pool2d_forward(x, np.full(3, 2.5), 3, 2, 1)
    _, gp = lp_pool2d_backward(np.ones(saved.y_shape), saved)      # gy >= 0: every term dy/dp >= 0
    assert np.all(gp >= 0)


# ---------------------------------------------------------------------------------------------
# Zeros, all-zero windows, huge values
# ---------------------------------------------------------------------------------------------
def _strict():
    """No RuntimeWarning (warnings as errors) and no silent NumPy floating-point error."""
    ctx = warnings.catch_warnings()
    ctx.__enter__()
    warnings.simplefilter("error")
    es = np.errstate(divide="raise", invalid="raise", over="raise")
    es.__enter__()
    return ctx, es


@pytest.fixture
def strict():
    ctx, es = _strict()
    yield
    es.__exit__(None, None, None)
    ctx.__exit__(None, None, None)


@pytest.mark.parametrize("geo", [(2, 2, 0), (3, 3, 1), ((2, 3), (2, 3), (1, 0))], ids=["2x2", "3s3p1", "2x3p1x0"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_all_zero_windows(device, strict, geo, dtype):
    """Non-overlapping windows, some all-zero: y = 0 there, gx = gy / |R| at their cells, and
    they add nothing to gp (gy is nonzero only at the all-zero windows, so gp is exactly 0)."""
    require(device, "lp_pool2d")
    k, s, p = geo
    rng = np.random.default_rng(4)
    x = rng.uniform(0.5, 2.0, (2, 3, 6, 6)).astype(dtype)
    x[0, 0] = 0.0                                 # a whole plane of zeros
    x[1, 2, :2, :3] = 0.0                         # and a corner (a whole window in every geometry)
    y_host = lp_pool2d_forward_ref(x, 3.0, k, s, p)
    zero = y_host == 0
    assert zero[0, 0].all() and zero[1, 2, 0, 0] and zero.sum() > zero[0, 0].size
    for pv in (3.0, np.array([1.5, 3.0, 6.0], dtype)):
        y, saved = lp_pool2d_forward(*on(device, x), on(device, pv)[0] if isinstance(pv, np.ndarray) else pv, k, s, p)
        y = host(y)
        assert np.all(np.isfinite(y)) and np.all(y[zero] == 0) and np.all(y[~zero] > 0)
        gy = np.where(zero, rng.standard_normal(y.shape), 0.0).astype(dtype)
        gx, gp = lp_pool2d_backward(on(device, gy)[0], saved)
        gx, gp = host(gx), np.asarray(host(gp))
        assert np.all(np.isfinite(gx)) and np.all(gp == 0), gp
        want = gy / counts(x.shape, k, s, p)                       # per window: gy / |R|
        kk = k if isinstance(k, tuple) else (k, k)
        pp = p if isinstance(p, tuple) else (p, p)
        up = np.repeat(np.repeat(want, kk[0], axis=2), kk[1], axis=3)   # stride == kernel: tile it
        up = np.pad(up, ((0, 0), (0, 0), (0, max(0, x.shape[2] + 2 * pp[0] - up.shape[2])),
                         (0, max(0, x.shape[3] + 2 * pp[1] - up.shape[3]))))
        np.testing.assert_allclose(gx, up[:, :, pp[0]:pp[0] + x.shape[2], pp[1]:pp[1] + x.shape[3]], rtol=1e-6)
        # the whole backward, against the reference (gy everywhere)
        gy = rng.standard_normal(y.shape).astype(dtype)
        gx, gp = lp_pool2d_backward(on(device, gy)[0], saved)
        gx_r, gp_r = lp_pool2d_backward_ref(x.astype(np.float64), pv, gy.astype(np.float64), k, s, p)
        assert_close(gx, gx_r, rtol=1e-5, atol=1e-6, name="gx")
        assert_close(np.asarray(host(gp)), gp_r, rtol=1e-5, atol=1e-6, name="gp")


def test_all_zero_input(strict):
    x = np.zeros((2, 3, 5, 4))
    for k, s, p in [(2, 2, 0), (3, 1, 1)]:
        y, saved = lp_pool2d_forward(x, 2.5, k, s, p)
        assert np.all(y == 0)
        gy = np.ones(y.shape)
        gx, gp = lp_pool2d_backward(gy, saved)
        assert gp == 0.0 and isinstance(gp, float)
        assert_close(gx, avg_pool2d_backward(gy, x.shape, k, s, p), rtol=1e-14, name="gx of zeros is avg's")


@pytest.mark.parametrize("geo", [(2, 2, 0), (3, 1, 1)], ids=["2x2", "3s1p1"])
def test_zero_cells_get_no_gradient_for_p_above_one(device, strict, geo):
    require(device, "lp_pool2d")
    k, s, p = geo
    rng = np.random.default_rng(5)
    x = rng.uniform(0.5, 2.0, (1, 2, 6, 6))
    x[0, :, ::2, ::3] = 0.0                      # some zeros in most windows, no all-zero window
    for pv in (1.05, 2.0, 5.0):
        y, saved = lp_pool2d_forward(on(device, x)[0], pv, k, s, p)
        gy = rng.standard_normal(saved.y_shape)
        gx, gp = lp_pool2d_backward(on(device, gy)[0], saved)
        gx = host(gx)
        assert np.all(gx[x == 0] == 0) and np.all(gx[x > 0] != 0)
        gx_r, gp_r = lp_pool2d_backward_ref(x, pv, gy, k, s, p)
        assert_close(gx, gx_r, rtol=1e-11, atol=1e-13, name="gx")
        assert math.isclose(gp, gp_r, rel_tol=1e-11, abs_tol=1e-13)


@pytest.mark.parametrize("geo", [(2, 2, 0), (3, 2, 1)], ids=["2x2", "3s2p1"])
def test_huge_values_float32(device, strict, geo):
    """float32 x near 1e30 and p = 6: x^p (1e180) is far beyond float32 (and sum x^p beyond
    nothing in float64, so the float64 direct formula is the check); the max-normalised kernels
    give the right, finite y and finite gradients."""
    require(device, "lp_pool2d")
    k, s, p = geo
    rng = np.random.default_rng(6)
    x = (rng.uniform(0.5, 2.0, (2, 3, 6, 7)) * 1e30).astype(np.float32)
    x[0, 0, 0, 0] = 3e38                          # near float32's max, too
    y, saved = lp_pool2d_forward(on(device, x)[0], 6.0, k, s, p)
    y = host(y)
    x64 = x.astype(np.float64)
    direct = (avg_pool2d_forward(x64 ** 6, k, s, p)) ** (1 / 6)   # no overflow in float64
    assert y.dtype == np.float32 and np.all(np.isfinite(y))
    np.testing.assert_allclose(y, direct, rtol=1e-6)
    gy = rng.standard_normal(y.shape).astype(np.float32)
    gx, gp = lp_pool2d_backward(on(device, gy)[0], saved)
    gx_r, gp_r = lp_pool2d_backward_ref(x64, 6.0, gy.astype(np.float64), k, s, p)
    assert np.all(np.isfinite(host(gx))) and math.isfinite(gp)
    assert_close(gx, gx_r, rtol=1e-5, atol=1e-6, name="gx")
    assert math.isclose(gp, gp_r, rel_tol=1e-5)       # gp ~ y: about 1e30


def test_huge_values_float64_scale_out():
    """y is homogeneous of degree 1 (y(a x) = a y(x)): also at 1e300 in float64, where x^p overflows."""
    x = np.random.default_rng(7).uniform(0.5, 2.0, (2, 3, 6, 7))
    y1, _ = lp_pool2d_forward(x, 6.0, 3, 2, 1)
    with np.errstate(over="raise"):
        yb, _ = lp_pool2d_forward(x * 1e300, 6.0, 3, 2, 1)
    np.testing.assert_allclose(yb, y1 * 1e300, rtol=1e-14)


def test_nan_propagates_and_inf_is_the_max():
    x = np.ones((1, 1, 4, 4))
    x[0, 0, 0, 0] = np.nan
    x[0, 0, 3, 3] = np.inf
    y, saved = lp_pool2d_forward(x, 3.0)
    assert np.isnan(y[0, 0, 0, 0]) and y[0, 0, 1, 1] == np.inf and np.all(y[0, 0, [0, 1], [1, 0]] == 1.0)
    gx, gp = lp_pool2d_backward(np.ones(y.shape), saved)
    assert np.all(np.isnan(gx[0, 0, :2, :2])) and np.all(np.isnan(gx[0, 0, 2:, 2:])) and math.isnan(gp)
    assert np.all(gx[0, 0, :2, 2:] == 0.25)      # an all-ones window: y = 1, dy/dx = 1/|R|


# ---------------------------------------------------------------------------------------------
# The forms of p and its gradient
# ---------------------------------------------------------------------------------------------
def test_scalar_p_gives_a_float_gradient_and_channel_p_a_c_vector():
    rng = np.random.default_rng(8)
    x = rng.uniform(0.5, 2.0, (2, 3, 5, 6)).astype(np.float32)
    gy = rng.standard_normal((2, 3, 2, 3)).astype(np.float32)
    outs = {}
    for name, pv in (("float", 2.5), ("0-d", np.asarray(2.5, np.float32)), ("0-d f64", np.asarray(2.5)),
                     ("np scalar", np.float32(2.5)), ("C", np.full(3, 2.5, np.float32))):
        y, saved = lp_pool2d_forward(x, pv)
        gx, gp = lp_pool2d_backward(gy, saved)
        assert y.dtype == gx.dtype == np.float32
        if name == "C":
            assert isinstance(gp, np.ndarray) and gp.shape == (3,) and gp.dtype == np.float32
            gp = float(gp.sum())
        else:
            assert isinstance(gp, float), name
        outs[name] = (y, gx, gp)
    for name, (y, gx, gp) in outs.items():
        np.testing.assert_array_equal(y, outs["float"][0])
        np.testing.assert_array_equal(gx, outs["float"][1])
        assert math.isclose(gp, outs["float"][2], rel_tol=1e-6), name


def test_p_gradient_by_central_differences_per_channel():
    """gp (C,) and a scalar p's float, against central differences (the contract suite does it
    too; here on a fixed case with overlapping, padded windows and zero cells)."""
    rng = np.random.default_rng(9)
    x = rng.uniform(0.0, 2.0, (2, 3, 6, 5))
    x[x < 0.3] = 0.0
    r = rng.standard_normal((2, 3, 3, 3))
    for pv in (np.array([1.2, 2.0, 4.5]), np.asarray(1.7)):
        _, saved = lp_pool2d_forward(x, pv, 3, 2, 1)
        _, gp = lp_pool2d_backward(r, saved)

        def loss():
            return float(np.sum(lp_pool2d_forward(x, pv, 3, 2, 1)[0] * r))

        check_gradients(loss, {"p": pv}, {"p": np.asarray(gp)}, max_checks=None)


# ---------------------------------------------------------------------------------------------
# Bad inputs
# ---------------------------------------------------------------------------------------------
def test_bad_inputs_name_the_argument():
    F = "lp_pool2d_forward"
    x = np.ones((2, 3, 6, 5), np.float32)
    neg = x.copy()
    neg[1, 2, 3, 4] = -0.5
    neg[0, 0, 0, 0] = -0.25
    with pytest.raises(ValueError, match=rf"{F}: x: expected every value >= 0 .*got a minimum of -0\.5"):
        lp_pool2d_forward(neg, 2.0)
    with pytest.raises(ValueError, match=rf"{F}: p: expected a finite number >= 1, got 0\.5"):
        lp_pool2d_forward(x, 0.5)
    with pytest.raises(ValueError, match=rf"{F}: p: expected a finite number >= 1, got 0\.999"):
        lp_pool2d_forward(x, np.asarray(0.999))
    with pytest.raises(ValueError, match=rf"{F}: p: expected a finite number >= 1, got nan"):
        lp_pool2d_forward(x, float("nan"))
    with pytest.raises(ValueError, match=rf"{F}: p: expected a finite number >= 1, got inf"):
        lp_pool2d_forward(x, np.inf)
    with pytest.raises(ValueError, match=rf"{F}: p: expected a number representable in x's dtype float32"):
        lp_pool2d_forward(x, 1e39)
    with pytest.raises(ValueError, match=rf"{F}: p: expected every value finite and >= 1, got p\[1\] = 0\.5"):
        lp_pool2d_forward(x, np.array([1, 0.5, 2], np.float32))
    with pytest.raises(ValueError, match=rf"{F}: p: expected every value finite and >= 1, got p\[0\] = nan, p\[2\] = inf"):
        lp_pool2d_forward(x, np.array([np.nan, 2, np.inf], np.float32))
    with pytest.raises(ValueError, match=rf"{F}: p: expected a float or an array of shape \(C,\) = \(3,\), got shape \(2,\)"):
        lp_pool2d_forward(x, np.full(2, 2.0, np.float32))
    with pytest.raises(ValueError, match=rf"{F}: p: expected .*shape \(C,\) = \(3,\), got shape \(1, 3\)"):
        lp_pool2d_forward(x, np.full((1, 3), 2.0, np.float32))
    with pytest.raises(TypeError, match=rf"{F}: p: expected dtype float32 \(x's dtype\), got float64"):
        lp_pool2d_forward(x, np.full(3, 2.0))
    with pytest.raises(TypeError, match=rf"{F}: p: expected a real number, got dtype bool"):
        lp_pool2d_forward(x, np.asarray(True))
    with pytest.raises(TypeError, match=rf"{F}: p: expected a float or an array .*got bool"):
        lp_pool2d_forward(x, True)
    with pytest.raises(TypeError, match=rf"{F}: p: expected a float or an array .*got str"):
        lp_pool2d_forward(x, "2")
    with pytest.raises(TypeError, match=rf"{F}: p: expected a float or an array .*got list"):
        lp_pool2d_forward(x, [2.0, 2.0, 2.0])
    with pytest.raises(ValueError, match=rf"{F}: padding: expected smaller than kernel_size \(2, 2\) .*got \(2, 2\)"):
        lp_pool2d_forward(x, 2.0, padding=2)
    with pytest.raises(ValueError, match=rf"{F}: kernel_size: expected at most the padded input W"):
        lp_pool2d_forward(x, 2.0, kernel_size=(2, 6))
    with pytest.raises(TypeError, match=rf"{F}: x: expected dtype float32 or float64, got int64"):
        lp_pool2d_forward(np.ones((2, 3, 6, 5), np.int64), 2.0)
    with pytest.raises(ValueError, match=rf"{F}: x: expected a 4-D array \(N, C, H, W\), got shape \(3, 6, 5\)"):
        lp_pool2d_forward(x[0], 2.0)

    B = "lp_pool2d_backward"
    y, saved = lp_pool2d_forward(x, 2.0)
    with pytest.raises(ValueError, match=rf"{B}: gy: expected shape \(2, 3, 3, 2\) \(the forward output's\), got \(2, 3, 2, 3\)"):
        lp_pool2d_backward(np.zeros((2, 3, 2, 3), np.float32), saved)
    with pytest.raises(TypeError, match=rf"{B}: gy: expected dtype float32 \(the forward output's\), got float64"):
        lp_pool2d_backward(y.astype(np.float64), saved)
    with pytest.raises(TypeError, match=rf"{B}: saved: expected the LpSaved returned by lp_pool2d_forward, got tuple"):
        lp_pool2d_backward(y, (x, 2.0))


def test_p_and_x_on_different_devices_is_an_error():
    require("gpu-sim", "lp_pool2d")
    if backend.sim_unavailable_reason():
        pytest.skip(f"no gpu-sim: {backend.sim_unavailable_reason()}")
    x = np.ones((1, 2, 4, 4))
    with pytest.raises(TypeError, match=r"lp_pool2d_forward: p: expected an array on the same device as x \(gpu-sim\)"):
        lp_pool2d_forward(backend.to_device(x, "gpu-sim"), np.full(2, 2.0))


# ---------------------------------------------------------------------------------------------
# The layer
# ---------------------------------------------------------------------------------------------
def _sigmoid(t):
    return 1 / (1 + np.exp(-t))


@pytest.mark.parametrize("geo", [(2, None, 0), (3, 2, 1), ((2, 3), (1, 2), (1, 0))], ids=["2x2", "3s2p1", "2x3"])
def test_layer_gradients_by_central_differences(geo):
    """x and theta (one p per channel, spread out) against central differences, in float64 (the
    checker deep-copies the layer and casts it to float64, as for MaxEntPool2d)."""
    k, s, p = geo
    rng = np.random.default_rng(10)
    layer = LPPool2d(4, k, s, p)
    layer.theta.data[...] = np.array([-2.0, 0.0, 1.0, 2.5], np.float32)     # p ~ 1.13, 1.69, 2.31, 3.58
    x = rng.uniform(0.3, 2.0, (3, 4, 6, 7))
    gradcheck(layer, x, max_checks=30, seed=1)
    # theta's gradient alone, with every entry checked, and the chain rule explicitly
    m = layer.to(dtype=np.float64)
    r = rng.standard_normal(m.forward(x).shape)
    m.zero_grad()
    m.backward(r)
    check_gradients(lambda: float(np.sum(m.forward(x) * r)), {"theta": m.theta.data}, {"theta": m.theta.grad.copy()},
                    max_checks=None)
    _, saved = lp_pool2d_forward(x, 1 + np.log1p(np.exp(m.theta.data)), m.kernel_size, m.stride, m.padding)
    _, gp = lp_pool2d_backward(r, saved)
    np.testing.assert_allclose(m.theta.grad, gp * _sigmoid(m.theta.data), rtol=1e-12)


def test_layer_records_last_p_and_respects_p_init():
    x = np.random.default_rng(11).uniform(0, 1, (2, 3, 6, 5)).astype(np.float32)
    for p_init in (1.001, 1.5, 2.0, 6.0, 50.0, 1e4):
        layer = LPPool2d(3, p_init=p_init)
        assert layer.theta.data.dtype == np.float32 and layer.theta.shape == (3,)
        for mode in ("train", "eval"):
            getattr(layer, mode)()
            y = layer.forward(x)
            assert layer.last_p.shape == (3,) and layer.last_p.dtype == np.float32
            np.testing.assert_allclose(layer.last_p, p_init, rtol=2e-6)
            np.testing.assert_array_equal(y, lp_pool2d_forward(x, layer.last_p)[0])
    layer = LPPool2d(3)
    np.testing.assert_allclose(layer.forward(x), lp_pool2d_forward(x, 2.0)[0], rtol=1e-6)   # default p = 2
    layer.theta.data[...] = [-100.0, 0.0, 100.0]        # p = 1 + softplus: 1 (to float32), 1 + log 2, 101
    layer.forward(x)
    np.testing.assert_allclose(layer.last_p, [1.0, 1 + math.log(2), 101.0], rtol=1e-6)
    assert np.all(layer.last_p >= 1)
    y = layer.forward(x)
    gx = layer.backward(np.ones_like(y))
    assert np.all(np.isfinite(gx)) and np.all(np.isfinite(layer.theta.grad))
    assert "p_init=2.0" in repr(layer) and "kernel_size=(2, 2)" in repr(layer)


def test_layer_train_and_eval_are_identical():
    rng = np.random.default_rng(12)
    layer = LPPool2d(3, 3, 2, 1, p_init=3.0)
    x = rng.uniform(0, 2, (2, 3, 7, 7)).astype(np.float32)
    gy = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    outs = []
    for mode in ("train", "eval"):
        getattr(layer, mode)()
        layer.zero_grad()
        y = layer.forward(x)
        gx = layer.backward(gy)
        outs.append((y, gx, layer.theta.grad.copy()))
    for a, b in zip(*outs):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("bad", [1, 1.0, 0.5, -3.0, float("nan"), float("inf"), "2", True, None, 1e300])
def test_bad_p_init_is_rejected(bad):
    with pytest.raises(ValueError, match=r"LPPool2d: p_init: expected a finite number > 1"):
        LPPool2d(3, p_init=bad)


def test_layer_checks_its_input():
    layer = LPPool2d(3)
    with pytest.raises(ValueError, match=r"LPPool2d.forward: x: expected 3 channels at axis 1, got 2"):
        layer.forward(np.ones((1, 2, 4, 4), np.float32))
    with pytest.raises(TypeError, match=r"LPPool2d.forward: x: expected dtype float32 \(the parameters' dtype\)"):
        layer.forward(np.ones((1, 3, 4, 4)))
    with pytest.raises(ValueError, match=r"LPPool2d.forward: x: expected a 4-D array"):
        layer.forward(np.ones((3, 4, 4), np.float32))
    with pytest.raises(ValueError, match=r"lp_pool2d_forward: x: expected every value >= 0"):
        layer.forward(-np.ones((1, 3, 4, 4), np.float32))
    with pytest.raises(RuntimeError, match=r"LPPool2d.backward called before forward"):
        LPPool2d(3).backward(np.ones((1, 3, 2, 2), np.float32))
    with pytest.raises(ValueError, match=r"LPPool2d: channels: expected an integer >= 1"):
        LPPool2d(0)
    with pytest.raises(ValueError, match=r"LPPool2d: padding: expected smaller than kernel_size"):
        LPPool2d(3, 2, padding=2)


def test_layer_on_a_gpu_device_matches_the_cpu(device):
    require(device, "lp_pool2d")
    rng = np.random.default_rng(13)
    x = rng.uniform(0, 2, (2, 3, 7, 6)).astype(np.float32)
    gy = rng.standard_normal((2, 3, 4, 3)).astype(np.float32)
    cpu = LPPool2d(3, 3, 2, 1, p_init=2.5)
    cpu.theta.data[...] = [-1.0, 0.5, 2.0]
    dev = LPPool2d(3, 3, 2, 1, p_init=2.5)
    dev.theta.data[...] = cpu.theta.data
    dev.to(device=device)
    y_c, y_d = cpu.forward(x), dev.forward(backend.to_device(x, device))
    assert backend.device_of(y_d) == device and backend.device_of(dev.last_p) == device
    assert_close(y_d, y_c, rtol=1e-6, atol=1e-7, name="y")
    assert_close(dev.backward(backend.to_device(gy, device)), cpu.backward(gy), rtol=1e-5, atol=1e-6, name="gx")
    assert_close(dev.theta.grad, cpu.theta.grad, rtol=1e-5, atol=1e-6, name="theta.grad")
