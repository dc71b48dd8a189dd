"""Stochastic pooling and S3 pooling: what is specific to them. The shared checks (public path vs
the NumPy reference on every layout and batch size, gpu-sim vs the CPU kernels, float64 central
differences of x with the draw held fixed, the NUMBA_DISABLE_JIT=1 run) are the contract
suite's, tests/test_ops.py, for the ops ``stochastic_pool2d`` and ``s3_pool2d``. Here: the eval
rule against sum a^2 / sum a written window by window, the draw's distribution, zero cells and
windows, NaN and inf, S3's row and column rule, the layers (train/eval, the library generator,
devices) and every bad input."""
import numpy as np
import pytest
from helpers import assert_close, require

from minignn import backend, init
from minignn.layers.pooling import avg_pool2d_forward
from minignn.layers.stochastic import (s3_draw, s3_pool2d_backward, s3_pool2d_forward, stochastic_pool2d_backward,
                                       stochastic_pool2d_forward)
from minignn.layers.stochastic.layer import S3Pool2d, StochasticPool2d

GEOMS = [(2, 2, 0), (3, 2, 1), ((2, 3), (1, 2), (1, 0)), (3, 1, 1), (1, 1, 0)]
GEOM_IDS = ["2x2", "3s2p1", "2x3s1x2p1x0", "3s1p1", "1x1"]


def pair(v):
    return tuple(v) if isinstance(v, tuple) else (v, v)


def real_windows(shape, k, s, p):
    """{(oh, ow): [(h, w), ...]}: each window's real cells in row-major order, from the definition."""
    (kh, kw), (sh, sw), (ph, pw) = pair(k), pair(s), pair(p)
    H, W = shape[2:]
    Ho, Wo = (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1
    return {(oh, ow): [(oh * sh - ph + i, ow * sw - pw + j) for i in range(kh) for j in range(kw)
                       if 0 <= oh * sh - ph + i < H and 0 <= ow * sw - pw + j < W]
            for oh in range(Ho) for ow in range(Wo)}


def on(device, *arrays):
    return [backend.to_device(a, device) for a in arrays]


def host(a):
    return backend.to_numpy(a)


# ---------------------------------------------------------------------------------------------
# Stochastic pooling
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("geo", GEOMS, ids=GEOM_IDS)
def test_eval_is_sum_of_squares_over_sum(device, geo):
    """y = sum a^2 / sum a and dy/da_q = (2 a_q - y) / sum a, window by window; an all-zero window
    gives 0 and 1/|R| per cell."""
    require(device, "stochastic_pool2d")
    k, s, p = geo
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 3, (2, 2, 7, 6))
    x[1, 0, :3, :3] = 0.0
    y, saved = stochastic_pool2d_forward(on(device, x)[0], None, k, s, p)
    gy = rng.standard_normal(y.shape)
    gx = host(stochastic_pool2d_backward(on(device, gy)[0], saved))
    want_y = np.zeros(y.shape)
    want_gx = np.zeros(x.shape)
    for n in range(2):
        for c in range(2):
            for (oh, ow), cells in real_windows(x.shape, k, s, p).items():
                a = np.array([x[n, c, h, w] for h, w in cells])
                total = a.sum()
                yv = (a * a).sum() / total if total > 0 else 0.0
                want_y[n, c, oh, ow] = yv
                for (h, w), av in zip(cells, a):
                    d = (2 * av - yv) / total if total > 0 else 1.0 / len(cells)
                    want_gx[n, c, h, w] += gy[n, c, oh, ow] * d
    assert_close(y, want_y, rtol=1e-13, atol=1e-14, name="y")
    assert_close(gx, want_gx, rtol=1e-12, atol=1e-13, name="gx")
    assert np.any(want_y[1, 0] == 0.0)


def test_draws_follow_the_probabilities_a_over_sum_a(device):
    """One window of [1, 2, 0, 3] drawn 40000 times on a stratified grid of u: each cell's share
    is its p (to the grid's resolution), the zero cell is never drawn, and the mean of y is the
    eval output sum a^2 / sum a."""
    require(device, "stochastic_pool2d")
    n = 40000
    x = np.tile(np.array([[1.0, 2.0], [0.0, 3.0]]), (n, 1, 1, 1))
    u = (np.arange(n) + 0.5) / n
    y, saved = stochastic_pool2d_forward(*on(device, x, u.reshape(n, 1, 1, 1)))
    y = host(y).ravel()
    arg = host(saved.arg).ravel()
    assert set(np.unique(arg)) == {0, 1, 3}
    np.testing.assert_allclose(np.bincount(arg, minlength=4) / n, [1 / 6, 2 / 6, 0, 3 / 6], atol=1e-4)
    np.testing.assert_array_equal(y, x.reshape(n, 4)[np.arange(n), arg])
    np.testing.assert_allclose(y.mean(), 14 / 6, rtol=1e-3)
    gx = host(stochastic_pool2d_backward(*on(device, np.ones((n, 1, 1, 1))), saved)).reshape(n, 4)
    np.testing.assert_array_equal(gx, np.eye(4)[arg])          # the draw's cell gets gy, the rest 0


def test_zero_window_draws_its_real_cells_uniformly(device):
    """An all-zero window: y = 0, and the gradient goes to the floor(u |R|)-th real cell (here a
    padded 3x3 window at a corner has 4 real cells)."""
    require(device, "stochastic_pool2d")
    x = np.zeros((1, 1, 2, 2))
    for i, u in enumerate((0.0, 0.26, 0.5, 0.99)):
        y, saved = stochastic_pool2d_forward(*on(device, x, np.full((1, 1, 1, 1), u)), kernel_size=3, stride=3,
                                             padding=1)
        assert host(y).item() == 0.0
        gx = host(stochastic_pool2d_backward(on(device, np.ones((1, 1, 1, 1)))[0], saved))
        np.testing.assert_array_equal(gx.ravel(), np.eye(4)[i])


def test_nan_and_inf_windows(device):
    require(device, "stochastic_pool2d")
    x = np.ones((1, 1, 2, 4))
    x[0, 0, 1, 0] = np.nan
    x[0, 0, 0, 3] = np.inf
    for u in (None, np.full((1, 1, 1, 2), 0.3)):
        y = host(stochastic_pool2d_forward(*on(device, x), None if u is None else on(device, u)[0])[0])
        assert np.isnan(y[0, 0, 0, 0]) and y[0, 0, 0, 1] == np.inf


def test_float32_huge_values_do_not_overflow(device):
    require(device, "stochastic_pool2d")
    x = np.array([[[[3e38, 1e38], [2e38, 0.0]]]], dtype=np.float32)
    y = host(stochastic_pool2d_forward(on(device, x)[0])[0])
    want = (9 + 1 + 4) / 6 * 1e38
    assert np.isfinite(y).all() and abs(y.item() - want) / want < 1e-6


def test_stochastic_layer_train_and_eval(device):
    """Train mode draws from the library generator (the same state gives the same draws, on every
    device); eval mode is the functional's eval rule."""
    require(device, "stochastic_pool2d")
    rng = np.random.default_rng(3)
    x = rng.uniform(0, 1, (2, 3, 8, 8)).astype(np.float32)
    layer = StochasticPool2d()
    state = init.get_rng_state()
    y1 = host(layer.forward(on(device, x)[0]))
    init.set_rng_state(state)
    y_cpu = StochasticPool2d().forward(x)
    np.testing.assert_array_equal(y1, y_cpu)
    y2 = host(layer.forward(on(device, x)[0]))
    assert not np.array_equal(y1, y2)                          # a fresh draw
    gx = host(layer.backward(on(device, np.ones(y1.shape, np.float32))[0]))
    assert gx.sum() == y1.size and set(np.unique(gx)) <= {0.0, 1.0}
    layer.eval()
    want = host(stochastic_pool2d_forward(x)[0])
    np.testing.assert_array_equal(host(layer.forward(on(device, x)[0])), want)
    own = StochasticPool2d(rng=np.random.default_rng(5))
    assert not np.array_equal(host(own.forward(x)), y_cpu)


def test_stochastic_errors_name_the_argument():
    x = np.ones((1, 1, 4, 4))
    u = np.full((1, 1, 2, 2), 0.5)
    with pytest.raises(ValueError, match=r"x: expected every value >= 0.*minimum of -1"):
        stochastic_pool2d_forward(-x)
    with pytest.raises(TypeError, match="u: expected dtype float64"):
        stochastic_pool2d_forward(x, u.astype(np.float32))
    with pytest.raises(ValueError, match=r"u: expected the output's shape \(1, 1, 2, 2\), got \(1, 1, 2, 1\)"):
        stochastic_pool2d_forward(x, u[..., :1])
    with pytest.raises(ValueError, match=r"u: expected every value in \[0, 1\)"):
        stochastic_pool2d_forward(x, u * 2)
    with pytest.raises(TypeError, match="u: expected None"):
        stochastic_pool2d_forward(x, 0.5)
    with pytest.raises(TypeError, match="x: expected dtype float32 or float64"):
        stochastic_pool2d_forward(x.astype(np.int64))
    y, saved = stochastic_pool2d_forward(x, u)
    with pytest.raises(ValueError, match="gy"):
        stochastic_pool2d_backward(np.ones((1, 1, 3, 3)), saved)
    with pytest.raises(TypeError, match="saved: expected the StochasticSaved"):
        stochastic_pool2d_backward(np.ones((1, 1, 2, 2)), (x, u))
    with pytest.raises(TypeError, match="rng: expected a numpy.random.Generator"):
        StochasticPool2d(rng=3)
    with pytest.raises(RuntimeError, match="backward"):
        StochasticPool2d().backward(np.ones((1, 1, 2, 2)))


# ---------------------------------------------------------------------------------------------
# S3 pooling
# ---------------------------------------------------------------------------------------------
def stride1_max(x):
    """m[i, j] = max over rows i, i+1 and columns j, j+1 that exist: plain loops."""
    N, C, H, W = x.shape
    m = np.empty_like(x)
    for i in range(H):
        for j in range(W):
            m[:, :, i, j] = x[:, :, i:i + 2, j:j + 2].max(axis=(2, 3))
    return m


@pytest.mark.parametrize("size, grid", [(32, None), (16, None), (8, 4), (7, None), (13, 6), (2, None), (10, 20)])
def test_s3_draw_keeps_half_of_every_block(size, grid):
    rng = np.random.default_rng(size)
    rows, cols = s3_draw(rng, size, size + 3, grid)
    assert rows.shape == (size // 2,) and cols.shape == ((size + 3) // 2,)
    g = grid if grid is not None else max(2, (size // 2) // 2 * 2)
    for idx, n in ((rows, size), (cols, size + 3)):
        gg = grid if grid is not None else max(2, (n // 2) // 2 * 2)
        assert np.all(np.diff(idx) > 0) and idx.min() >= 0 and idx.max() < n
        for start in range(0, n, gg):
            b = min(gg, n - start)
            assert np.sum((idx >= start) & (idx < start + b)) == b // 2
    assert g % 2 == 0


def test_s3_draws_differ_and_cover_every_row():
    rng = np.random.default_rng(0)
    seen = np.zeros(16, dtype=int)
    draws = set()
    for _ in range(200):
        rows, _ = s3_draw(rng, 16, 16)
        seen[rows] += 1
        draws.add(tuple(rows))
    assert seen.min() > 50 and len(draws) > 100


def test_s3_train_and_eval_by_the_definition(device):
    require(device, "s3_pool2d")
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 9, 8))
    m = stride1_max(x)
    rows, cols = s3_draw(rng, 9, 8)
    y, saved = s3_pool2d_forward(*on(device, x, rows, cols))
    assert_close(y, m[:, :, rows][:, :, :, cols], rtol=0, atol=0, name="train y")
    gx = host(s3_pool2d_backward(on(device, np.ones(host(y).shape))[0], saved))
    assert gx.sum() == host(y).size                        # each output's gradient reaches one input cell
    y, saved = s3_pool2d_forward(on(device, x)[0])
    assert_close(y, avg_pool2d_forward(m, 2, 2), rtol=1e-14, atol=1e-15, name="eval y")


@pytest.mark.parametrize("rows, cols", [([2], [1, 2]),          # the last row kept (its window: itself alone)
                                        ([0], [0, 1]),          # consecutive columns share column 1
                                        ([1], [2, 3])])         # the last column kept, 4 = W - 1
def test_s3_train_edges_match_the_reference(device, rows, cols):
    """The kept windows at the border (clipped, read twice by the gather) and kept neighbours
    (an input row or column under two windows): y and gx against the reference, with ties
    between equal cells (first of ties wins, as max pooling)."""
    from minignn.layers.stochastic import _backward_s3_ref, _forward_s3_ref
    require(device, "s3_pool2d")
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 2, 3, 4))
    x[0, 0, 2, 3] = x[0, 0, 2, 2]                             # a tie in the last row
    rows, cols = np.array(rows), np.array(cols)
    (y_ref,), saved_ref = _forward_s3_ref(x, rows, cols)
    gy = rng.standard_normal(y_ref.shape)
    gx_ref = _backward_s3_ref(saved_ref, gy)[0]
    y, saved = s3_pool2d_forward(*on(device, x, rows, cols))
    assert_close(y, y_ref, rtol=0, atol=0, name="y")
    assert_close(s3_pool2d_backward(on(device, gy)[0], saved), gx_ref, rtol=1e-15, atol=1e-15, name="gx")


def test_s3_layer(device):
    require(device, "s3_pool2d")
    x = np.random.default_rng(2).standard_normal((2, 2, 8, 8)).astype(np.float32)
    layer = S3Pool2d()
    state = init.get_rng_state()
    y = host(layer.forward(on(device, x)[0]))
    rows, cols = host(layer.last_rows), host(layer.last_cols)
    np.testing.assert_array_equal(y, stride1_max(x)[:, :, rows][:, :, :, cols])
    init.set_rng_state(state)
    np.testing.assert_array_equal(S3Pool2d().forward(x), y)          # the same draw on the CPU
    assert layer.backward(on(device, np.ones(y.shape, np.float32))[0]).shape == x.shape
    layer.eval()
    assert_close(layer.forward(on(device, x)[0]), avg_pool2d_forward(stride1_max(x), 2, 2), rtol=1e-6, atol=1e-6,
                 name="eval")
    assert layer.last_rows is None
    assert S3Pool2d(grid=4).forward(x).shape == (2, 2, 4, 4)


def test_s3_errors_name_the_argument():
    x = np.ones((1, 1, 4, 4))
    rows = np.array([0, 2])
    with pytest.raises(ValueError, match="grid: expected None .* or an even int >= 2, got 3"):
        S3Pool2d(grid=3)
    with pytest.raises(ValueError, match="grid"):
        s3_draw(np.random.default_rng(0), 4, 4, grid=0)
    with pytest.raises(TypeError, match="rng: expected a numpy.random.Generator"):
        s3_draw(0, 4, 4)
    with pytest.raises(ValueError, match="rows, cols: expected both"):
        s3_pool2d_forward(x, rows, None)
    with pytest.raises(ValueError, match=r"rows: expected shape \(2,\)"):
        s3_pool2d_forward(x, np.array([0]), rows)
    with pytest.raises(ValueError, match="cols: expected increasing indices in"):
        s3_pool2d_forward(x, rows, np.array([2, 0]))
    with pytest.raises(TypeError, match="rows: expected an integer array"):
        s3_pool2d_forward(x, rows.astype(float), rows)
    with pytest.raises(ValueError, match="x: expected H and W >= 2"):
        s3_pool2d_forward(np.ones((1, 1, 1, 4)))
    y, saved = s3_pool2d_forward(x, rows, rows)
    with pytest.raises(TypeError, match="saved: expected the S3Saved"):
        s3_pool2d_backward(y, None)
    with pytest.raises(ValueError, match="gy"):
        s3_pool2d_backward(np.ones((1, 1, 3, 2)), saved)
