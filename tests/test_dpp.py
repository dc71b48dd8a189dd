"""Detail-preserving pooling (DPP) and the layer DPPool2d: what is specific to them. The shared
checks (public path vs the NumPy reference on every layout and batch size, gpu-sim vs the CPU
kernels, float64 central differences for x, gamma and alpha in every form, the
NUMBA_DISABLE_JIT=1 run) are the contract suite's, tests/test_ops.py, for the op ``dpp_pool2d``.
Here: the two limits that make DPP average pooling (gamma -> 0, alpha -> inf), the trailing
cells, the window bounds, sym vs asym, the layer's parameter gradients (theta_l, theta_a, the
GFGP mapping's weights) by central differences on every device, the clip of theta_a, the
GFGPMapping's second head, init, diagnostics, and every bad input."""
import copy

import numpy as np
import pytest
from helpers import assert_close, require

from minignn import backend
from minignn.gradcheck import check_gradients, gradcheck
from minignn.layers.dpp import DPPool2d, dpp_pool2d_backward, dpp_pool2d_forward
from minignn.layers.dpp.reference import dpp_pool2d_backward_ref
from minignn.layers.gfgp import GFGPMapping
from minignn.layers.pooling import avg_pool2d_backward, avg_pool2d_forward, max_pool2d_forward
from minignn.module import Module

KS = [1, 2, 3, 4]
VARIANTS = ["sym", "asym"]


def on(device, *arrays):
    return [backend.to_device(a, device) for a in arrays]


def host(a):
    return backend.to_numpy(a)


def _x(shape=(2, 3, 9, 10), seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


# ---------------------------------------------------------------------------------------------
# The limits: average pooling
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_gamma_to_zero_is_average_pooling(device, k, variant):
    """gamma -> 0: p_q = r_q^gamma -> 1, w_q = 1 + alpha for every cell, y = the window average;
    the gradient of x tends to average pooling's (the emphasis terms carry a factor gamma)."""
    require(device, "dpp_pool2d", "avg_pool2d")
    x = _x()
    gy = np.random.default_rng(1).standard_normal((2, 3, 9 // k, 10 // k))
    xd, gyd = on(device, x, gy)
    ya = host(avg_pool2d_forward(xd, k))
    ga = host(avg_pool2d_backward(gyd, x.shape, k))
    for alpha in (0.0, 0.7, np.full(3, 2.0)):
        alpha = on(device, alpha)[0] if isinstance(alpha, np.ndarray) else alpha
        errs = []
        for gamma in (1e-4, 1e-7, 1e-10):
            y, saved = dpp_pool2d_forward(xd, gamma, alpha, k, variant)
            gx, _, _ = dpp_pool2d_backward(gyd, saved)
            errs.append((np.abs(host(y) - ya).max(), np.abs(host(gx) - ga).max()))
        assert errs[-1][0] < 1e-8 and errs[-1][1] < 1e-7, errs
        if k > 1:                                    # the error shrinks in proportion to gamma
            assert errs[0][0] > 10 * errs[1][0] > 100 * errs[2][0], errs
        else:                                        # one-cell windows: y = x (to rounding) for every gamma
            assert errs[0][0] < 1e-14, errs


@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_alpha_to_infinity_is_average_pooling(device, k, variant):
    require(device, "dpp_pool2d", "avg_pool2d")
    x = _x(seed=2)
    gy = np.random.default_rng(3).standard_normal((2, 3, 9 // k, 10 // k))
    xd, gyd = on(device, x, gy)
    ya = host(avg_pool2d_forward(xd, k))
    ga = host(avg_pool2d_backward(gyd, x.shape, k))
    errs = []
    for alpha in (1e3, 1e6, 1e9):
        y, saved = dpp_pool2d_forward(xd, on(device, np.array([0.3, 1.0, 2.5]))[0], alpha, k, variant)
        gx, ggamma, _ = dpp_pool2d_backward(gyd, saved)
        errs.append((np.abs(host(y) - ya).max(), np.abs(host(gx) - ga).max(), np.abs(host(ggamma)).max()))
    assert max(errs[-1]) < 1e-6, errs                  # (p_q up to n^gamma = 9^2.5: y - avg ~ p / (n alpha))
    if k > 1:                                           # and it shrinks in proportion to 1/alpha
        for e0, e1 in zip(errs, errs[1:]):
            assert all(500 < a / b < 2000 for a, b in zip(e0, e1)), errs


def test_y_is_a_weighted_average_inside_the_window_range():
    """min_R I <= y <= max_R I for every window, every gamma, and y differs from the average
    (towards the cells that differ most) for gamma > 0."""
    x = _x((3, 4, 8, 8), seed=4)
    mx = max_pool2d_forward(x, 2)[0]
    mn = -max_pool2d_forward(-x, 2)[0]
    avg = avg_pool2d_forward(x, 2)
    for variant in VARIANTS:
        for gamma in (0.5, 2.0, 20.0):
            y = dpp_pool2d_forward(x, gamma, 0.0, 2, variant)[0]
            assert np.all(y <= mx + 1e-12) and np.all(y >= mn - 1e-12)
            assert np.abs(y - avg).max() > 0.05
    # large gamma, alpha = 0, sym: the cell farthest from the average dominates its window (where
    # it is clearly the farthest: r_1 / r_2 > 1.1 makes the others' share below 1.1^-300 ~ 4e-13)
    y = dpp_pool2d_forward(x, 300.0, 0.0, 2, "sym")[0]
    w = x.reshape(3, 4, 4, 2, 4, 2).transpose(0, 1, 2, 4, 3, 5).reshape(3, 4, 4, 4, 4)
    v = np.sort((w - w.mean(-1, keepdims=True)) ** 2 + 1e-3, axis=-1)
    clear = v[..., -1] > 1.1 * v[..., -2]
    far = np.take_along_axis(w, np.abs(w - w.mean(-1, keepdims=True)).argmax(-1)[..., None], -1)[..., 0]
    assert clear.sum() > 20
    np.testing.assert_allclose(y[clear], far[clear], rtol=1e-9, atol=1e-9)


def test_asym_differs_from_sym_and_favours_cells_above_the_average():
    """asym weights only the cells above the window average (ReLU(d)), sym both sides: on a window
    with one low outlier, sym is pulled down and asym is not."""
    x = np.array([[[[1.0, 1.1], [0.9, -3.0]]]])
    ys = dpp_pool2d_forward(x, 2.0, 0.1, 2, "sym")[0][0, 0, 0, 0]
    ya = dpp_pool2d_forward(x, 2.0, 0.1, 2, "asym")[0][0, 0, 0, 0]
    avg = x.mean()
    assert ys < avg - 0.5 and ya > avg + 0.5, (ys, ya, avg)
    big = _x((2, 3, 8, 6), seed=5)
    for k in (2, 3):
        y_s, s_s = dpp_pool2d_forward(big, 1.3, 0.2, k, "sym")
        y_a, s_a = dpp_pool2d_forward(big, 1.3, 0.2, k, "asym")
        assert np.abs(y_s - y_a).min() > 0 and np.abs(y_s - y_a).mean() > 0.05
        gy = np.ones_like(y_s)
        assert np.abs(dpp_pool2d_backward(gy, s_s)[0] - dpp_pool2d_backward(gy, s_a)[0]).max() > 0.05


@pytest.mark.parametrize("k", [2, 3, 4])
def test_trailing_rows_and_columns_get_zero_gradient(device, k):
    """H, W that are not multiples of k: the cells in no window get exactly 0 (gx is written
    whole by the kernels, with no memset: a stale value would show here), the rest match the
    reference; x's trailing cells do not change y."""
    require(device, "dpp_pool2d")
    x = _x((2, 3, 2 * k + k - 1, 3 * k + 1), seed=6)
    gy = np.random.default_rng(7).standard_normal((2, 3, 2, 3))
    for variant in VARIANTS:
        y, saved = dpp_pool2d_forward(*on(device, x), 0.8, *on(device, np.full(3, 0.4)), k, variant)
        gx = host(dpp_pool2d_backward(on(device, gy)[0], saved)[0])
        assert np.all(gx[:, :, 2 * k:, :] == 0) and np.all(gx[:, :, :, 3 * k:] == 0)
        assert np.all(gx[:, :, :2 * k, :3 * k] != 0)
        assert_close(gx, dpp_pool2d_backward_ref(x, 0.8, np.full(3, 0.4), gy, k, variant)[0], rtol=1e-10,
                     atol=1e-12, name="gx")
        x2 = x.copy()
        x2[:, :, 2 * k:, :] = 1e3
        x2[:, :, :, 3 * k:] = -1e3
        assert_close(dpp_pool2d_forward(*on(device, x2), 0.8, *on(device, np.full(3, 0.4)), k, variant)[0], y,
                     rtol=0, atol=0, name="y without the trailing cells")


# ---------------------------------------------------------------------------------------------
# The forms of gamma and alpha and their gradients
# ---------------------------------------------------------------------------------------------
def test_parameter_forms_agree_and_their_gradients_sum():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 3, 6, 5)).astype(np.float32)
    gy = rng.standard_normal((2, 3, 3, 2)).astype(np.float32)
    forms = {"float": 1.25, "0-d": np.asarray(1.25, np.float32), "np scalar": np.float32(1.25),
             "C": np.full(3, 1.25, np.float32), "NC": np.full((2, 3), 1.25, np.float32)}
    base = None
    for gname, g in forms.items():
        for aname, a in forms.items():
            y, saved = dpp_pool2d_forward(x, g, a * 0.4 if not isinstance(a, float) else 0.5, 2, "asym")
            gx, gg, ga = dpp_pool2d_backward(gy, saved)
            assert y.dtype == gx.dtype == np.float32
            for name, grad in ((gname, gg), (aname, ga)):
                if name in ("float", "0-d", "np scalar"):
                    assert isinstance(grad, float), name
                else:
                    assert isinstance(grad, np.ndarray) and grad.dtype == np.float32
                    assert grad.shape == ((3,) if name == "C" else (2, 3)), name
            total = (float(np.sum(gg)), float(np.sum(ga)))
            if base is None:
                base = (y, gx, total)
            np.testing.assert_array_equal(y, base[0])
            np.testing.assert_array_equal(gx, base[1])
            np.testing.assert_allclose(total, base[2], rtol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS)
def test_parameter_gradients_by_central_differences_fixed_case(variant):
    """Every entry of an (N, C) gamma and a (C,) alpha, k = 3 with trailing cells (the contract
    suite samples these too; here every entry)."""
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 3, 7, 8))
    gamma = rng.uniform(0.2, 2.5, (2, 3))
    alpha = rng.uniform(0.1, 2.0, 3)
    r = rng.standard_normal((2, 3, 2, 2))
    _, saved = dpp_pool2d_forward(x, gamma, alpha, 3, variant)
    gx, gg, ga = dpp_pool2d_backward(r, saved)

    def loss():
        return float(np.sum(dpp_pool2d_forward(x, gamma, alpha, 3, variant)[0] * r))

    check_gradients(loss, {"x": x, "gamma": gamma, "alpha": alpha}, {"x": gx, "gamma": gg, "alpha": ga},
                    max_checks=None)


# ---------------------------------------------------------------------------------------------
# Bad inputs
# ---------------------------------------------------------------------------------------------
def test_bad_inputs_name_the_argument():
    F = "dpp_pool2d_forward"
    x = np.ones((2, 3, 6, 5), np.float32)
    g3 = np.ones(3, np.float32)
    with pytest.raises(TypeError, match=rf"{F}: x: expected dtype float32 or float64, got int64"):
        dpp_pool2d_forward(np.ones((2, 3, 6, 5), np.int64), 1.0, 1.0)
    with pytest.raises(ValueError, match=rf"{F}: x: expected a 4-D array \(N, C, H, W\), got shape \(3, 6, 5\)"):
        dpp_pool2d_forward(x[0], 1.0, 1.0)
    with pytest.raises(TypeError, match=rf"{F}: x: expected a numpy or cupy array, got list"):
        dpp_pool2d_forward([[1.0]], 1.0, 1.0)
    for bad in (-0.5, 0.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match=rf"{F}: gamma: expected a number finite and > 0, got {bad!r}"):
            dpp_pool2d_forward(x, bad, 1.0)
    with pytest.raises(ValueError, match=rf"{F}: gamma: expected a number finite and > 0 in x's dtype float32,"
                                         rf" got 1e-50 \(which is 0.0 in float32\)"):
        dpp_pool2d_forward(x, 1e-50, 1.0)
    with pytest.raises(ValueError, match=rf"{F}: alpha: expected a number finite and >= 0 in x's dtype float32"):
        dpp_pool2d_forward(x, 1.0, 1e39)
    with pytest.raises(ValueError, match=rf"{F}: alpha: expected a number finite and >= 0, got -1e-09"):
        dpp_pool2d_forward(x, 1.0, -1e-9)
    with pytest.raises(ValueError, match=rf"{F}: gamma: expected every value finite and > 0, got gamma\[1\] = -1.0"):
        dpp_pool2d_forward(x, np.array([1, -1, 2], np.float32), 1.0)
    with pytest.raises(ValueError, match=rf"{F}: alpha: expected every value finite and >= 0, got alpha\[0, 2\] = nan,"
                                         rf" alpha\[1, 0\] = -2.0"):
        dpp_pool2d_forward(x, 1.0, np.array([[1, 1, np.nan], [-2, 0, 0]], np.float32))
    with pytest.raises(ValueError, match=rf"{F}: gamma: expected a float or an array of shape \(C,\) = \(3,\) or"
                                         rf" \(N, C\) = \(2, 3\), got shape \(2,\)"):
        dpp_pool2d_forward(x, np.ones(2, np.float32), 1.0)
    with pytest.raises(ValueError, match=rf"{F}: alpha: expected .* got shape \(3, 2\)"):
        dpp_pool2d_forward(x, 1.0, np.ones((3, 2), np.float32))
    with pytest.raises(ValueError, match=rf"{F}: alpha: expected .* got shape \(1, 3, 1, 1\)"):
        dpp_pool2d_forward(x, 1.0, np.ones((1, 3, 1, 1), np.float32))
    with pytest.raises(TypeError, match=rf"{F}: gamma: expected dtype float32 \(x's dtype\), got float64"):
        dpp_pool2d_forward(x, np.ones(3), 1.0)
    with pytest.raises(TypeError, match=rf"{F}: alpha: expected dtype float32 \(x's dtype\), got int64"):
        dpp_pool2d_forward(x, g3, np.ones((2, 3), np.int64))
    with pytest.raises(TypeError, match=rf"{F}: gamma: expected a real number, got dtype bool"):
        dpp_pool2d_forward(x, np.asarray(True), 1.0)
    for bad, tname in ((True, "bool"), ("1", "str"), ([1.0, 1.0, 1.0], "list"), (None, "NoneType")):
        with pytest.raises(TypeError, match=rf"{F}: alpha: expected a float or an array .*got {tname}"):
            dpp_pool2d_forward(x, 1.0, bad)
    with pytest.raises(ValueError, match=rf"{F}: variant: expected one of \['sym', 'asym'\], got 'full'"):
        dpp_pool2d_forward(x, 1.0, 1.0, variant="full")
    with pytest.raises(ValueError, match=rf"{F}: variant: expected one of .*got None"):
        dpp_pool2d_forward(x, 1.0, 1.0, variant=None)
    for bad in (0, -2, 2.0, (2, 2), True, "2", None):
        with pytest.raises(ValueError, match=rf"{F}: kernel_size: expected an integer >= 1, got {bad!r}"
                           .replace("(", r"\(").replace(")", r"\)")):
            dpp_pool2d_forward(x, 1.0, 1.0, kernel_size=bad)
    with pytest.raises(ValueError, match=rf"{F}: kernel_size: expected at most the padded input W = 5"):
        dpp_pool2d_forward(x, 1.0, 1.0, kernel_size=6)

    B = "dpp_pool2d_backward"
    y, saved = dpp_pool2d_forward(x, 1.0, 1.0)
    with pytest.raises(ValueError, match=rf"{B}: gy: expected shape \(2, 3, 3, 2\) \(the forward output's\),"
                                         rf" got \(2, 3, 2, 3\)"):
        dpp_pool2d_backward(np.zeros((2, 3, 2, 3), np.float32), saved)
    with pytest.raises(TypeError, match=rf"{B}: gy: expected dtype float32 \(the forward output's\), got float64"):
        dpp_pool2d_backward(y.astype(np.float64), saved)
    with pytest.raises(TypeError, match=rf"{B}: gy: expected an array, got list"):
        dpp_pool2d_backward([0.0], saved)
    with pytest.raises(TypeError, match=rf"{B}: saved: expected the DppSaved returned by dpp_pool2d_forward,"
                                        rf" got tuple"):
        dpp_pool2d_backward(y, (x, 1.0, 1.0))
    with pytest.raises(TypeError, match=rf"{B}: saved: expected the DppSaved .*got dict"):
        dpp_pool2d_backward(y, {})


def test_parameters_on_another_device_than_x_are_an_error():
    require("gpu-sim", "dpp_pool2d")
    if backend.sim_unavailable_reason():
        pytest.skip(f"no gpu-sim: {backend.sim_unavailable_reason()}")
    x = np.ones((1, 2, 4, 4))
    with pytest.raises(TypeError, match=r"dpp_pool2d_forward: gamma: expected an array on the same device as x"
                                        r" \(gpu-sim\), got one on cpu"):
        dpp_pool2d_forward(backend.to_device(x, "gpu-sim"), np.ones(2), 1.0)
    y, saved = dpp_pool2d_forward(backend.to_device(x, "gpu-sim"), 1.0, 1.0)
    with pytest.raises(TypeError, match=r"dpp_pool2d_backward: gy: expected an array on the same device"):
        dpp_pool2d_backward(np.ones((1, 2, 2, 2)), saved)


# ---------------------------------------------------------------------------------------------
# The layer
# ---------------------------------------------------------------------------------------------
def _layer_gradcheck(layer, x, device, max_checks=30, seed=0):
    """Central differences in float64 on ``device`` for x and every parameter of the layer
    (``minignn.gradcheck.gradcheck`` works on the host; this is the same check on any device)."""
    m = copy.deepcopy(layer).to(device=device, dtype=np.float64)
    xd = backend.to_device(np.asarray(x, np.float64).copy(), device)
    y = m.forward(xd)
    r = backend.to_device(np.random.default_rng(seed).standard_normal(y.shape), device)
    m.zero_grad()
    gx = m.backward(r)
    tensors = {"input": xd, **{name: p.data for name, p in m.named_parameters()}}
    analytic = {"input": gx, **{name: p.grad.copy() for name, p in m.named_parameters()}}

    def loss():
        return float(host((m.forward(xd) * r).sum()))

    check_gradients(loss, tensors, analytic, max_checks=max_checks, seed=seed)
    return m


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("variant", VARIANTS)
def test_channel_layer_gradients_by_central_differences(device, k, variant):
    require(device, "dpp_pool2d")
    layer = DPPool2d(4, k, variant, rng=np.random.default_rng(0))
    layer.theta_l.data[...] = [-1.0, 0.0, 0.5, 1.2]            # gamma ~ 0.18, 0.5, 0.82, 1.66
    layer.theta_a.data[...] = [-2.0, 0.0, 1.0, 2.0]            # alpha ~ 0.14, 1, 2.7, 7.4
    x = _x((3, 4, 7, 8), seed=10)
    m = _layer_gradcheck(layer, x, device)
    # theta's gradients by the chain rule, from the functional's
    xd = backend.to_device(x, device)
    gamma, alpha = np.exp(host(m.theta_l.data)) / 2, np.exp(host(m.theta_a.data))
    y, saved = dpp_pool2d_forward(xd, *on(device, gamma, alpha), k, variant)
    r = backend.to_device(np.random.default_rng(1).standard_normal(y.shape), device)
    m.zero_grad()
    m.forward(xd)
    m.backward(r)
    _, gg, ga = dpp_pool2d_backward(r, saved)
    assert_close(m.theta_l.grad, host(gg) * gamma, rtol=1e-12, atol=1e-14, name="theta_l.grad")
    assert_close(m.theta_a.grad, host(ga) * alpha, rtol=1e-12, atol=1e-14, name="theta_a.grad")


@pytest.mark.parametrize("stat, mlp, bias", [("avg", "mlp", False), ("avg+std", "mlp", True), ("max", "slp", False)])
def test_gfgp_layer_gradients_by_central_differences(device, stat, mlp, bias):
    """x (through the pooling and through the global statistic t) and every weight of the GFGP
    mapping, against central differences, float64."""
    require(device, "dpp_pool2d", "gfgp_stats")
    layer = DPPool2d(4, 2, "sym", params="gfgp", stat=stat, mlp=mlp, bias=bias, rng=np.random.default_rng(2))
    rng = np.random.default_rng(3)
    for p in layer.parameters():                           # spread the outputs: gamma and alpha vary
        p.data[...] = rng.standard_normal(p.shape) * 0.7
    x = np.random.default_rng(4).permutation(np.linspace(-2, 2, 2 * 4 * 6 * 7)).reshape(2, 4, 6, 7)  # no ties: max
    m = _layer_gradcheck(layer, x, device, max_checks=20)
    names = {n for n, _ in m.named_parameters()}
    assert {"mapping.V_lam"} <= names and (("mapping.U" in names) == (mlp == "mlp"))
    assert m.mapping.V_lam.shape[0] == 8                    # 2C rows: theta_l's head, then theta_a's
    assert m.last_gamma.shape == m.last_alpha.shape == (2, 4)


def test_theta_a_above_the_clip_gets_zero_gradient(device):
    """alpha = exp(min(theta_a, 10)): above 10 alpha is e^10 and theta_a's gradient is 0 (at and
    below 10 it is galpha alpha, nonzero)."""
    require(device, "dpp_pool2d")
    layer = DPPool2d(4, rng=np.random.default_rng(5)).to(device=device, dtype=np.float64)
    layer.theta_a.data[...] = backend.to_device(np.array([10.5, 25.0, 9.5, 10.0]), device)
    x = backend.to_device(_x((2, 4, 6, 6), seed=11), device)
    y = layer.forward(x)
    np.testing.assert_allclose(host(layer.last_alpha), np.exp([10.0, 10.0, 9.5, 10.0]), rtol=1e-14)
    layer.backward(backend.to_device(np.random.default_rng(6).standard_normal(y.shape), device))
    ga = host(layer.theta_a.grad)
    assert ga[0] == 0 and ga[1] == 0 and ga[2] != 0 and ga[3] != 0, ga
    assert np.all(host(layer.theta_l.grad) != 0)
    # the same clip in the GFGP head: a huge z_a gives zero gradient to theta_a's head
    g = DPPool2d(3, params="gfgp", mlp="slp", bias=True, rng=np.random.default_rng(7)).to(dtype=np.float64)
    g.mapping.V_lam_bias.data[3:] = [50.0, 0.0, 50.0]
    y = g.forward(_x((2, 3, 4, 4), seed=12))
    g.backward(np.ones_like(y))
    gb = g.mapping.V_lam_bias.grad
    assert gb[3] == 0 and gb[5] == 0 and gb[4] != 0 and np.all(gb[:3] != 0), gb
    np.testing.assert_allclose(g.last_alpha[:, [0, 2]], np.exp(10.0), rtol=1e-14)


def test_layer_init_diagnostics_and_modes():
    """The authors' init (theta uniform in [0, 1) per channel), seeded; constants when given;
    last_gamma, last_alpha; train and eval identical."""
    a = DPPool2d(64, rng=np.random.default_rng(0))
    b = DPPool2d(64, rng=np.random.default_rng(0))
    for p in ("theta_l", "theta_a"):
        v = getattr(a, p).data
        assert v.dtype == np.float32 and v.shape == (64,) and np.all((v >= 0) & (v < 1)) and v.std() > 0.1
        np.testing.assert_array_equal(v, getattr(b, p).data)
    assert not np.array_equal(a.theta_l.data, a.theta_a.data)
    layer = DPPool2d(3, 2, "asym", theta_l_init=np.log(2.0), theta_a_init=-1.0)
    np.testing.assert_array_equal(layer.theta_l.data, np.float32(np.log(2.0)))
    rng = np.random.default_rng(13)
    x = rng.standard_normal((2, 3, 7, 6)).astype(np.float32)
    gy = rng.standard_normal((2, 3, 3, 3)).astype(np.float32)
    outs = []
    for mode in ("train", "eval"):
        getattr(layer, mode)()
        layer.zero_grad()
        y = layer.forward(x)
        assert layer.last_gamma.shape == layer.last_alpha.shape == (3,) and layer.last_gamma.dtype == np.float32
        np.testing.assert_allclose(layer.last_gamma, 1.0, rtol=1e-6)          # exp(log 2) / 2
        np.testing.assert_allclose(layer.last_alpha, np.exp(-1.0), rtol=1e-6)
        np.testing.assert_array_equal(y, dpp_pool2d_forward(x, layer.last_gamma, layer.last_alpha, 2, "asym")[0])
        gx = layer.backward(gy)
        outs.append((y, gx, layer.theta_l.grad.copy(), layer.theta_a.grad.copy()))
    for u, v in zip(*outs):
        np.testing.assert_array_equal(u, v)
    g = DPPool2d(8, params="gfgp", rng=np.random.default_rng(1))
    assert {n: p.shape for n, p in g.named_parameters()} == {"mapping.U": (4, 8), "mapping.V_lam": (16, 4)}
    assert "params='gfgp'" in repr(g) and "heads=2" in repr(g) and "variant='asym'" in repr(layer)
    # very negative theta_l: gamma is floored at the smallest normal float32 (average pooling), no error
    layer.theta_l.data[...] = -200.0
    y = layer.forward(x)
    np.testing.assert_allclose(y, avg_pool2d_forward(x, 2), rtol=1e-5, atol=1e-6)
    layer.backward(gy)
    assert np.all(np.isfinite(layer.theta_l.grad))


def test_layer_on_a_gpu_device_matches_the_cpu(device):
    require(device, "dpp_pool2d", "gfgp_stats")
    rng = np.random.default_rng(14)
    x = rng.standard_normal((2, 4, 7, 6)).astype(np.float32)
    gy = rng.standard_normal((2, 4, 3, 3)).astype(np.float32)
    for params in ("channel", "gfgp"):
        cpu = DPPool2d(4, params=params, rng=np.random.default_rng(3))
        dev = copy.deepcopy(cpu).to(device=device)
        y_c, y_d = cpu.forward(x), dev.forward(backend.to_device(x, device))
        assert backend.device_of(y_d) == device and backend.device_of(dev.last_gamma) == device
        assert_close(y_d, y_c, rtol=1e-5, atol=1e-6, name="y")
        assert_close(dev.backward(backend.to_device(gy, device)), cpu.backward(gy), rtol=1e-5, atol=1e-6, name="gx")
        for (name, p), q in zip(cpu.named_parameters(), dev.parameters()):
            assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-5, name=f"{name}.grad")


def test_layer_checks_its_input_and_arguments():
    layer = DPPool2d(3)
    with pytest.raises(RuntimeError, match=r"DPPool2d.backward called before forward"):
        layer.backward(np.ones((1, 3, 2, 2), np.float32))
    with pytest.raises(RuntimeError, match=r"DPPool2d.backward called before forward"):
        DPPool2d(3, params="gfgp").backward(np.ones((1, 3, 2, 2), np.float32))
    with pytest.raises(ValueError, match=r"DPPool2d.forward: x: expected 3 channels at axis 1, got 2"):
        layer.forward(np.ones((1, 2, 4, 4), np.float32))
    with pytest.raises(TypeError, match=r"DPPool2d.forward: x: expected dtype float32 \(the parameters' dtype\)"):
        layer.forward(np.ones((1, 3, 4, 4)))
    with pytest.raises(ValueError, match=r"DPPool2d.forward: x: expected a 4-D array"):
        layer.forward(np.ones((3, 4, 4), np.float32))
    with pytest.raises(ValueError, match=r"dpp_pool2d_forward: kernel_size: expected at most the padded input H = 1"):
        layer.forward(np.ones((1, 3, 1, 4), np.float32))
    y = layer.forward(np.random.default_rng(0).standard_normal((1, 3, 4, 4)).astype(np.float32))
    with pytest.raises(ValueError, match=r"DPPool2d.backward: gy: expected shape \(1, 3, 2, 2\)"):
        layer.backward(np.ones((1, 3, 2, 3), np.float32))
    with pytest.raises(TypeError, match=r"DPPool2d.backward: gy: expected dtype float32"):
        layer.backward(y.astype(np.float64))
    layer.theta_l.data[...] = 100.0                              # exp(100) is inf in float32
    with pytest.raises(ValueError, match=r"DPPool2d.forward: theta_l: expected values with a finite gamma"):
        layer.forward(np.ones((1, 3, 4, 4), np.float32))
    for kwargs, pattern in (
            (dict(channels=0), r"DPPool2d: channels: expected an integer >= 1, got 0"),
            (dict(kernel_size=(2, 2)), r"DPPool2d: kernel_size: expected an integer >= 1, got \(2, 2\)"),
            (dict(kernel_size=0), r"DPPool2d: kernel_size: expected an integer >= 1, got 0"),
            (dict(variant="full"), r"DPPool2d: variant: expected one of \['sym', 'asym'\], got 'full'"),
            (dict(params="layer"), r"DPPool2d: params: expected one of \['channel', 'gfgp'\], got 'layer'"),
            (dict(stat="min"), r"DPPool2d: stat: expected one of"),
            (dict(mlp="deep"), r"DPPool2d: mlp: expected one of"),
            (dict(theta_l_init=float("nan")), r"DPPool2d: theta_l_init: expected a finite real number"),
            (dict(theta_a_init=1e39), r"DPPool2d: theta_a_init: expected a finite real number that fits float32"),
            (dict(params="gfgp", hidden=0), r"GFGPMapping: hidden: expected a positive number")):
        kwargs = {"channels": 3, **kwargs}
        with pytest.raises(ValueError, match=pattern):
            DPPool2d(**kwargs)
    with pytest.raises(TypeError, match=r"DPPool2d: theta_a_init: expected a finite real number, got '1'"):
        DPPool2d(3, theta_a_init="1")
    with pytest.raises(TypeError, match=r"DPPool2d: rng: expected a numpy.random.Generator or None, got int"):
        DPPool2d(3, rng=0)


# ---------------------------------------------------------------------------------------------
# GFGPMapping's second head (heads=2)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mlp, bias, batchnorm", [("mlp", False, False), ("mlp", True, True), ("slp", True, False)])
def test_gfgp_mapping_heads_gradients_and_default(mlp, bias, batchnorm):
    """heads=2: lam (N, 2C) from one shared hidden layer, V_lam (2C, D); its gradients (t and every
    weight) by central differences, float64; heads=1 (the default) is unchanged, the same weights
    from the same seed, and heads=2's first C rows of V_lam are drawn as heads=1's would be."""
    rng = np.random.default_rng(15)
    m = GFGPMapping(5, hidden=0.6, mlp=mlp, activation="identity", bias=bias, batchnorm=batchnorm,
                    rng=np.random.default_rng(0), heads=2)
    assert m.V_lam.shape == (10, 3 if mlp == "mlp" else 5) and m.heads == 2 and "heads=2" in repr(m)
    t = rng.standard_normal((4, 5))
    lam, rho = m.to(dtype=np.float64).forward(t)
    assert lam.shape == (4, 10) and rho is None
    gradcheck(_Lam(m), t, max_checks=None, seed=1)
    one = GFGPMapping(5, hidden=0.6, mlp=mlp, bias=bias, rng=np.random.default_rng(0))
    assert one.heads == 1 and one.V_lam.shape == (5, 3 if mlp == "mlp" else 5) and "heads" not in repr(one)
    two = GFGPMapping(5, hidden=0.6, mlp=mlp, bias=bias, heads=2, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(two.V_lam.data[:5], one.V_lam.data)
    if mlp == "mlp":
        np.testing.assert_array_equal(two.U.data, one.U.data)
    with pytest.raises(ValueError, match=r"GFGPMapping: heads: expected an integer >= 1, got 0"):
        GFGPMapping(5, heads=0)


class _Lam(Module):
    """The mapping's lam alone as a module (t -> lam, glam -> gt), for gradcheck."""

    def __init__(self, mapping):
        super().__init__()
        self.mapping = mapping

    def forward(self, t):
        return self.mapping.forward(t)[0]

    def backward(self, g):
        return self.mapping.backward(g)
