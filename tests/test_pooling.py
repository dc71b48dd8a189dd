"""MaxPool2d, AvgPool2d and GlobalAvgPool2d: what is specific to pooling. The contract suite
(tests/test_ops.py) checks max_pool2d, avg_pool2d and global_avg_pool2d against their references
and central differences on every device; here: the tie rule and NaN propagation of max pooling,
padding that never wins or counts, the argmax layout and dtype, the layers against their
functionals, and every error case."""
import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st
from helpers import HypothesisDraw, assert_close, device_ok, distinct_array, dtypes, require

from minignn import backend, cases
from minignn.layers.pooling import (AvgPool2d, GlobalAvgPool2d, MaxPool2d, argmax_dtype, avg_pool2d_backward,
                                    avg_pool2d_forward, max_pool2d_backward, max_pool2d_forward)
from minignn.layers.pooling import cpu as pcpu
from minignn.layers.pooling.reference import maxpool2d_backward_ref, maxpool2d_forward_ref
from minignn.ops import OPS


def draw_input(data, max_k=4):
    """A window (one draw in four the 2x2 stride-2 fast path) and an x shape it fits, from the
    shared samplers of minignn.cases."""
    d = HypothesisDraw(data)
    k, s, p = cases.window(d, max_k=max_k)
    n, c = cases.planes(d, min_n=1)
    return d, (n, c) + cases.spatial(d, k, p), k, s, p


def window_offsets_to_flat(arg, x_shape, k, s, p):
    """Kernel argmax (offset di*kw + dj inside the window) -> flat index h*W + w in the plane."""
    ho, wo = arg.shape[2:]
    di, dj = arg // k[1], arg % k[1]
    h = np.arange(ho)[:, None] * s[0] - p[0] + di
    w = np.arange(wo)[None, :] * s[1] - p[1] + dj
    return h * x_shape[3] + w


# ---------------------------------------------------------------------------------- max pooling
@device_ok
@given(data=st.data(), dtype=dtypes)
def test_maxpool_ties_go_to_the_first_maximum(device, data, dtype):
    """Few distinct values (the contract draws distinct ones): in every window the first maximum
    in row-major window order wins, in y, in the stored int8 offsets and so in gx."""
    require(device, "max_pool2d")
    d, shape, k, s, p = draw_input(data)
    x = np.round(d.rng.standard_normal(shape)).astype(dtype)
    y, arg = max_pool2d_forward(backend.to_device(x, device), k, s, p)
    y_ref, arg_ref = maxpool2d_forward_ref(x, k, s, p)
    np.testing.assert_array_equal(backend.to_numpy(y), y_ref)
    arg = backend.to_numpy(arg)
    assert arg.dtype == np.int8
    np.testing.assert_array_equal(window_offsets_to_flat(arg.astype(np.int64), shape, k, s, p), arg_ref)
    gy = d.rng.standard_normal(y_ref.shape).astype(dtype)
    gx = max_pool2d_backward(backend.to_device(gy, device), backend.to_device(arg, device), shape, k, s, p)
    assert_close(gx, maxpool2d_backward_ref(gy, arg_ref, shape), name="gx", **OPS["max_pool2d"].tol(dtype))


def test_maxpool_padding_never_wins():
    """All-negative input with padding: a padded cell (-inf) must never be the max."""
    x = -1.0 - np.arange(2 * 5 * 5, dtype=np.float64).reshape(1, 2, 5, 5)
    y = MaxPool2d(3, 2, 1).forward(x)
    y_ref, _ = maxpool2d_forward_ref(x, (3, 3), (2, 2), (1, 1))
    assert np.all(np.isfinite(y)) and np.all(y < 0)
    np.testing.assert_array_equal(y, y_ref)
    assert y[0, 0, 0, 0] == -1.0  # the window at the top-left corner holds x[0, 0, 0:2, 0:2]


def test_maxpool_overlapping_windows_accumulate():
    """stride 1, kernel 3: the global max is in 9 windows and receives all of their gradients."""
    x = np.zeros((1, 1, 5, 5))
    x[0, 0, 2, 2] = 10.0
    m = MaxPool2d(3, 1)
    y = m.forward(x)
    assert np.all(y == 10.0)
    gx = m.backward(np.ones_like(y))
    assert gx[0, 0, 2, 2] == 9.0 and gx.sum() == 9.0


def test_maxpool_nan_propagates():
    """A NaN wins its windows (and takes their gradient), in the 2x2 fast path and the general one."""
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    x[0, 0, 0, 1] = np.nan
    for k, s, p in [(2, 2, 0), (3, 1, 1)]:
        m = MaxPool2d(k, s, p)
        y = m.forward(x)
        y_ref, arg_ref = maxpool2d_forward_ref(x, (k, k), (s, s), (p, p))
        assert np.isnan(y[0, 0, 0, 0]), (k, s, p)
        np.testing.assert_array_equal(np.isnan(y), np.isnan(y_ref))
        gy = np.ones_like(y)
        np.testing.assert_array_equal(m.backward(gy), maxpool2d_backward_ref(gy, arg_ref, x.shape))


@given(data=st.data(), dtype=dtypes)
def test_maxpool_first_nan_of_a_window_takes_the_gradient(data, dtype):
    """The rule of every max-like kernel (max pooling, the GFGP global max): a NaN wins its window
    and the *first* NaN in row-major window order is the argmax (as numpy's argmax, the reference);
    2-5 NaNs anywhere, every geometry, both paths."""
    d, shape, k, s, p = draw_input(data)
    x = d.rng.standard_normal(shape).astype(dtype)
    n, c, h, w = shape
    for _ in range(d.int(2, 5)):
        x[d.int(0, n - 1), d.int(0, c - 1), d.int(0, h - 1), d.int(0, w - 1)] = np.nan
    y, arg = max_pool2d_forward(x, k, s, p)
    y_ref, arg_ref = maxpool2d_forward_ref(x, k, s, p)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(y_ref))
    np.testing.assert_array_equal(window_offsets_to_flat(arg.astype(np.int64), shape, k, s, p), arg_ref)
    gy = d.rng.standard_normal(y.shape).astype(dtype)
    assert_close(max_pool2d_backward(gy, arg, shape, k, s, p), maxpool2d_backward_ref(gy, arg_ref, shape),
                 name="gx", **OPS["max_pool2d"].tol(dtype))


def test_maxpool_large_kernel_uses_int32_offsets():
    """Kernels of more than 127 cells do not fit int8 offsets."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 2, 13, 12))
    y, arg = max_pool2d_forward(x, (12, 11), 1)
    assert arg.dtype == np.int32 and argmax_dtype((12, 11)) == np.int32 and argmax_dtype(11) == np.int8
    y_ref, arg_ref = maxpool2d_forward_ref(x, (12, 11), (1, 1), (0, 0))
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(window_offsets_to_flat(arg, x.shape, (12, 11), (1, 1), (0, 0)), arg_ref)
    gy = rng.standard_normal(y.shape)
    assert_close(max_pool2d_backward(gy, arg, x.shape, (12, 11), 1), maxpool2d_backward_ref(gy, arg_ref, x.shape))


# ------------------------------------------------------------------------------ average pooling
def test_avgpool_excludes_padding_from_the_count():
    """count_include_pad=False: a constant input stays constant, corners included."""
    x = np.full((1, 1, 4, 4), 3.0)
    y = AvgPool2d(3, 2, 1).forward(x)
    np.testing.assert_array_equal(y, np.full((1, 1, 2, 2), 3.0))
    m = AvgPool2d(3, 1, 1)
    m.forward(x)
    gx = m.backward(np.ones((1, 1, 4, 4)))
    # corner cell (0, 0) is in windows (0,0), (0,1), (1,0), (1,1), with 4, 6, 6, 9 real cells
    assert gx[0, 0, 0, 0] == pytest.approx(1 / 4 + 2 / 6 + 1 / 9)


def test_functional_pairs_match_the_layers():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 9, 7))
    for layer, fwd in [(MaxPool2d(3, 2, 1), max_pool2d_forward), (AvgPool2d(3, 2, 1), avg_pool2d_forward)]:
        y = layer.forward(x)
        out = fwd(x, 3, 2, 1)
        yf = out[0] if isinstance(out, tuple) else out
        np.testing.assert_array_equal(y, yf)
        gy = rng.standard_normal(y.shape)
        gx = layer.backward(gy)
        if isinstance(out, tuple):
            gxf = max_pool2d_backward(gy, out[1], x.shape, 3, 2, 1)
        else:
            gxf = avg_pool2d_backward(gy, x.shape, 3, 2, 1)
        np.testing.assert_array_equal(gx, gxf)


def test_non_contiguous_upstream_gradient():
    """A reversed view of gy gives the gradient of its contiguous copy (the contract draws only
    the inputs in other layouts)."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((5, 6, 3, 2)).transpose(3, 2, 1, 0)  # (2, 3, 6, 5), not C-contiguous
    for m in (MaxPool2d(2), AvgPool2d(2), GlobalAvgPool2d()):
        y = m.forward(x)
        gy = rng.standard_normal(y.shape[:-1] + (2 * y.shape[-1],))[..., ::-2]
        np.testing.assert_array_equal(m.backward(gy), m.backward(np.ascontiguousarray(gy)))


@pytest.mark.parametrize("k, s, p", [((2, 2), (2, 2), (0, 0)), ((3, 2), (2, 1), (1, 1))], ids=["2x2", "general"])
def test_kernels_overwrite_their_outputs(k, s, p):
    """The CPU kernels write every cell of y, argmax and gx (the public path hands them np.empty
    arrays): outputs prefilled with garbage come out as from fresh ones."""
    x = np.random.default_rng(5).standard_normal((2, 2, 5, 7))
    y_ref, arg = max_pool2d_forward(x, k, s, p)
    gy = np.random.default_rng(6).standard_normal(y_ref.shape)
    y, a, ya = np.full_like(y_ref, np.nan), np.full_like(arg, 99), np.full_like(y_ref, np.nan)
    gx, gxa = np.full(x.shape, np.nan), np.full(x.shape, np.nan)
    pcpu.maxpool2d_fwd_cpu(x, *k, *s, *p, y, a)
    pcpu.maxpool2d_bwd_cpu(gy, a, *k, *s, *p, gx)
    pcpu.avgpool2d_fwd_cpu(x, *k, *s, *p, ya)
    pcpu.avgpool2d_bwd_cpu(gy, *k, *s, *p, gxa)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(a, arg)
    np.testing.assert_array_equal(gx, max_pool2d_backward(gy, arg, x.shape, k, s, p))
    np.testing.assert_array_equal(ya, avg_pool2d_forward(x, k, s, p))
    np.testing.assert_array_equal(gxa, avg_pool2d_backward(gy, x.shape, k, s, p))


# ----------------------------------------------------------------------------------- errors
def test_construction_errors():
    with pytest.raises(ValueError, match=r"MaxPool2d: padding: expected smaller than kernel_size \(2, 2\)"):
        MaxPool2d(2, padding=2)
    with pytest.raises(ValueError, match=r"AvgPool2d: padding: expected smaller than kernel_size \(3, 1\)"):
        AvgPool2d((3, 1), padding=(1, 1))
    with pytest.raises(ValueError, match="MaxPool2d: kernel_size: expected an integer >= 1"):
        MaxPool2d(0)
    with pytest.raises(ValueError, match="AvgPool2d: stride: expected an integer >= 1"):
        AvgPool2d(2, stride=(1, 0))
    with pytest.raises(ValueError, match="MaxPool2d: padding: expected an integer >= 0"):
        MaxPool2d(3, padding=-1)
    with pytest.raises(ValueError, match="kernel_size: expected an integer >= 1 or a pair"):
        MaxPool2d(2.5)
    assert MaxPool2d(3).stride == (3, 3) and AvgPool2d((2, 3), 1).stride == (1, 1)
    assert "kernel_size=(2, 2)" in repr(MaxPool2d(2))


@pytest.mark.parametrize("make", [lambda: MaxPool2d(2), lambda: AvgPool2d(2)], ids=["max", "avg"])
def test_forward_and_backward_errors(make):
    m = make()
    name = type(m).__name__
    x = np.zeros((2, 3, 4, 4), dtype=np.float32)
    with pytest.raises(ValueError, match=rf"{name}.forward: x: expected a 4-D array .*got shape \(3, 4, 4\)"):
        m.forward(x[0])
    with pytest.raises(TypeError, match=rf"{name}.forward: x: expected dtype float32 or float64, got int64"):
        m.forward(np.zeros((2, 3, 4, 4), dtype=np.int64))
    with pytest.raises(ValueError, match=r"kernel_size: expected at most the padded input W = 1 \+ 2\*0 = 1, got kernel W size 2"):
        m.forward(np.zeros((2, 3, 4, 1), dtype=np.float32))
    with pytest.raises(RuntimeError, match=rf"{name}.backward called before forward"):
        m.backward(np.zeros((2, 3, 2, 2), dtype=np.float32))
    m.forward(x)
    with pytest.raises(ValueError, match=rf"{name}.backward: gy: expected shape \(2, 3, 2, 2\) .*got \(2, 3, 2, 3\)"):
        m.backward(np.zeros((2, 3, 2, 3), dtype=np.float32))
    with pytest.raises(TypeError, match=rf"{name}.backward: gy: expected dtype float32 .*got float64"):
        m.backward(np.zeros((2, 3, 2, 2)))
    with pytest.raises(TypeError, match=rf"{name}.backward: gy: expected dtype float32 or float64, got int32"):
        m.backward(np.zeros((2, 3, 2, 2), dtype=np.int32))


def test_functional_errors():
    x = np.zeros((1, 1, 4, 4))
    with pytest.raises(ValueError, match="max_pool2d_forward: padding: expected smaller than kernel_size"):
        max_pool2d_forward(x, 2, 1, 2)
    with pytest.raises(ValueError, match="avg_pool2d_forward: kernel_size: expected at most the padded input H"):
        avg_pool2d_forward(x, 7, 1, 1)
    _, arg = max_pool2d_forward(x, 2)
    with pytest.raises(ValueError, match=r"max_pool2d_backward: argmax: expected an integer array of shape \(1, 1, 2, 2\)"):
        max_pool2d_backward(np.zeros((1, 1, 2, 2)), arg.astype(np.float64), x.shape, 2)
    with pytest.raises(ValueError, match=r"avg_pool2d_backward: gy: expected shape \(1, 1, 2, 2\)"):
        avg_pool2d_backward(np.zeros((1, 1, 3, 2)), x.shape, 2)


def test_global_avgpool_errors():
    m = GlobalAvgPool2d()
    with pytest.raises(ValueError, match=r"GlobalAvgPool2d.forward: x: expected a 4-D array .*got shape \(2, 3\)"):
        m.forward(np.zeros((2, 3), dtype=np.float32))
    with pytest.raises(TypeError, match="GlobalAvgPool2d.forward: x: expected dtype float32 or float64, got int64"):
        m.forward(np.zeros((2, 3, 4, 4), dtype=np.int64))
    with pytest.raises(RuntimeError, match="GlobalAvgPool2d.backward called before forward"):
        m.backward(np.zeros((2, 3), dtype=np.float32))
    m.forward(np.zeros((2, 3, 4, 4), dtype=np.float32))
    with pytest.raises(ValueError, match=r"GlobalAvgPool2d.backward: gy: expected shape \(2, 3\) .*got \(2, 3, 1, 1\)"):
        m.backward(np.zeros((2, 3, 1, 1), dtype=np.float32))


# ---------------------------------------------------------------------------- against PyTorch
@settings(max_examples=10)
@given(data=st.data())
def test_against_torch(data):
    torch = pytest.importorskip("torch")
    d, shape, k, s, p = draw_input(data, max_k=3)
    assume(2 * p[0] <= k[0] and 2 * p[1] <= k[1])  # torch requires padding <= kernel/2
    x = distinct_array(d.rng, shape)
    gy = d.rng.standard_normal(MaxPool2d(k, s, p).forward(x).shape)
    for ours, theirs in [(MaxPool2d(k, s, p), torch.nn.MaxPool2d(k, s, p)),
                         (AvgPool2d(k, s, p), torch.nn.AvgPool2d(k, s, p, count_include_pad=False))]:
        tx = torch.from_numpy(x.copy()).requires_grad_(True)
        ty = theirs(tx)
        ty.backward(torch.from_numpy(gy))
        assert_close(ours.forward(x), ty.detach().numpy(), rtol=1e-12, atol=1e-12, name=f"{ours} y")
        assert_close(ours.backward(gy), tx.grad.numpy(), rtol=1e-12, atol=1e-12, name=f"{ours} gx")
