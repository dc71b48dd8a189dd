"""Gaussian-based pooling and the layer GaussianPool2d: what is specific to them. The shared checks
(public path vs the NumPy reference on every layout and batch size, gpu-sim vs the CPU kernels,
float64 central differences for x and eta, the NUMBA_DISABLE_JIT=1 run) are the contract suite's,
tests/test_ops.py, for the op ``gaussian_pool2d``. Here: the vectorised reference against a
window-by-window loop, the limits (eta = 0 is average pooling; flat windows, whose branch the
contract's inputs never reach), non-finite inputs, every bad input, and the layer (its gradients
by central differences in eval and in train with the draw held fixed, train vs eval, the noise
forms, reproducibility, the devices, its options)."""
import copy
import math

import numpy as np
import pytest
from helpers import assert_close, require

from minignn import backend, init
from minignn.gradcheck import check_gradients, gradcheck
from minignn.layers._window import Window
from minignn.layers.gaussian import EPS, GaussSaved, gaussian_pool2d_backward, gaussian_pool2d_forward
from minignn.layers.gaussian.layer import GaussianPool2d
from minignn.layers.gaussian.reference import gaussian_pool2d_backward_ref, gaussian_pool2d_forward_ref
from minignn.layers.gfgp import global_stats_forward
from minignn.layers.pooling import avg_pool2d_backward, avg_pool2d_forward
from minignn.module import Module

#: (kernel, stride, padding): the 2x2 fast path, overlapping and padded generic windows
GEOMS = [(2, None, 0), (3, 2, 1), ((2, 3), (1, 2), (1, 0)), (3, 1, 1), (1, 1, 0), ((3, 2), 3, (2, 1))]
GEOM_IDS = ["2x2", "3s2p1", "2x3s1x2p1x0", "3s1p1", "1x1", "3x2s3p2x1"]


def on(device, *arrays):
    return [backend.to_device(a, device) for a in arrays]


def host(a):
    return backend.to_numpy(a)


def out_shape(x_shape, k, s, p):
    return Window.of(k, s, p).out_shape(x_shape)


def loops_ref(x, eta, gy, kernel_size=2, stride=None, padding=0):
    """Forward and backward window by window, in plain Python floats: (y, gx, geta) float64."""
    win = Window.of(kernel_size, stride, padding)
    (kh, kw), (sh, sw), (ph, pw) = win.kernel, win.stride, win.padding
    N, C, H, W = x.shape
    _, _, Ho, Wo = win.out_shape(x.shape)
    y, geta, gx = np.zeros((N, C, Ho, Wo)), np.zeros((N, C, Ho, Wo)), np.zeros(x.shape)
    for n in range(N):
        for c in range(C):
            for oh in range(Ho):
                for ow in range(Wo):
                    cells = [(h, w) for h in range(oh * sh - ph, oh * sh - ph + kh)
                             for w in range(ow * sw - pw, ow * sw - pw + kw) if 0 <= h < H and 0 <= w < W]
                    vals = [float(x[n, c, h, w]) for h, w in cells]
                    k = len(vals)
                    mu = sum(vals) / k
                    var = sum((a - mu) ** 2 for a in vals) / k
                    sig = math.sqrt(max(var, EPS))
                    e, g = float(eta[n, c, oh, ow]), float(gy[n, c, oh, ow])
                    y[n, c, oh, ow] = mu + e * sig
                    geta[n, c, oh, ow] = g * sig
                    for (h, w), a in zip(cells, vals):
                        slope = e * (a - mu) / (k * sig) if var > EPS else 0.0
                        gx[n, c, h, w] += g * (1.0 / k + slope)
    return y, gx, geta


# ---------------------------------------------------------------------------------------------
# The reference, window by window
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("geo", GEOMS, ids=GEOM_IDS)
def test_vectorised_reference_matches_the_window_loop(geo):
    k, s, p = geo
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 7, 6))
    x[0, 1, :3, :3] = 0.75                       # flat windows (v = 0 <= EPS) in most geometries
    x[1, 0, 2:5, 1:4] = 0.5 + 1e-5 * rng.standard_normal((3, 3))     # nearly flat: v ~ 1e-10
    ys = out_shape(x.shape, k, s, p)
    eta = rng.uniform(0.0, 2.0, ys)
    gy = rng.standard_normal(ys)
    y_l, gx_l, geta_l = loops_ref(x, eta, gy, k, s, p)
    np.testing.assert_allclose(gaussian_pool2d_forward_ref(x, eta, k, s, p), y_l, rtol=1e-13, atol=1e-14)
    gx_r, geta_r = gaussian_pool2d_backward_ref(x, eta, gy, k, s, p)
    np.testing.assert_allclose(gx_r, gx_l, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(geta_r, geta_l, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("geo", GEOMS, ids=GEOM_IDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kernels_match_the_window_loop_with_flat_windows(device, geo, dtype):
    """The kernels' flat branch (v <= EPS), which the contract suite's normal draws never reach,
    beside ordinary and nearly-flat-but-above-EPS windows."""
    require(device, "gaussian_pool2d")
    k, s, p = geo
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 7, 6))
    x[0, 1] = 0.75                                # a whole flat plane
    x[1, 2, :3, :3] = -2.0                        # a flat corner
    x[1, 0] = 0.5 + 0.01 * rng.standard_normal((7, 6))   # v ~ 1e-4 > EPS: sigma near 1e-2
    x[0, 2] = 0.3 + 2e-4 * rng.standard_normal((7, 6))   # v ~ 4e-8 < EPS: flat, deviations not 0
    x = x.astype(dtype)
    ys = out_shape(x.shape, k, s, p)
    eta = rng.uniform(0.0, 2.0, ys).astype(dtype)
    gy = rng.standard_normal(ys).astype(dtype)
    y, saved = gaussian_pool2d_forward(*on(device, x, eta), k, s, p)
    gx, geta = gaussian_pool2d_backward(on(device, gy)[0], saved)
    assert y.dtype == gx.dtype == geta.dtype == dtype
    assert backend.device_of(y) == backend.device_of(gx) == backend.device_of(geta) == device
    y_l, gx_l, geta_l = loops_ref(x, eta, gy, k, s, p)
    tol = dict(rtol=2e-6, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-13)
    assert_close(y, y_l, name="y", **tol)
    assert_close(gx, gx_l, name="gx", **tol)
    assert_close(geta, geta_l, name="geta", **tol)
    assert host(saved.mu).dtype == host(saved.sigma).dtype == np.float64
    assert np.all(host(saved.sigma) >= math.sqrt(EPS))


# ---------------------------------------------------------------------------------------------
# The limits
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("geo", GEOMS, ids=GEOM_IDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_eta_zero_is_average_pooling(device, geo, dtype):
    require(device, "gaussian_pool2d", "avg_pool2d")
    k, s, p = geo
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 3, 7, 8)).astype(dtype)
    x[0, 0, :2, :2] = 1.0                         # a flat window too
    ys = out_shape(x.shape, k, s, p)
    gy = rng.standard_normal(ys).astype(dtype)
    xd, gyd, eta0 = on(device, x, gy, np.zeros(ys, dtype))
    y, saved = gaussian_pool2d_forward(xd, eta0, k, s, p)
    tight = dict(rtol=1e-6, atol=1e-7) if dtype == np.float32 else dict(rtol=1e-13, atol=1e-15)
    assert_close(y, avg_pool2d_forward(xd, k, s, p), name="y at eta = 0", **tight)
    gx, geta = gaussian_pool2d_backward(gyd, saved)
    assert_close(gx, avg_pool2d_backward(gyd, x.shape, k, s, p), name="gx at eta = 0", **tight)
    assert_close(geta, host(gy).astype(np.float64) * host(saved.sigma), name="geta = gy sigma", **tight)


@pytest.mark.parametrize("geo", [(2, None, 0), (3, 3, 1), ((2, 3), (2, 3), (1, 0))], ids=["2x2", "3s3p1", "2x3p1x0"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_flat_windows_give_mu_plus_eta_times_1e_3_and_the_average_gradient(device, geo, dtype):
    """Flat windows among ordinary ones (non-overlapping geometries), constant or with deviations
    so small that v < EPS: there y = mu + eta 1e-3, gx = gy / K (the clamp is flat: eta adds
    nothing, whatever the deviations) and geta = gy 1e-3."""
    require(device, "gaussian_pool2d")
    k, s, p = geo
    win = Window.of(k, s, p)
    (kh, kw), (sh, sw), (ph, pw) = win.kernel, win.stride, win.padding
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 7, 6))
    ys = win.out_shape(x.shape)
    flat = rng.random(ys) < 0.6
    value = rng.choice([-1.0, -0.5, 0.25, 2.0], ys)
    for i, (n, c, oh, ow) in enumerate(zip(*np.nonzero(flat))):
        h0, w0 = oh * sh - ph, ow * sw - pw
        cells = x[n, c, max(h0, 0):h0 + kh, max(w0, 0):w0 + kw]
        jitter = 3e-4 * rng.standard_normal(cells.shape) if i % 2 else 0.0   # v ~ 1e-7 < EPS, or v = 0
        cells[...] = value[n, c, oh, ow] + jitter
    x = x.astype(dtype)
    mu = avg_pool2d_forward(x.astype(np.float64), k, s, p)
    eta = rng.uniform(0.0, 3.0, ys).astype(dtype)
    gy = rng.standard_normal(ys).astype(dtype)
    y, saved = gaussian_pool2d_forward(*on(device, x, eta), k, s, p)
    sigma = host(saved.sigma)
    assert np.all(sigma[flat] == math.sqrt(EPS)) and np.all(sigma[~flat] > 0.01)
    exact = dict(rtol=2.5e-7 if dtype == np.float32 else 2e-15, atol=0)
    np.testing.assert_allclose(host(y)[flat], (mu + eta.astype(np.float64) * 1e-3)[flat].astype(dtype), **exact)
    g_flat = np.where(flat, gy, 0).astype(dtype)           # gy only on the flat windows
    gx_flat, geta_flat = gaussian_pool2d_backward(on(device, g_flat)[0], saved)
    assert_close(gx_flat, avg_pool2d_backward(g_flat.astype(np.float64), x.shape, k, s, p), name="gx = gy / K",
                 **exact)
    assert_close(geta_flat, g_flat.astype(np.float64) * 1e-3, name="geta = gy 1e-3", **exact)
    # the whole case, against the reference
    tol = dict(rtol=2e-6, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-14)
    assert_close(y, gaussian_pool2d_forward_ref(x, eta, k, s, p), name="y", **tol)
    gx, geta = gaussian_pool2d_backward(on(device, gy)[0], saved)
    gx_r, geta_r = gaussian_pool2d_backward_ref(x, eta, gy, k, s, p)
    assert_close(gx, gx_r, name="gx", **tol)
    assert_close(geta, geta_r, name="geta", **tol)


def test_eta_pushes_y_from_the_mean_to_the_max():
    """y grows with eta (dy/deta = sigma > 0); eta = sqrt(K - 1) reaches at least the max (the
    largest deviation from the mean is at most sqrt(K - 1) sigma)."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 3, 6, 6))
    ys = out_shape(x.shape, 2, None, 0)
    prev = None
    for e in (0.0, 0.5, 1.0, 1.5, math.sqrt(3)):
        y, _ = gaussian_pool2d_forward(x, np.full(ys, e), 2)
        if prev is not None:
            assert np.all(y > prev)
        prev = y
    mx = x.reshape(2, 3, 3, 2, 3, 2).max(axis=(3, 5))
    assert np.all(prev >= mx - 1e-12)


def test_gradients_by_central_differences_near_the_floor():
    """Small but above-floor variances (sigma ~ 2e-3 to 2e-2) and the eta gradient, every entry:
    the derivation (the mu-through-sigma term vanishes) at the scale where the 1/sigma factor is
    largest."""
    rng = np.random.default_rng(5)
    x = 0.3 + 0.02 * rng.standard_normal((1, 2, 5, 6))
    for k, s, p in [(2, None, 0), (3, 2, 1)]:
        ys = out_shape(x.shape, k, s, p)
        eta = rng.uniform(0.1, 2.0, ys)
        r = rng.standard_normal(ys)
        _, saved = gaussian_pool2d_forward(x, eta, k, s, p)
        assert np.all(host(saved.sigma) > 1.5e-3)
        gx, geta = gaussian_pool2d_backward(r, saved)

        def loss():
            return float(np.sum(gaussian_pool2d_forward(x, eta, k, s, p)[0] * r))

        check_gradients(loss, {"x": x, "eta": eta}, {"x": gx, "eta": geta}, eps=1e-7, max_checks=None)


# ---------------------------------------------------------------------------------------------
# Non-finite x
# ---------------------------------------------------------------------------------------------
def test_nan_propagates_and_an_infinite_window_is_nan(device):
    require(device, "gaussian_pool2d")
    x = np.ones((1, 1, 4, 6))
    x[0, 0, 0, 2] = 3.0                           # an ordinary window
    x[0, 0, 0, 0] = np.nan
    x[0, 0, 3, 3] = np.inf
    x[0, 0, 2, 4] = -np.inf
    eta = np.zeros((1, 1, 2, 3))                  # even at eta = 0 (average pooling) inf - inf is NaN
    y, saved = gaussian_pool2d_forward(*on(device, x, eta))
    y = host(y)
    assert np.isnan(y[0, 0, 0, 0]) and np.isnan(y[0, 0, 1, 1]) and np.isnan(y[0, 0, 1, 2])
    assert y[0, 0, 0, 1] == 1.5 and y[0, 0, 1, 0] == 1.0 and y[0, 0, 0, 2] == 1.0
    gx, geta = gaussian_pool2d_backward(on(device, np.ones(y.shape))[0], saved)
    gx, geta = host(gx), host(geta)
    assert np.all(np.isnan(gx[0, 0, :2, :2])) and np.all(np.isnan(gx[0, 0, 2:, 2:]))
    assert np.all(np.isnan(geta[0, 0, [0, 1, 1], [0, 1, 2]]))
    assert np.all(gx[0, 0, :2, 2:4] == 0.25) and np.all(gx[0, 0, 2:, :2] == 0.25)   # eta = 0: 1/K
    assert geta[0, 0, 1, 0] == 1e-3


# ---------------------------------------------------------------------------------------------
# Bad inputs
# ---------------------------------------------------------------------------------------------
def test_bad_inputs_name_the_argument():
    F = "gaussian_pool2d_forward"
    x = np.ones((2, 3, 6, 5), np.float32)
    eta = np.ones((2, 3, 3, 2), np.float32)
    with pytest.raises(ValueError, match=rf"{F}: eta: expected an array of shape \(N, C, Ho, Wo\) = \(2, 3, 3, 2\),"
                                         rf" got shape \(2, 3\)"):
        gaussian_pool2d_forward(x, np.ones((2, 3), np.float32))
    with pytest.raises(ValueError, match=rf"{F}: eta: expected .* = \(2, 3, 2, 1\), got shape \(2, 3, 3, 2\)"):
        gaussian_pool2d_forward(x, eta, 3)
    with pytest.raises(TypeError, match=rf"{F}: eta: expected an array of shape .*, got float"):
        gaussian_pool2d_forward(x, 0.5)
    with pytest.raises(TypeError, match=rf"{F}: eta: expected an array of shape .*, got list"):
        gaussian_pool2d_forward(x, eta.tolist())
    with pytest.raises(TypeError, match=rf"{F}: eta: expected dtype float32 \(x's dtype\), got float64"):
        gaussian_pool2d_forward(x, eta.astype(np.float64))
    with pytest.raises(TypeError, match=rf"{F}: eta: expected dtype float32 \(x's dtype\), got int64"):
        gaussian_pool2d_forward(x, eta.astype(np.int64))
    neg = eta.copy()
    neg[1, 2, 0, 1] = -0.5
    with pytest.raises(ValueError, match=rf"{F}: eta: expected every value finite and >= 0, got eta\[1, 2, 0, 1\]"
                                         rf" = -0\.5 \(1 bad value\)"):
        gaussian_pool2d_forward(x, neg)
    bad = eta.copy()
    bad[0, 0, 0, 0], bad[0, 1, 2, 1], bad[1, 0, 0, 0], bad[1, 1, 1, 1] = np.nan, np.inf, -np.inf, -1e-30
    with pytest.raises(ValueError, match=rf"{F}: eta: expected every value finite and >= 0, got eta\[0, 0, 0, 0\]"
                                         rf" = nan, eta\[0, 1, 2, 1\] = inf, eta\[1, 0, 0, 0\] = -inf, \.\.\."
                                         rf" \(4 bad values\)"):
        gaussian_pool2d_forward(x, bad)
    y0, _ = gaussian_pool2d_forward(x, np.zeros_like(eta))              # 0 is allowed; -0.0 too
    assert np.all(y0 == 1.0)
    gaussian_pool2d_forward(x, -np.zeros_like(eta))
    with pytest.raises(TypeError, match=rf"{F}: x: expected dtype float32 or float64, got int64"):
        gaussian_pool2d_forward(np.ones((2, 3, 6, 5), np.int64), eta)
    with pytest.raises(ValueError, match=rf"{F}: x: expected a 4-D array \(N, C, H, W\), got shape \(3, 6, 5\)"):
        gaussian_pool2d_forward(x[0], eta)
    with pytest.raises(ValueError, match=rf"{F}: padding: expected smaller than kernel_size \(2, 2\) .*got \(2, 2\)"):
        gaussian_pool2d_forward(x, eta, padding=2)
    with pytest.raises(ValueError, match=rf"{F}: kernel_size: expected at most the padded input W"):
        gaussian_pool2d_forward(x, eta, kernel_size=(2, 6))
    with pytest.raises(ValueError, match=rf"{F}: stride: expected an integer >= 1 or a pair of them, got 0"):
        gaussian_pool2d_forward(x, eta, stride=0)

    B = "gaussian_pool2d_backward"
    y, saved = gaussian_pool2d_forward(x, eta)
    with pytest.raises(ValueError, match=rf"{B}: gy: expected shape \(2, 3, 3, 2\) \(the forward output's\),"
                                         rf" got \(2, 3, 2, 3\)"):
        gaussian_pool2d_backward(np.zeros((2, 3, 2, 3), np.float32), saved)
    with pytest.raises(TypeError, match=rf"{B}: gy: expected dtype float32 \(the forward output's\), got float64"):
        gaussian_pool2d_backward(y.astype(np.float64), saved)
    with pytest.raises(TypeError, match=rf"{B}: saved: expected the GaussSaved returned by gaussian_pool2d_forward,"
                                        rf" got tuple"):
        gaussian_pool2d_backward(y, (x, eta))
    assert isinstance(saved, GaussSaved) and "GaussSaved(x(2, 3, 6, 5)" in repr(saved)


def test_eta_and_x_on_different_devices_is_an_error():
    if backend.sim_unavailable_reason():
        pytest.skip(f"no gpu-sim: {backend.sim_unavailable_reason()}")
    require("gpu-sim", "gaussian_pool2d")
    x = np.ones((1, 2, 4, 4))
    with pytest.raises(TypeError, match=r"gaussian_pool2d_forward: eta: expected an array on the same device as x"
                                        r" \(gpu-sim\), got one on cpu"):
        gaussian_pool2d_forward(backend.to_device(x, "gpu-sim"), np.ones((1, 2, 2, 2)))
    with pytest.raises(TypeError, match=r"gaussian_pool2d_forward: eta: expected an array on the same device as x"
                                        r" \(cpu\), got one on gpu-sim"):
        gaussian_pool2d_forward(x, backend.to_device(np.ones((1, 2, 2, 2)), "gpu-sim"))


# ---------------------------------------------------------------------------------------------
# The layer
# ---------------------------------------------------------------------------------------------
def _sigmoid(u):
    return 1 / (1 + np.exp(-u))


def _softplus(u):
    return np.maximum(u, 0) + np.log1p(np.exp(-np.abs(u)))


class Reseeded(Module):
    """The layer with its draw held fixed: a fresh generator from the same seed before every
    forward, so that central differences see one and the same eps."""

    def __init__(self, layer, seed):
        super().__init__()
        self.layer, self.seed = layer, seed

    def forward(self, x):
        self.layer.rng = np.random.default_rng(self.seed)
        return self.layer.forward(x)

    def backward(self, gy):
        return self.layer.backward(gy)


def _spread(layer, rng, scale=0.6):
    """Mapping weights away from the PyTorch init's small values, so eta and sigma_eta vary."""
    for _, p in layer.named_parameters():
        p.data[...] = (scale * rng.standard_normal(p.shape)).astype(p.data.dtype)
    return layer


CONFIGS = [dict(), dict(kernel_size=3, stride=2, padding=1), dict(mlp="slp", bias=False),
           dict(stat="avg+std", hidden=1.0), dict(stat="max", kernel_size=(2, 3), stride=(1, 2), padding=(1, 0))]
CONFIG_IDS = ["2x2", "3s2p1", "slp-nobias", "avg+std", "max-2x3"]


@pytest.mark.parametrize("cfg", CONFIGS, ids=CONFIG_IDS)
def test_layer_gradients_in_eval_by_central_differences(cfg):
    """x and every mapping parameter, float64 (the checker deep-copies and casts the layer)."""
    rng = np.random.default_rng(10)
    layer = _spread(GaussianPool2d(4, rng=np.random.default_rng(0), **cfg), rng).eval()
    x = rng.standard_normal((3, 4, 6, 7))
    gradcheck(layer, x, max_checks=40, seed=1)


@pytest.mark.parametrize("stochasticity", ["window", "channel"])
@pytest.mark.parametrize("cfg", CONFIGS[:3], ids=CONFIG_IDS[:3])
def test_layer_gradients_in_train_with_the_draw_held_fixed(stochasticity, cfg):
    rng = np.random.default_rng(11)
    layer = _spread(GaussianPool2d(4, stochasticity=stochasticity, rng=np.random.default_rng(0), **cfg), rng)
    assert layer.training
    x = rng.standard_normal((3, 4, 6, 7))
    gradcheck(Reseeded(layer, 7), x, max_checks=40, seed=2)
    # the noise really enters: another seed gives another output, the same seed the same one
    m = Reseeded(layer, 7)
    y1 = m.forward(x.astype(np.float32))
    assert np.array_equal(y1, m.forward(x.astype(np.float32)))
    assert not np.array_equal(y1, Reseeded(layer, 8).forward(x.astype(np.float32)))


def _expected_eta(layer, x, eps):
    """eta from the definition, in float64: softplus(z_mu + sigmoid(z_s) eps) (eps may be None)."""
    m = copy.deepcopy(layer).to(dtype=np.float64)
    t, _ = global_stats_forward(x.astype(np.float64), layer.stat)
    z, _ = m.mapping.forward(t)
    c = layer.channels
    z_mu, s = z[:, :c], _sigmoid(z[:, c:])
    if eps is None:
        return _softplus(z_mu)
    if eps.ndim == 4:
        return _softplus(z_mu[:, :, None, None] + s[:, :, None, None] * eps)
    return _softplus(z_mu + s * eps)


@pytest.mark.parametrize("stochasticity", ["window", "channel", None])
def test_layer_eta_follows_the_definition_in_train_and_eval(stochasticity):
    """Train: eps from the library generator, (N, C, Ho, Wo) for "window", one per (n, c) for
    "channel" (broadcast over the windows), none for None; eval: softplus(mu_eta). y is the
    functional at that eta."""
    rng = np.random.default_rng(12)
    layer = _spread(GaussianPool2d(3, stochasticity=stochasticity), rng)
    x = rng.standard_normal((2, 3, 6, 8)).astype(np.float32)
    ys = (2, 3, 3, 4)
    state = init.get_rng_state()
    y = layer.forward(x)
    init.set_rng_state(state)
    eps = {"window": lambda: init.get_rng().standard_normal(ys),
           "channel": lambda: init.get_rng().standard_normal(ys[:2]), None: lambda: None}[stochasticity]()
    want = _expected_eta(layer, x, eps)
    assert layer.last_eta.dtype == np.float32
    assert layer.last_eta.shape == (ys if stochasticity == "window" else ys[:2])
    np.testing.assert_allclose(layer.last_eta, want, rtol=1e-5, atol=1e-6)
    eta_w = np.broadcast_to(layer.last_eta[:, :, None, None], ys) if layer.last_eta.ndim == 2 else layer.last_eta
    np.testing.assert_array_equal(y, gaussian_pool2d_forward(x, np.ascontiguousarray(eta_w))[0])
    if stochasticity == "channel":                  # one eps per (n, c): the same eta in every window
        assert len(np.unique(eta_w[1, 2])) == 1 and len(np.unique(layer.last_eta)) == 6
    # eval: no noise, the same output every time, whatever the generator
    layer.eval()
    ye = layer.forward(x)
    assert layer.last_eta.shape == (2, 3)
    np.testing.assert_allclose(layer.last_eta, _expected_eta(layer, x, None), rtol=1e-5, atol=1e-6)
    init.manual_seed(123)
    np.testing.assert_array_equal(layer.forward(x), ye)
    layer.train()
    y2, y3 = layer.forward(x), layer.forward(x)
    if stochasticity is None:                      # no noise: train is eval
        np.testing.assert_array_equal(y2, ye)
        np.testing.assert_array_equal(y3, ye)
    else:
        assert not np.array_equal(y2, y3) and not np.array_equal(y2, ye)


def test_layer_same_generator_state_same_output_and_own_rng():
    rng = np.random.default_rng(13)
    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    init.manual_seed(5)
    a = GaussianPool2d(3)
    ya = a.forward(x)
    init.manual_seed(5)
    b = GaussianPool2d(3)
    np.testing.assert_array_equal(b.forward(x), ya)       # same seed: same weights, same draw
    np.testing.assert_array_equal(a.mapping.U.data, b.mapping.U.data)
    own1 = GaussianPool2d(3, rng=np.random.default_rng(9))
    init.manual_seed(77)
    y1 = own1.forward(x)
    own2 = GaussianPool2d(3, rng=np.random.default_rng(9))
    init.manual_seed(78)                                  # the library generator plays no part
    np.testing.assert_array_equal(own2.forward(x), y1)
    assert not np.array_equal(own1.forward(x), y1)        # the draws go on


def test_layer_backward_uses_the_forward_draw():
    """Backward after a forward, then another forward (a new draw) must not change what the
    first backward would give: the draw is kept with the forward's cache."""
    rng = np.random.default_rng(14)
    layer = _spread(GaussianPool2d(3), rng)
    x = rng.standard_normal((2, 3, 6, 6))
    layer.to(dtype=np.float64)
    gy = rng.standard_normal((2, 3, 3, 3))
    state = init.get_rng_state()
    layer.forward(x)
    layer.zero_grad()
    gx1 = layer.backward(gy)
    g1 = [p.grad.copy() for p in layer.parameters()]
    init.set_rng_state(state)
    layer.forward(x)
    snapshot = copy.deepcopy(layer)
    layer.forward(x)                                      # another draw, then backward of the snapshot
    snapshot.zero_grad()
    np.testing.assert_array_equal(snapshot.backward(gy), gx1)
    for a, b in zip(g1, [p.grad for p in snapshot.parameters()]):
        np.testing.assert_array_equal(a, b)


def test_layer_at_zero_mapping_output_is_log2_eta():
    """bias=False and x = 0: t = 0, z = 0, eta = softplus(0) = log 2 in eval; a flat window, so
    y = 0 + log 2 * 1e-3. The default init keeps eta near log 2 for ordinary inputs too."""
    layer = GaussianPool2d(4, bias=False).eval()
    y = layer.forward(np.zeros((2, 4, 4, 4), np.float32))
    np.testing.assert_allclose(layer.last_eta, math.log(2), rtol=1e-7)
    np.testing.assert_allclose(y, math.log(2) * 1e-3, rtol=1e-6)
    layer = GaussianPool2d(16).eval()
    layer.forward(np.abs(np.random.default_rng(15).standard_normal((4, 16, 8, 8))).astype(np.float32))
    assert np.all(np.abs(layer.last_eta - math.log(2)) < 0.6)


def test_layer_with_batchnorm_in_the_mapping():
    rng = np.random.default_rng(16)
    layer = GaussianPool2d(4, batchnorm=True, rng=np.random.default_rng(1))
    x = rng.standard_normal((4, 4, 6, 6))
    gradcheck(Reseeded(layer, 3), x, max_checks=30, seed=3)
    layer.eval()
    gradcheck(layer, x, max_checks=30, seed=3)


def test_layer_on_a_gpu_device_matches_the_cpu(device):
    require(device, "gaussian_pool2d", "gfgp_stats")
    rng = np.random.default_rng(17)
    x = rng.standard_normal((2, 3, 7, 6)).astype(np.float32)
    gy = rng.standard_normal((2, 3, 4, 3)).astype(np.float32)
    for stochasticity in ("window", "channel"):
        cpu = _spread(GaussianPool2d(3, 3, 2, 1, stochasticity=stochasticity), rng)
        dev = copy.deepcopy(cpu).to(device=device)
        for mode in ("train", "eval"):
            getattr(cpu, mode)()
            getattr(dev, mode)()
            cpu.zero_grad()
            dev.zero_grad()
            state = init.get_rng_state()
            y_c = cpu.forward(x)
            init.set_rng_state(state)
            y_d = dev.forward(backend.to_device(x, device))
            assert backend.device_of(y_d) == device and backend.device_of(dev.last_eta) == device
            assert_close(y_d, y_c, rtol=1e-5, atol=1e-6, name=f"y ({stochasticity}, {mode})")
            assert_close(dev.last_eta, cpu.last_eta, rtol=1e-6, atol=1e-7, name="last_eta")
            assert_close(dev.backward(backend.to_device(gy, device)), cpu.backward(gy), rtol=1e-5, atol=1e-6,
                         name=f"gx ({stochasticity}, {mode})")
            for (name, pc), (_, pd) in zip(cpu.named_parameters(), dev.named_parameters()):
                assert_close(pd.grad, pc.grad, rtol=1e-4, atol=1e-5, name=f"{name}.grad")


def test_layer_options_and_inputs_are_checked():
    G = "GaussianPool2d"
    with pytest.raises(ValueError, match=rf"{G}: channels: expected an integer >= 1, got 0"):
        GaussianPool2d(0)
    with pytest.raises(ValueError, match=rf"{G}: stochasticity: expected one of \['window', 'channel', None\],"
                                         rf" got 'HWCN'"):
        GaussianPool2d(3, stochasticity="HWCN")
    with pytest.raises(ValueError, match=rf"{G}: stat: expected one of \['avg', 'avg\+std', 'max'\], got 'median'"):
        GaussianPool2d(3, stat="median")
    with pytest.raises(ValueError, match=rf"{G}: mlp: expected one of \['mlp', 'slp'\], got 'deep'"):
        GaussianPool2d(3, mlp="deep")
    with pytest.raises(TypeError, match=rf"{G}: rng: expected a numpy.random.Generator or None, got int"):
        GaussianPool2d(3, rng=0)
    with pytest.raises(ValueError, match=rf"{G}: padding: expected smaller than kernel_size \(2, 2\)"):
        GaussianPool2d(3, 2, padding=2)
    with pytest.raises(ValueError, match=rf"{G}: kernel_size: expected an integer >= 1 or a pair of them, got 0"):
        GaussianPool2d(3, 0)
    with pytest.raises(ValueError, match=r"GFGPMapping: hidden: expected"):
        GaussianPool2d(3, hidden=-1.0)
    with pytest.raises(ValueError, match=r"GFGPMapping: bias: expected True or False, got 'yes'"):
        GaussianPool2d(3, bias="yes")

    layer = GaussianPool2d(3)
    with pytest.raises(ValueError, match=rf"{G}.forward: x: expected 3 channels at axis 1, got 2"):
        layer.forward(np.ones((1, 2, 4, 4), np.float32))
    with pytest.raises(TypeError, match=rf"{G}.forward: x: expected dtype float32 \(the parameters' dtype\),"
                                        rf" got float64"):
        layer.forward(np.ones((1, 3, 4, 4)))
    with pytest.raises(ValueError, match=rf"{G}.forward: x: expected a 4-D array"):
        layer.forward(np.ones((3, 4, 4), np.float32))
    with pytest.raises(ValueError, match=rf"{G}.forward: kernel_size: expected at most the padded input H"):
        layer.forward(np.ones((1, 3, 1, 4), np.float32))
    with pytest.raises(RuntimeError, match=rf"{G}.backward called before forward"):
        GaussianPool2d(3).backward(np.ones((1, 3, 2, 2), np.float32))
    y = layer.forward(np.ones((1, 3, 4, 4), np.float32))
    with pytest.raises(ValueError, match=rf"{G}.backward: gy: expected shape \(1, 3, 2, 2\) \(the forward output's\)"):
        layer.backward(np.ones((1, 3, 2, 3), np.float32))
    with pytest.raises(TypeError, match=rf"{G}.backward: gy: expected dtype float32"):
        layer.backward(np.ones(y.shape))
    big = GaussianPool2d(3)
    for _, p in big.named_parameters():
        p.data[...] = 10.0
    with pytest.raises(ValueError, match=rf"{G}.forward: x: expected values the GFGP mapping can take in float32,"
                                         rf" got \|x\| up to 1e\+38: eta would not be finite"):
        with np.errstate(over="ignore", invalid="ignore"):
            big.forward(np.full((1, 3, 4, 4), 1e38, np.float32))
    assert "stochasticity='window'" in repr(layer) and "kernel_size=(2, 2)" in repr(layer)
