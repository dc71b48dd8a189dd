"""SoftPool, mixed, gated and GFGP-gated pooling: the limits that pin them to max, average and
max-entropy pooling, the tie rule, the layers' parameter gradients, and the errors. (The contract
suite, tests/test_ops.py, checks the kernels against the references and central differences.)"""
import numpy as np
import pytest
from helpers import distinct_array, require

from minignn import backend
from minignn.gradcheck import gradcheck
from minignn.layers import (GatedPool2d, MixedPool2d, SoftPool2d, gated_pool2d_backward, gated_pool2d_forward,
                            maxent_pool2d_backward, maxent_pool2d_forward, mixed_pool2d_backward,
                            mixed_pool2d_forward)
from minignn.layers.pooling import avg_pool2d_backward, avg_pool2d_forward, max_pool2d_backward, max_pool2d_forward

GEOMS = [(2, 2, 0), (3, 2, 1), ((2, 3), (1, 2), (1, 0)), (3, 1, 1)]


def _x(shape=(2, 3, 7, 6), seed=0, device="cpu"):
    return backend.to_device(distinct_array(np.random.default_rng(seed), shape), device)


def _np(a):
    return backend.to_numpy(a)


def _max_avg(x, k, s, p, gy):
    ym, arg = max_pool2d_forward(x, k, s, p)
    ya = avg_pool2d_forward(x, k, s, p)
    return ym, ya, max_pool2d_backward(gy, arg, x.shape, k, s, p), avg_pool2d_backward(gy, x.shape, k, s, p)


@pytest.mark.parametrize("k, s, p", GEOMS)
def test_mixed_at_a_1_is_max_and_at_a_0_is_avg(k, s, p, device):
    require(device, "mixed_pool2d", "max_pool2d", "avg_pool2d")
    x = _x(device=device)
    xp = backend.xp_for(device)
    for form in ("scalar", "C", "NC"):
        for a_val in (1.0, 0.0):
            a = a_val if form == "scalar" else xp.full((3,) if form == "C" else (2, 3), a_val)
            y, saved = mixed_pool2d_forward(x, a, k, s, p)
            gy = xp.asarray(np.random.default_rng(1).standard_normal(y.shape))
            ym, ya, gm, ga_ = _max_avg(x, k, s, p, gy)
            gx, _ = mixed_pool2d_backward(gy, saved)
            np.testing.assert_allclose(_np(y), _np(ym if a_val else ya), rtol=1e-13, atol=1e-14)
            np.testing.assert_allclose(_np(gx), _np(gm if a_val else ga_), rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("k, s, p", GEOMS)
def test_gated_with_omega_0_is_the_half_half_mix(k, s, p, device):
    require(device, "gated_pool2d", "max_pool2d", "avg_pool2d")
    x = _x(device=device)
    xp = backend.xp_for(device)
    kk = (k, k) if isinstance(k, int) else k
    y, saved = gated_pool2d_forward(x, xp.zeros(kk[0] * kk[1]), k, s, p)
    gy = xp.asarray(np.random.default_rng(1).standard_normal(y.shape))
    ym, ya, gm, ga_ = _max_avg(x, k, s, p, gy)
    gx, gomega = gated_pool2d_backward(gy, saved)
    np.testing.assert_array_equal(_np(saved.g), 0.5)
    np.testing.assert_allclose(_np(y), 0.5 * _np(ym) + 0.5 * _np(ya), rtol=1e-13, atol=1e-14)
    # at omega = 0 the gate's own term is d g (1 - g) omega_q = 0, so gx is the mix's
    np.testing.assert_allclose(_np(gx), 0.5 * _np(gm) + 0.5 * _np(ga_), rtol=1e-13, atol=1e-14)
    # and gomega_q = sum gy (max - avg) / 4 x_q is not zero: omega can leave 0
    assert float(np.abs(_np(gomega)).max()) > 1e-3


def test_gated_equals_mixed_at_the_same_gate():
    """A gate g from omega, fed to mixed pooling as a = g (one window per plane): same y and gx."""
    x = _x((2, 3, 2, 2))
    omega = np.array([0.3, -1.2, 0.7, 2.0])
    y, saved = gated_pool2d_forward(x, omega, 2, 2, 0)
    a = saved.g[:, :, 0, 0].copy()
    ym, sm = mixed_pool2d_forward(x, a, 2, 2, 0)
    np.testing.assert_allclose(y, ym, rtol=1e-14)
    gy = np.ones_like(y)
    gx, _ = gated_pool2d_backward(gy, saved)
    gxm, ga = mixed_pool2d_backward(gy, sm)
    # gated's gx adds the gate's own term d g (1 - g) omega_q
    d = (saved.d * saved.g * (1 - saved.g))[:, :, 0, 0]
    np.testing.assert_allclose(gx, gxm + d[:, :, None, None] * omega.reshape(2, 2), rtol=1e-13, atol=1e-14)


def test_ties_give_the_max_share_to_the_first_maximum():
    x = np.array([[[[1.0, 3.0], [3.0, 0.0]]]])
    for fn, arg in ((mixed_pool2d_forward, 0.75), (gated_pool2d_forward, np.zeros(4))):
        y, saved = fn(x, arg, 2)
        gx = (mixed_pool2d_backward if fn is mixed_pool2d_forward else gated_pool2d_backward)(np.ones_like(y), saved)[0]
        a = 0.75 if fn is mixed_pool2d_forward else 0.5
        np.testing.assert_allclose(gx[0, 0], [[(1 - a) / 4, a + (1 - a) / 4], [(1 - a) / 4, (1 - a) / 4]])


def test_nan_propagates_to_its_window_only():
    x = _x((1, 1, 4, 4))
    x[0, 0, 0, 1] = np.nan
    for y in (mixed_pool2d_forward(x, 0.3, 2)[0], gated_pool2d_forward(x, np.ones(4), 2)[0]):
        assert np.isnan(y[0, 0, 0, 0]) and np.isfinite(y[0, 0].ravel()[1:]).all()


@pytest.mark.parametrize("k, s, p", GEOMS)
def test_softpool_is_maxent_at_lam_1_with_the_full_gradient(k, s, p, device):
    require(device, "maxent_pool2d")
    x = _x(device=device)
    layer = SoftPool2d(k, s, p)
    y = layer.forward(x)
    ye, saved = maxent_pool2d_forward(x, 1.0, None, k, s, p)
    np.testing.assert_array_equal(_np(y), _np(ye))
    gy = backend.to_device(np.random.default_rng(2).standard_normal(y.shape), device)
    gx = layer.backward(gy)
    np.testing.assert_array_equal(_np(gx), _np(maxent_pool2d_backward(gy, saved)[0]))


def test_softpool_gradient_includes_the_w_x_minus_y_term():
    """dy/dx_q = w_q (1 + x_q - y): central differences agree, and the published SoftPool backward
    (gy w_q, without the w_q (x_q - y) term) does not."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 1, 2, 2)) * 2
    layer = SoftPool2d(2)
    assert gradcheck(layer, x, max_checks=None)
    y = layer.forward(x)
    gx = layer.backward(np.ones_like(y))
    w = np.exp(x - x.max()) / np.exp(x - x.max()).sum()
    np.testing.assert_allclose(gx, w * (1 + x - y), rtol=1e-13)
    assert np.abs(gx - w).max() > 0.05       # the dropped term is not small


@pytest.mark.parametrize("mix", ["channel", "layer", "gfgp"])
@pytest.mark.parametrize("k, s, p", [(2, 2, 0), (3, 2, 1)])
def test_mixed_layer_gradients(mix, k, s, p):
    layer = MixedPool2d(3, k, s, p, mix=mix, rng=np.random.default_rng(0))
    if mix != "gfgp":
        layer.theta.data[...] = np.random.default_rng(1).standard_normal(layer.theta.shape)
    x = _x((2, 3, 6, 7), seed=4)
    assert gradcheck(layer, x, max_checks=30)
    layer.forward(x.astype(np.float32))
    assert layer.last_a.shape == {"channel": (3,), "layer": (1,), "gfgp": (2, 3)}[mix]
    assert np.all((layer.last_a > 0) & (layer.last_a < 1))


@pytest.mark.parametrize("k, s, p", [(2, 2, 0), (3, 2, 1)])
def test_gated_layer_gradients(k, s, p):
    layer = GatedPool2d(3, k, s, p)
    layer.omega.data[...] = np.random.default_rng(1).standard_normal(layer.omega.shape)
    assert gradcheck(layer, _x((2, 3, 6, 7), seed=5), max_checks=30)
    y = layer.forward(_x((2, 3, 6, 7), seed=5).astype(np.float32))
    assert layer.last_gate.shape == y.shape


def test_layer_inits():
    np.testing.assert_allclose(1 / (1 + np.exp(-MixedPool2d(4, a_init=0.8).theta.data)), 0.8, rtol=1e-6)
    assert MixedPool2d(4, mix="layer").theta.shape == (1,)
    np.testing.assert_array_equal(GatedPool2d(4, 3).omega.data, np.zeros(9, np.float32))


def test_errors_name_the_argument():
    x = _x((2, 3, 4, 4))
    with pytest.raises(ValueError, match=r"mixed_pool2d_forward: a: expected a number in \[0, 1\].*got 1.5"):
        mixed_pool2d_forward(x, 1.5)
    with pytest.raises(ValueError, match=r"a: expected values in \[0, 1\].*got values in \[-0.1, 0.5\]"):
        mixed_pool2d_forward(x, np.array([-0.1, 0.5, 0.2]))
    with pytest.raises(ValueError, match=r"a: expected a float or an array of shape \(C,\) = \(3,\).*got shape \(4,\)"):
        mixed_pool2d_forward(x, np.full(4, 0.5))
    with pytest.raises(TypeError, match="a: expected dtype float64"):
        mixed_pool2d_forward(x, np.full(3, 0.5, np.float32))
    with pytest.raises(ValueError, match=r"gated_pool2d_forward: omega: expected an array of shape \(K,\) = \(9,\)"):
        gated_pool2d_forward(x, np.zeros(4), 3, 1, 1)
    with pytest.raises(ValueError, match="omega: expected finite values"):
        gated_pool2d_forward(x, np.array([0, np.inf, 0, 0.0]))
    _, saved = gated_pool2d_forward(x, np.zeros(4))
    with pytest.raises(TypeError, match="mixed_pool2d_backward: saved: expected the MixSaved of mixed_pool2d_forward"):
        mixed_pool2d_backward(np.zeros((2, 3, 2, 2)), saved)
    with pytest.raises(ValueError, match=r"gated_pool2d_backward: gy: expected shape \(2, 3, 2, 2\)"):
        gated_pool2d_backward(np.zeros((2, 3, 2, 3)), saved)
    with pytest.raises(ValueError, match=r"MixedPool2d: a_init: expected a finite real number in \(0, 1\)"):
        MixedPool2d(3, a_init=1.0)
    with pytest.raises(ValueError, match="MixedPool2d: mix: expected one of"):
        MixedPool2d(3, mix="per-window")
    with pytest.raises(ValueError, match="MixedPool2d.forward: x: expected 3 channels"):
        MixedPool2d(3).forward(np.zeros((1, 4, 4, 4), np.float32))
