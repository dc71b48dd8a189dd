"""Local importance pooling (LIP) and instance normalisation: what is specific to them. The shared
checks (public path vs the NumPy reference on every layout and batch size, gpu-sim vs the CPU
kernels, float64 central differences for x and logit, the NUMBA_DISABLE_JIT=1 run) are the
contract suite's, tests/test_ops.py, for the ops ``lip_pool2d`` and ``instance_norm2d``. Here: the
limits (constant logits are average pooling, a dominant logit picks its cell, L = beta x tends to
max pooling), the zero-initialised layer is average pooling, the layer's gradients by central
differences on every device, instance norm's own properties and gradients, and every bad input."""
import numpy as np
import pytest
from helpers import assert_close, distinct_array, require

from minignn import backend
from minignn.gradcheck import check_gradients
from minignn.layers.lip import (InstanceNorm2d, LIPPool2d, instance_norm2d_backward, instance_norm2d_forward,
                                lip_pool2d_backward, lip_pool2d_forward)
from minignn.layers.lip.reference import lip_pool2d_backward_ref, lip_pool2d_forward_ref
from minignn.layers.pooling import avg_pool2d_backward, avg_pool2d_forward, max_pool2d_backward, max_pool2d_forward

#: (kernel, stride, padding): the models' 3x3 s2 p1, 2x2, overlapping and padded generic windows
GEOMS = [(3, 2, 1), (2, 2, 0), ((2, 3), (1, 2), (1, 0)), (3, 1, 1), (1, 1, 0), ((3, 2), 3, (2, 1))]
GEOM_IDS = ["3s2p1", "2x2", "2x3s1x2p1x0", "3s1p1", "1x1", "3x2s3p2x1"]


def on(device, *arrays):
    return [backend.to_device(a, device) for a in arrays]


def host(a):
    return backend.to_numpy(a)


# ---------------------------------------------------------------------------------------------
# The limits
# ---------------------------------------------------------------------------------------------
def test_avg_pool2d_excludes_padding_so_the_relation_is_exact():
    """avg_pool2d divides by the real cells only (count_include_pad=False), as LIP's window holds
    only real cells: so LIP at constant logits must equal avg_pool2d itself, and differ from the
    zero-padded mean at the border (checked here, so that the tests below can tell them apart)."""
    x = np.arange(1.0, 17.0).reshape(1, 1, 4, 4)
    ya = avg_pool2d_forward(x, 3, 2, 1)
    assert ya[0, 0, 0, 0] == pytest.approx((1 + 2 + 5 + 6) / 4)        # 4 real cells of 9
    y, _ = lip_pool2d_forward(x, np.zeros_like(x), 3, 2, 1)
    assert y[0, 0, 0, 0] == pytest.approx((1 + 2 + 5 + 6) / 4)
    assert y[0, 0, 0, 0] != pytest.approx((1 + 2 + 5 + 6) / 9)


@pytest.mark.parametrize("geo", GEOMS, ids=GEOM_IDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_constant_logits_of_any_value_are_average_pooling(device, geo, dtype):
    """y = avg_pool2d(x) and gx = avg_pool2d_backward(gy) (padding excluded in both), and
    glogit = sum gy (x - y) / |R|, for constant logits from -1e4 to 1e4."""
    require(device, "lip_pool2d", "avg_pool2d")
    k, s, p = geo
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 7, 8)).astype(dtype)
    gy = rng.standard_normal(avg_pool2d_forward(x, k, s, p).shape).astype(dtype)
    xd, gyd = on(device, x, gy)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-14)
    for v in (-1e4, -30.0, 0.0, 6.0, 1e4):
        y, saved = lip_pool2d_forward(xd, on(device, np.full(x.shape, v, dtype))[0], k, s, p)
        assert_close(y, avg_pool2d_forward(xd, k, s, p), name=f"y at logit {v}", **tol)
        gx, gl = lip_pool2d_backward(gyd, saved)
        assert_close(gx, avg_pool2d_backward(gyd, x.shape, k, s, p), name=f"gx at logit {v}", **tol)
        assert_close(gl, lip_pool2d_backward_ref(x, np.zeros_like(x), gy, k, s, p)[1], name="glogit", **tol)


@pytest.mark.parametrize("geo", GEOMS, ids=GEOM_IDS)
def test_a_dominant_logit_gives_its_cell_and_beta_x_tends_to_max_pooling(device, geo):
    """L = beta x with distinct x: as beta grows, y -> max_pool2d(x), gx -> max pooling's
    gradient (gy at each window's argmax), glogit -> 0."""
    require(device, "lip_pool2d", "max_pool2d")
    k, s, p = geo
    rng = np.random.default_rng(2)
    x = distinct_array(rng, (2, 3, 7, 8), gap=1e-2)
    ym, arg = max_pool2d_forward(x, k, s, p)
    gy = rng.standard_normal(ym.shape)
    gm = max_pool2d_backward(gy, arg, x.shape, k, s, p)
    errs = []
    for beta in (10.0, 100.0, 1e4):
        y, saved = lip_pool2d_forward(*on(device, x, beta * x), k, s, p)
        errs.append(float(np.abs(host(y) - ym).max()))
        assert np.all(host(y) <= ym + 1e-12)          # a weighted mean never exceeds the window max
    if geo == (1, 1, 0):                              # one-cell windows: y = x for every beta
        assert errs == [0.0, 0.0, 0.0]
    else:
        assert errs[0] > errs[1] > errs[2] and errs[2] < 1e-12, errs
    gx, gl = lip_pool2d_backward(on(device, gy)[0], saved)
    np.testing.assert_allclose(host(gx), gm, atol=1e-12)
    np.testing.assert_allclose(host(gl), 0.0, atol=1e-12)


def test_one_large_logit_picks_its_cell():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 2, 3, 3))
    lg = rng.standard_normal((1, 2, 3, 3))
    lg[0, 0, 2, 1] = 80.0
    lg[0, 1, 0, 0] = 1e30                      # exp of the others' shift underflows to exactly 0
    x[0, 1, 1, 1] = np.inf                     # weight 0: ignored, not 0 * inf
    y, saved = lip_pool2d_forward(x, lg, 3, 1, 0)
    assert y[0, 0, 0, 0] == pytest.approx(x[0, 0, 2, 1], rel=1e-12)
    assert y[0, 1, 0, 0] == x[0, 1, 0, 0]
    gx, gl = lip_pool2d_backward(np.ones_like(y), saved)
    assert gx[0, 1, 0, 0] == 1.0 and np.all(np.delete(gx[0, 1].ravel(), 0) == 0) and np.all(np.isfinite(gl))


def test_infinite_and_nan_logits_follow_the_documented_limits():
    x = np.array([[[[1.0, 2.0], [3.0, 4.0]], [[1.0, 2.0], [3.0, 4.0]], [[1.0, 2.0], [3.0, 4.0]]]])
    lg = np.zeros_like(x)
    lg[0, 0, 0, 1] = lg[0, 0, 1, 1] = np.inf            # two +inf cells share the weight
    lg[0, 1] = -np.inf                                  # all -inf: the average
    lg[0, 2, 1, 0] = np.nan                             # NaN propagates
    y, saved = lip_pool2d_forward(x, lg, 2, 2, 0)
    np.testing.assert_array_equal(y[0, :2, 0, 0], [3.0, 2.5])
    assert np.isnan(y[0, 2, 0, 0])
    gx, _ = lip_pool2d_backward(np.ones_like(y), saved)
    np.testing.assert_array_equal(gx[0, 0], [[0, 0.5], [0, 0.5]])
    np.testing.assert_array_equal(gx[0, 1], np.full((2, 2), 0.25))


def test_the_3x3_fast_path_ignores_a_cell_of_weight_0():
    """In the separable 3x3 / stride 2 / padding 1 path, a cell whose e^{L - M} underflows to 0
    adds nothing to any window it is in (not 0 * inf), in both directions."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1, 1, 3, 3))
    lg = np.zeros_like(x)
    lg[0, 0, 1, 1] = 1000.0                    # in all four windows: none takes the per-window path
    x[0, 0, 0, 0] = np.inf                     # weight e^-1000 = 0
    y, saved = lip_pool2d_forward(x, lg)
    np.testing.assert_array_equal(y[0, 0], np.full((2, 2), x[0, 0, 1, 1]))
    gx, gl = lip_pool2d_backward(np.ones_like(y), saved)
    want = np.zeros((3, 3))
    want[1, 1] = 4.0
    np.testing.assert_array_equal(gx[0, 0], want)
    np.testing.assert_array_equal(gl[0, 0], np.zeros((3, 3)))


@pytest.mark.parametrize("h, w", [(1, 1), (2, 3), (5, 4), (6, 6), (7, 9), (9, 2)])
def test_the_3x3_fast_path_matches_the_reference_at_every_border(h, w):
    rng = np.random.default_rng(h * 10 + w)
    x = rng.standard_normal((2, 3, h, w)).astype(np.float32)
    lg = (3 * rng.standard_normal((2, 3, h, w))).astype(np.float32)
    y, saved = lip_pool2d_forward(x, lg)
    np.testing.assert_allclose(y, lip_pool2d_forward_ref(x, lg), rtol=1e-5, atol=1e-6)
    gy = rng.standard_normal(y.shape).astype(np.float32)
    for got, want in zip(lip_pool2d_backward(gy, saved), lip_pool2d_backward_ref(x, lg, gy)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", ["wide", "nan", "inf"])
def test_the_3x3_fast_path_falls_back_per_window(case):
    """The 3x3 / stride 2 / padding 1 path subtracts the plane's largest logit; a plane whose
    logits are more than ~700 apart (e^{L - M} underflows in some windows), or that holds a NaN or
    an infinite logit, must give what the per-window rule gives (the reference's, and the
    general body's on the same plane padded into a 4x4 window grid)."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((1, 2, 8, 8))
    lg = rng.standard_normal((1, 2, 8, 8))
    if case == "wide":
        lg[0, 0, :4] += 2000.0                         # the lower half's windows underflow against M
    else:
        lg[0, 0, 1, 1] = np.nan if case == "nan" else np.inf
    y, saved = lip_pool2d_forward(x, lg)
    gy = rng.standard_normal(y.shape)
    gx, gl = lip_pool2d_backward(gy, saved)
    if case == "wide":
        np.testing.assert_allclose(y, lip_pool2d_forward_ref(x, lg), rtol=1e-12, atol=1e-12)
        for got, want in zip((gx, gl), lip_pool2d_backward_ref(x, lg, gy)):
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)
        assert np.all(np.isfinite(y))
    bad = np.zeros(y.shape[2:], dtype=bool)
    bad[:1, :1] = case != "wide"                       # the windows holding the non-finite logit
    bad[1, :1] = bad[:1, 1] = bad[1, 1] = case != "wide"
    if case == "nan":
        assert np.isnan(y[0, 0][bad]).all() and np.isfinite(y[0, 0][~bad]).all()
    elif case == "inf":
        assert np.isfinite(y[0, 0]).all() and y[0, 0, 0, 0] == x[0, 0, 1, 1]
    with np.errstate(invalid="ignore"):                # the reference's inf - inf in channel 0
        want = lip_pool2d_forward_ref(x, lg)[0, 1]
    np.testing.assert_allclose(y[0, 1], want, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# The layer
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("geo", [(3, 2, 1), (2, 2, 0), ((2, 3), (1, 2), (1, 0))], ids=["3s2p1", "2x2", "2x3"])
def test_the_zero_initialised_layer_is_average_pooling(device, geo):
    """conv weight and bias 0 -> IN planes constant -> u = beta = 0 -> L = 6: y and gx are
    avg_pool2d's (the conv's input gradient is exactly 0 at zero weights), yet the conv and IN
    parameters get non-zero gradients (the layer can leave the average)."""
    require(device, "lip_pool2d", "avg_pool2d", "conv2d", "instance_norm2d")
    k, s, p = geo
    rng = np.random.default_rng(4)
    layer = LIPPool2d(3, k, s, p)
    assert not np.any(layer.conv.weight.data) and not np.any(layer.conv.bias.data)
    np.testing.assert_array_equal(layer.norm.weight.data, 1.0)
    np.testing.assert_array_equal(layer.norm.bias.data, 0.0)
    layer.to(device=device)
    x = rng.standard_normal((2, 3, 8, 7)).astype(np.float32)
    xd = on(device, x)[0]
    y = layer.forward(xd)
    np.testing.assert_array_equal(host(layer.last_logit), 6.0)
    assert_close(y, avg_pool2d_forward(xd, k, s, p), rtol=1e-6, atol=1e-7, name="y")
    gy = on(device, rng.standard_normal(y.shape).astype(np.float32))[0]
    gx = layer.backward(gy)
    assert_close(gx, avg_pool2d_backward(gy, x.shape, k, s, p), rtol=1e-6, atol=1e-7, name="gx")
    assert float(np.abs(host(layer.conv.weight.grad)).max()) > 1e-3


def _layer_gradcheck(layer, x, device, seed=0, max_checks=25):
    """float64 central differences of sum(y r) for x and every parameter, the layer on
    ``device`` (the checker perturbs the device arrays in place)."""
    m = layer.to(device=device, dtype=np.float64)
    xd = on(device, x)[0]
    rng = np.random.default_rng(seed)
    r = on(device, rng.standard_normal(host(m.forward(xd)).shape))[0]
    m.zero_grad()
    gx = m.backward(r)
    tensors = {"input": xd, **{name: p.data for name, p in m.named_parameters()}}
    analytic = {"input": host(gx), **{name: host(p.grad).copy() for name, p in m.named_parameters()}}
    assert set(tensors) == {"input", "conv.weight", "conv.bias", "norm.weight", "norm.bias"}

    def loss():
        return float(np.sum(host(m.forward(xd)) * host(r)))

    check_gradients(loss, tensors, analytic, max_checks=max_checks, seed=seed)


@pytest.mark.parametrize("geo", [(3, 2, 1), ((2, 3), (1, 2), (1, 0))], ids=["3s2p1", "2x3"])
def test_layer_gradients_by_central_differences(device, geo):
    """x (both paths: pooled values and logits), conv weight and bias, IN gamma and beta, with a
    non-zero conv so that the logit path is exercised."""
    require(device, "lip_pool2d", "conv2d", "instance_norm2d")
    if device == "gpu" and not backend.gpu_available():
        pytest.skip("no usable GPU")
    k, s, p = geo
    rng = np.random.default_rng(5)
    layer = LIPPool2d(3, k, s, p)
    layer.conv.weight.data[...] = 0.4 * rng.standard_normal(layer.conv.weight.shape)
    layer.conv.bias.data[...] = 0.3 * rng.standard_normal(3)
    layer.norm.weight.data[...] = 1 + 0.5 * rng.standard_normal(3)
    layer.norm.bias.data[...] = 0.5 * rng.standard_normal(3)
    x = rng.standard_normal((2, 3, 6, 7))
    _layer_gradcheck(layer, x, device)
    logit = host(layer.last_logit)
    assert logit.shape == x.shape and np.all((logit > 0) & (logit < 12)) and logit.std() > 0.1


def test_layer_train_and_eval_are_identical_and_match_the_composition():
    rng = np.random.default_rng(6)
    layer = LIPPool2d(4, rng=np.random.default_rng(0))
    layer.conv.weight.data[...] = 0.2 * rng.standard_normal(layer.conv.weight.shape)
    x = rng.standard_normal((2, 4, 8, 8)).astype(np.float32)
    gy = rng.standard_normal((2, 4, 4, 4)).astype(np.float32)
    outs = []
    for mode in ("train", "eval"):
        getattr(layer, mode)()
        layer.zero_grad()
        y = layer.forward(x)
        gx = layer.backward(gy)
        outs.append((y, gx, layer.last_logit.copy(), layer.conv.weight.grad.copy(), layer.norm.weight.grad.copy()))
    for a, b in zip(*outs):
        np.testing.assert_array_equal(a, b)
    # the forward is the documented composition
    z = layer.conv.forward(x)
    u, _ = instance_norm2d_forward(z, layer.norm.weight.data, layer.norm.bias.data, 1e-5)
    lg = (12 / (1 + np.exp(-u.astype(np.float64)))).astype(np.float32)
    np.testing.assert_allclose(outs[0][2], lg, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(outs[0][0], lip_pool2d_forward(x, lg)[0], rtol=1e-4, atol=1e-5)
    assert y.shape == (2, 4, 4, 4) and "kernel_size=(3, 3)" in repr(layer)


def test_layer_empty_batch_and_rng():
    layer = LIPPool2d(3)
    y = layer.forward(np.zeros((0, 3, 6, 6), np.float32))
    assert y.shape == (0, 3, 3, 3)
    assert layer.backward(np.zeros((0, 3, 3, 3), np.float32)).shape == (0, 3, 6, 6)
    from minignn.init import manual_seed
    manual_seed(7)
    a = np.random.default_rng(0)
    from minignn import init
    before = init._rng.bit_generator.state
    LIPPool2d(3)
    assert init._rng.bit_generator.state == before      # building the layer draws nothing library-wide
    LIPPool2d(3, rng=a)


# ---------------------------------------------------------------------------------------------
# Instance normalisation
# ---------------------------------------------------------------------------------------------
def test_instance_norm_normalises_each_plane(device):
    require(device, "instance_norm2d")
    rng = np.random.default_rng(8)
    x = rng.standard_normal((3, 4, 5, 6)) * 7 + 100
    gamma, beta = rng.uniform(0.5, 2, 4), rng.standard_normal(4)
    y, _ = instance_norm2d_forward(*on(device, x, gamma, beta))
    y = host(y)
    np.testing.assert_allclose(y.mean(axis=(2, 3)), np.broadcast_to(beta, (3, 4)), atol=1e-12)
    var = x.var(axis=(2, 3))
    np.testing.assert_allclose(y.std(axis=(2, 3)), gamma * np.sqrt(var / (var + 1e-5)), rtol=1e-12)
    y1, _ = instance_norm2d_forward(np.full((2, 3, 1, 1), 5.0))          # one value per plane: 0
    np.testing.assert_array_equal(y1, 0.0)


def test_instance_norm_gradients_by_central_differences(device):
    require(device, "instance_norm2d")
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 3, 4, 5))
    gamma, beta = rng.uniform(0.5, 2, 3), rng.standard_normal(3)
    r = rng.standard_normal(x.shape)
    xd, gd, bd, rd = on(device, x, gamma, beta, r)
    _, saved = instance_norm2d_forward(xd, gd, bd)
    gx, gg, gb = instance_norm2d_backward(rd, saved)
    assert abs(float(host(gx).sum())) < 1e-10      # a plane's gradient sums to 0

    def loss():
        return float(np.sum(host(instance_norm2d_forward(xd, gd, bd)[0]) * r))

    check_gradients(loss, {"x": xd, "gamma": gd, "beta": bd}, {"x": host(gx), "gamma": host(gg), "beta": host(gb)},
                    max_checks=None)
    layer = InstanceNorm2d(3, affine=False)
    assert layer.parameters() == []
    _layer = layer.to(dtype=np.float64)
    y = _layer.forward(x)
    gxl = _layer.backward(r)
    check_gradients(lambda: float(np.sum(_layer.forward(x) * r)), {"x": x}, {"x": gxl}, max_checks=None)
    assert y.shape == x.shape


def test_instance_norm_module():
    rng = np.random.default_rng(10)
    m = InstanceNorm2d(3)
    x = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    y = m.forward(x)
    assert y.dtype == np.float32
    m.backward(np.ones_like(y))
    np.testing.assert_allclose(m.bias.grad, 32.0)
    for mode in ("train", "eval"):
        getattr(m, mode)()
        np.testing.assert_array_equal(m.forward(x), y)
    with pytest.raises(RuntimeError, match="InstanceNorm2d.backward called before forward"):
        InstanceNorm2d(3).backward(y)


# ---------------------------------------------------------------------------------------------
# Bad inputs
# ---------------------------------------------------------------------------------------------
def test_bad_inputs_name_the_argument():
    F, B = "lip_pool2d_forward", "lip_pool2d_backward"
    x = np.ones((2, 3, 6, 5), np.float32)
    with pytest.raises(ValueError, match=rf"{F}: logit: expected x's shape \(2, 3, 6, 5\) .*got \(2, 3, 6, 4\)"):
        lip_pool2d_forward(x, np.ones((2, 3, 6, 4), np.float32))
    with pytest.raises(ValueError, match=rf"{F}: logit: expected a 4-D array"):
        lip_pool2d_forward(x, np.ones((3, 6, 5), np.float32))
    with pytest.raises(TypeError, match=rf"{F}: logit: expected dtype float32 \(x's dtype\), got float64"):
        lip_pool2d_forward(x, np.ones(x.shape))
    with pytest.raises(TypeError, match=rf"{F}: logit: expected a numpy or cupy array, got list"):
        lip_pool2d_forward(x, [1.0])
    with pytest.raises(TypeError, match=rf"{F}: x: expected dtype float32 or float64, got int64"):
        lip_pool2d_forward(np.ones((2, 3, 6, 5), np.int64), x)
    with pytest.raises(ValueError, match=rf"{F}: padding: expected smaller than kernel_size"):
        lip_pool2d_forward(x, x, 2, 2, 2)
    with pytest.raises(ValueError, match=rf"{F}: kernel_size: expected at most the padded input W"):
        lip_pool2d_forward(x, x, (2, 8), 1, 0)
    if not backend.sim_unavailable_reason():
        with pytest.raises(TypeError, match=rf"{F}: logit: expected an array on the same device as x \(gpu-sim\)"):
            lip_pool2d_forward(backend.to_device(x, "gpu-sim"), x)
    y, saved = lip_pool2d_forward(x, x)
    with pytest.raises(ValueError, match=rf"{B}: gy: expected shape \(2, 3, 3, 3\) \(the forward output's\), got \(2, 3, 3, 2\)"):
        lip_pool2d_backward(np.zeros((2, 3, 3, 2), np.float32), saved)
    with pytest.raises(TypeError, match=rf"{B}: gy: expected dtype float32 \(the forward output's\), got float64"):
        lip_pool2d_backward(y.astype(np.float64), saved)
    with pytest.raises(TypeError, match=rf"{B}: saved: expected the LipSaved returned by lip_pool2d_forward, got tuple"):
        lip_pool2d_backward(y, (x, x))

    I = "instance_norm2d_forward"
    with pytest.raises(ValueError, match=rf"{I}: gamma, beta: expected both arrays \(affine\) or both None"):
        instance_norm2d_forward(x, np.ones(3, np.float32))
    with pytest.raises(ValueError, match=rf"{I}: gamma: expected shape \(C,\) = \(3,\), got \(4,\)"):
        instance_norm2d_forward(x, np.ones(4, np.float32), np.zeros(4, np.float32))
    with pytest.raises(TypeError, match=rf"{I}: beta: expected dtype float32 \(x's dtype\), got float64"):
        instance_norm2d_forward(x, np.ones(3, np.float32), np.zeros(3))
    with pytest.raises(ValueError, match=rf"{I}: eps: expected a finite real number > 0, got 0"):
        instance_norm2d_forward(x, eps=0)
    with pytest.raises(ValueError, match=rf"{I}: x: expected H, W >= 1"):
        instance_norm2d_forward(np.ones((1, 3, 0, 4)))
    _, s_in = instance_norm2d_forward(x)
    with pytest.raises(TypeError, match="instance_norm2d_backward: saved: expected the InstanceNormSaved"):
        instance_norm2d_backward(x, saved)
    with pytest.raises(ValueError, match=r"instance_norm2d_backward: gy: expected shape \(2, 3, 6, 5\)"):
        instance_norm2d_backward(y, s_in)


def test_layer_checks_its_input():
    layer = LIPPool2d(3)
    with pytest.raises(ValueError, match=r"LIPPool2d.forward: x: expected 3 channels at axis 1, got 2"):
        layer.forward(np.ones((1, 2, 4, 4), np.float32))
    with pytest.raises(TypeError, match=r"LIPPool2d.forward: x: expected dtype float32 \(the parameters' dtype\)"):
        layer.forward(np.ones((1, 3, 4, 4)))
    with pytest.raises(ValueError, match=r"LIPPool2d.forward: x: expected a 4-D array"):
        layer.forward(np.ones((3, 4, 4), np.float32))
    with pytest.raises(RuntimeError, match=r"LIPPool2d.backward called before forward"):
        LIPPool2d(3).backward(np.ones((1, 3, 2, 2), np.float32))
    y = layer.forward(np.ones((1, 3, 4, 4), np.float32))
    with pytest.raises(ValueError, match=r"LIPPool2d.backward: gy: expected shape \(1, 3, 2, 2\)"):
        layer.backward(np.ones((1, 3, 2, 3), np.float32))
    assert y.shape == (1, 3, 2, 2)
    with pytest.raises(ValueError, match=r"LIPPool2d: channels: expected an integer >= 1"):
        LIPPool2d(0)
    with pytest.raises(ValueError, match=r"LIPPool2d: padding: expected smaller than kernel_size"):
        LIPPool2d(3, 2, padding=2)
    with pytest.raises(ValueError, match=r"InstanceNorm2d: channels: expected an integer >= 1"):
        InstanceNorm2d(0)
    with pytest.raises(ValueError, match=r"InstanceNorm2d.forward: x: expected 3 channels"):
        InstanceNorm2d(3).forward(np.ones((1, 2, 4, 4), np.float32))
