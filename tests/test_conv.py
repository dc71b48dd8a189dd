"""Conv2d: what is specific to the convolution. The contract suite (tests/test_ops.py) checks
conv2d and im2col/col2im against their references and central differences on every device;
here: the layer's gradients adding up and its second backward, col2im as the adjoint of im2col
and the column layout, the buffer reuse, chunking and aliasing paths, init, and every bad input."""
import numpy as np
import pytest
from hypothesis import given, strategies as st
from helpers import HypothesisDraw, assert_close, device_ok, dtypes, require, seeds

from minignn import backend
from minignn.layers.conv import Conv2d, col2im, conv2d_backward, conv2d_forward, im2col
from minignn.layers.conv.reference import conv2d_backward_ref, conv2d_forward_ref
from minignn.ops import OPS


def conv_case(data, dtype):
    """A Conv2d holding the weights (and bias, or none) of a case of the conv2d op's sampler, its
    x, its column-buffer cap (one image per buffer in one draw of three: the chunked path), and
    a generator."""
    d = HypothesisDraw(data)
    case = OPS["conv2d"].sample(d, dtype)
    x, w, b = case.inputs
    m = Conv2d(w.shape[1], w.shape[0], w.shape[2:], case.params["stride"], case.params["padding"],
               bias=b is not None).to(dtype=dtype)
    m.weight.data[...] = w
    if b is not None:
        m.bias.data[...] = b
    m.max_cols_bytes = case.params["max_cols_bytes"]
    return m, x, d.rng


# ---------------------------------------------------------------------------------------------
# the layer: gradients accumulate, a second backward recomputes the columns
# ---------------------------------------------------------------------------------------------
@device_ok
@given(data=st.data(), dtype=dtypes)
def test_gradients_add_up_and_a_second_backward_recomputes_the_columns(device, data, dtype):
    require(device, "conv2d")
    m, x, rng = conv_case(data, dtype)
    w = m.weight.data.copy()
    b = None if m.bias is None else m.bias.data.copy()
    m.to(device=device)
    y = m.forward(backend.to_device(x, device))
    (y_op,), saved = OPS["conv2d"].forward(x, w, b, stride=m.stride, padding=m.padding)
    tol = OPS["conv2d"].tol(dtype)
    assert_close(y, y_op, name="y of the layer vs the op", **tol)
    gy = rng.standard_normal(y.shape).astype(dtype)
    gx_op, gw_op, gb_op = OPS["conv2d"].backward(saved, gy)
    gys = backend.to_device(gy, device)
    for k in (1, 2):  # the backward consumed the columns; the second one recomputes them
        assert_close(m.backward(gys), gx_op, name=f"gx (backward {k})", **tol)
        assert_close(m.weight.grad, k * gw_op, name=f"weight.grad after {k} backward(s)", **tol)
        if b is not None:
            assert_close(m.bias.grad, k * gb_op, name=f"bias.grad after {k} backward(s)", **tol)


@given(data=st.data())
def test_col2im_is_the_adjoint_of_im2col(data):
    """<im2col(x), c> == <x, col2im(c)> for every x and c: col2im is exactly the transpose."""
    d = HypothesisDraw(data)
    case = OPS["im2col"].sample(d, np.float64)
    (x,), (k, s, p) = case.inputs, (case.params["kernel"], case.params["stride"], case.params["padding"])
    ho = (x.shape[2] + 2 * p[0] - k[0]) // s[0] + 1
    wo = (x.shape[3] + 2 * p[1] - k[1]) // s[1] + 1
    c = d.rng.standard_normal((x.shape[1] * k[0] * k[1], x.shape[0] * ho * wo))
    cols = im2col(x, k, s, p, (ho, wo))
    gx = col2im(c, x.shape, k, s, p, (ho, wo))
    assert cols.shape == c.shape and gx.shape == x.shape
    np.testing.assert_allclose(np.sum(cols * c), np.sum(x * gx), rtol=1e-10, atol=1e-10)
    # garbage in a reused output buffer must not leak through (both kernels overwrite)
    cols_buf = np.full_like(c, np.nan)
    gx_buf = np.full_like(x, np.nan)
    assert_close(im2col(x, k, s, p, (ho, wo), cols_buf), cols, name="im2col into a dirty buffer")
    assert_close(col2im(c, x.shape, k, s, p, (ho, wo), gx_buf), gx, name="col2im into a dirty buffer")


def test_im2col_layout():
    """Row (c, i, j), column (n, oh, ow) holds x[n, c, oh*sh + i - ph, ow*sw + j - pw], 0 outside."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 5, 4))
    k, s, p = (2, 3), (2, 1), (1, 2)
    ho, wo = (5 + 2 - 2) // 2 + 1, (4 + 4 - 3) // 1 + 1
    cols = im2col(x, k, s, p, (ho, wo))
    for c in range(3):
        for i in range(2):
            for j in range(3):
                for n in range(2):
                    for oh in range(ho):
                        for ow in range(wo):
                            hh, ww = oh * 2 + i - 1, ow + j - 2
                            inside = 0 <= hh < 5 and 0 <= ww < 4
                            assert cols[(c * 2 + i) * 3 + j, (n * ho + oh) * wo + ow] == (x[n, c, hh, ww] if inside else 0)


# ---------------------------------------------------------------------------------------------
# buffers: reuse across calls, batch size changes, the functional API
# ---------------------------------------------------------------------------------------------
@given(seed=seeds, sizes=st.lists(st.integers(1, 4), min_size=2, max_size=4))
def test_buffer_reuse_across_batch_sizes(seed, sizes):
    rng = np.random.default_rng(seed)
    m = Conv2d(2, 3, (3, 2), stride=(1, 2), padding=1, rng=rng).to(dtype=np.float64)
    w, b = m.weight.data, m.bias.data
    for n in sizes:
        x = rng.standard_normal((n, 2, 6, 5))
        y = m.forward(x)
        assert_close(y, conv2d_forward_ref(x, w, b, m.stride, m.padding), name=f"y (N={n})")
        gy = rng.standard_normal(y.shape)
        m.zero_grad()
        gx = m.backward(gy)
        gx_ref, gw_ref, _ = conv2d_backward_ref(x, w, gy, m.stride, m.padding)
        assert_close(gx, gx_ref, name=f"gx (N={n})")
        assert_close(m.weight.grad, gw_ref, name=f"gw (N={n})")


def test_outputs_do_not_alias_the_buffers():
    """y from one step must survive the next forward (downstream layers keep it)."""
    rng = np.random.default_rng(2)
    m = Conv2d(2, 3, 3, padding=1, rng=rng)
    x1, x2 = rng.standard_normal((2, 2, 4, 4)).astype(np.float32), rng.standard_normal((2, 2, 4, 4)).astype(np.float32)
    y1 = m.forward(x1)
    y1_copy = y1.copy()
    gx1 = m.backward(np.ones_like(y1))
    gx1_copy = gx1.copy()
    m.forward(x2)
    m.backward(np.ones_like(y1))
    np.testing.assert_array_equal(y1, y1_copy)
    np.testing.assert_array_equal(gx1, gx1_copy)


def test_functional_api_with_a_shared_workspace():
    """A later forward on the same workspace must not corrupt an earlier forward's backward."""
    rng = np.random.default_rng(3)
    w, b = rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4)
    xa, xb = rng.standard_normal((2, 3, 6, 7)), rng.standard_normal((2, 3, 6, 7))
    ws = {}
    ya, saved_a = conv2d_forward(xa, w, b, stride=2, padding=1, workspace=ws)
    yb, saved_b = conv2d_forward(xb, w, b, stride=2, padding=1, workspace=ws)
    assert_close(ya, conv2d_forward_ref(xa, w, b, (2, 2), (1, 1)), name="ya")
    gy = rng.standard_normal(ya.shape)
    gx, gw, gb = conv2d_backward(gy, saved_a)
    gx_ref, gw_ref, gb_ref = conv2d_backward_ref(xa, w, gy, (2, 2), (1, 1))
    assert_close(gx, gx_ref, name="gx of the first forward")
    assert_close(gw, gw_ref, name="gw of the first forward")
    assert_close(gb, gb_ref, name="gb")
    gx_none, gw2, gb2 = conv2d_backward(gy, saved_b, need_gx=False)
    assert gx_none is None
    assert_close(gw2, conv2d_backward_ref(xb, w, gy, (2, 2), (1, 1))[1], name="gw of the second forward")
    _, _, gb_nobias = conv2d_backward(gy, conv2d_forward(xa, w, None, 2, 1)[1])
    assert gb_nobias is None


def test_needs_input_grad_false_skips_gx_only():
    rng = np.random.default_rng(4)
    m = Conv2d(3, 2, 3, padding=1, rng=rng).to(dtype=np.float64)
    x = rng.standard_normal((2, 3, 5, 5))
    gy = rng.standard_normal((2, 2, 5, 5))
    m.forward(x)
    m.backward(gy)
    gw, gb = m.weight.grad.copy(), m.bias.grad.copy()
    m.zero_grad()
    m.needs_input_grad = False
    m.forward(x)
    assert m.backward(gy) is None
    assert_close(m.weight.grad, gw, name="gw")
    assert_close(m.bias.grad, gb, name="gb")


def test_init_and_repr():
    m = Conv2d(4, 6, (3, 2), stride=2, padding=(1, 0), rng=np.random.default_rng(0))
    bound = 1 / np.sqrt(4 * 3 * 2)
    assert m.weight.shape == (6, 4, 3, 2) and m.bias.shape == (6,)
    assert m.weight.dtype == np.float32 and m.bias.dtype == np.float32
    assert np.abs(m.weight.data).max() <= bound and np.abs(m.bias.data).max() <= bound
    assert np.abs(m.weight.data).max() > bound / 2  # drawn over the whole range, not a tiny one
    assert [n for n, _ in m.named_parameters()] == ["weight", "bias"]
    m2 = Conv2d(4, 6, (3, 2), stride=2, padding=(1, 0), rng=np.random.default_rng(0))
    np.testing.assert_array_equal(m.weight.data, m2.weight.data)
    assert [n for n, _ in Conv2d(1, 1, 1, bias=False).named_parameters()] == ["weight"]
    assert "kernel_size=(3, 2)" in repr(m) and "padding=(1, 0)" in repr(m)


# ---------------------------------------------------------------------------------------------
# bad inputs
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("call, error, match", [
    (lambda m, x, y: m.forward(x[0]), ValueError, r"x: expected a 4-D array \(N, C, H, W\), got shape \(3, 5, 5\)"),
    (lambda m, x, y: m.forward(x[:, :2]), ValueError, "x: expected 3 channels at axis 1, got 2"),
    (lambda m, x, y: m.forward(x.astype(np.int64)), TypeError, "x: expected dtype float32 or float64, got int64"),
    (lambda m, x, y: m.forward(x.astype(np.float64)), TypeError,
     r"x: expected dtype float32 \(the parameters' dtype\), got float64"),
    (lambda m, x, y: Conv2d(3, 4, 5, padding=1).forward(x[:1, :, :1]), ValueError,
     r"kernel_size: expected at most the padded input H = 1 \+ 2\*1 = 3, got kernel H size 5"),
    (lambda m, x, y: Conv2d(3, 4, 3).forward(x[:1, :, :, :2]), ValueError,
     r"padded input W = 2 \+ 2\*0 = 2, got kernel W size 3"),
    (lambda m, x, y: m.backward(y[..., :4]), ValueError,
     r"gy: expected shape \(2, 4, 5, 5\) \(the forward output's\), got \(2, 4, 5, 4\)"),
    (lambda m, x, y: m.backward(y.astype(np.float64)), TypeError,
     r"gy: expected dtype float32 \(the forward output's\), got float64"),
    (lambda m, x, y: m.backward(y.astype(np.int32)), TypeError, "gy: expected dtype float32 or float64, got int32"),
], ids=["x 3-D", "x channels", "x int", "x float64", "kernel H too large", "kernel W too large", "gy shape",
        "gy float64", "gy int"])
def test_bad_input(call, error, match):
    """Each error names the argument, the expectation and what was given."""
    m = Conv2d(3, 4, 3, padding=1)
    x = np.zeros((2, 3, 5, 5), np.float32)
    y = m.forward(x)
    with pytest.raises(error, match=match):
        call(m, x, y)


def test_backward_before_forward():
    with pytest.raises(RuntimeError, match="Conv2d.backward called before forward"):
        Conv2d(3, 4, 3).backward(np.zeros((2, 4, 5, 5), np.float32))


@pytest.mark.parametrize("kwargs, match", [
    (dict(kernel_size=0), "kernel_size: expected an integer >= 1"),
    (dict(kernel_size=(3, 3, 3)), "kernel_size: expected an integer >= 1 or a pair"),
    (dict(stride=0), "stride: expected an integer >= 1"),
    (dict(padding=-1), "padding: expected an integer >= 0"),
    (dict(in_channels=0), "in_channels: expected an integer >= 1, got 0"),
    (dict(out_channels=2.5), "out_channels: expected an integer >= 1, got 2.5")])
def test_bad_construction(kwargs, match):
    with pytest.raises(ValueError, match="Conv2d: " + match):
        Conv2d(**(dict(in_channels=3, out_channels=4, kernel_size=3) | kwargs))


def test_functional_errors():
    w = np.zeros((4, 3, 3, 3))
    with pytest.raises(ValueError, match=r"w: expected a 4-D array"):
        conv2d_forward(np.zeros((1, 3, 5, 5)), w[0])
    with pytest.raises(ValueError, match="x: expected 3 channels at axis 1, got 2"):
        conv2d_forward(np.zeros((1, 2, 5, 5)), w)
    with pytest.raises(ValueError, match="b: expected 4 channels at axis 0, got 3"):
        conv2d_forward(np.zeros((1, 3, 5, 5)), w, np.zeros(3))
    with pytest.raises(TypeError, match=r"b: expected dtype float64 \(the parameters' dtype\), got float32"):
        conv2d_forward(np.zeros((1, 3, 5, 5)), w, np.zeros(4, np.float32))
    _, saved = conv2d_forward(np.zeros((1, 3, 5, 5)), w)
    with pytest.raises(ValueError, match=r"gy: expected shape \(1, 4, 3, 3\)"):
        conv2d_backward(np.zeros((1, 4, 3, 4)), saved)


# ---------------------------------------------------------------------------------------------
# an independent oracle
# ---------------------------------------------------------------------------------------------
@given(data=st.data())
def test_matches_torch(data):
    torch = pytest.importorskip("torch")
    m, x, rng = conv_case(data, np.float64)
    y = m.forward(x)
    gy = rng.standard_normal(y.shape)
    gx = m.backward(gy)
    t = torch.nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding,
                        bias=m.bias is not None).double()
    with torch.no_grad():
        t.weight.copy_(torch.from_numpy(m.weight.data))
        if m.bias is not None:
            t.bias.copy_(torch.from_numpy(m.bias.data))
    tx = torch.from_numpy(x).requires_grad_(True)
    ty = t(tx)
    ty.backward(torch.from_numpy(gy))
    pairs = [("y", y, ty.detach()), ("gx", gx, tx.grad), ("gw", m.weight.grad, t.weight.grad)]
    if m.bias is not None:
        pairs.append(("gb", m.bias.grad, t.bias.grad))
    for name, ours, theirs in pairs:
        assert_close(ours, theirs.numpy(), name=f"{name} vs torch", rtol=1e-10, atol=1e-12)
