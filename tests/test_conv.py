"""Conv2d: the im2col/col2im lowering against the plain NumPy reference, central differences in
float64, the buffer-reuse and chunking paths, and every bad input."""
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from helpers import assert_close, seeds, gpu_pending

from minignn import backend
from minignn.gradcheck import gradcheck
from minignn.layers.conv import Conv2d, col2im, conv2d_backward, conv2d_forward, im2col
from minignn.layers.conv.reference import conv2d_backward_ref, conv2d_forward_ref

# the `device` fixture is a plain string, so reusing it across generated inputs is safe
device_ok = settings(suppress_health_check=list(settings().suppress_health_check) + [HealthCheck.function_scoped_fixture])
dtypes = st.sampled_from([np.float32, np.float64])


@st.composite
def geometries(draw, max_n=3, max_c=4, max_k=5, max_extra=6):
    """(N, C, O, H, W, (kh, kw), (sh, sw), (ph, pw)) with the kernel fitting the padded input;
    H != W, non-square kernels and strides that do not tile the input all occur."""
    kh, kw = draw(st.integers(1, max_k)), draw(st.integers(1, max_k))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, min(2, kh))), draw(st.integers(0, min(2, kw)))
    if draw(st.booleans()):
        # "same" width at stride 1 (Wo == W: 3x3 padding 1, 1x1, 5x5 padding 2...), the
        # kernels' shifted-copy path; the rows keep any kernel, stride and padding
        kw = draw(st.sampled_from([1, 3, 5]))
        sw, pw = 1, kw // 2
        if draw(st.booleans()):
            sh, kh, ph = 1, kw, pw
    h = max(1, kh - 2 * ph + draw(st.integers(0, max_extra)))
    w = max(1, kw - 2 * pw + draw(st.integers(0, max_extra)))
    return (draw(st.integers(1, max_n)), draw(st.integers(1, max_c)), draw(st.integers(1, max_c)),
            h, w, (kh, kw), (sh, sw), (ph, pw))


def tol(dtype):
    return dict(rtol=1e-4, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-11, atol=1e-12)


def make(geo, dtype, seed, bias=True):
    n, c, o, h, w, k, s, p = geo
    rng = np.random.default_rng(seed)
    m = Conv2d(c, o, k, s, p, bias=bias, rng=rng).to(dtype=dtype)
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    return m, x, rng



# ---------------------------------------------------------------------------------------------
# fast path vs the NumPy reference
# ---------------------------------------------------------------------------------------------
@device_ok
@given(geo=geometries(), dtype=dtypes, bias=st.booleans(), chunked=st.booleans(), seed=seeds)
def test_forward_backward_match_reference(device, geo, dtype, bias, chunked, seed):
    m, x, rng = make(geo, dtype, seed, bias)
    if chunked:  # one image per column buffer: the chunked path that recomputes columns in backward
        m.max_cols_bytes = 1
    xd = backend.to_device(x, device)
    if gpu_pending(device, "conv2d", lambda: m.to(device="gpu").forward(xd)):
        return
    w = m.weight.data
    b = None if m.bias is None else m.bias.data
    y = m.forward(xd)
    y_ref = conv2d_forward_ref(x, w, b, m.stride, m.padding)
    assert y.shape == y_ref.shape and y.dtype == dtype
    assert_close(y, y_ref, name="y", **tol(dtype))

    gy = rng.standard_normal(y.shape).astype(dtype)
    gx = m.backward(backend.to_device(gy, device))
    gx_ref, gw_ref, gb_ref = conv2d_backward_ref(x, w, gy, m.stride, m.padding)
    assert gx.shape == x.shape and gx.dtype == dtype
    assert_close(gx, gx_ref, name="gx", **tol(dtype))
    assert_close(m.weight.grad, gw_ref, name="gw", **tol(dtype))
    if bias:
        assert_close(m.bias.grad, gb_ref, name="gb", **tol(dtype))

    # gradients ADD into .grad; a second backward from the same forward recomputes the columns
    gx2 = m.backward(gy)
    assert_close(gx2, gx_ref, name="gx (second backward)", **tol(dtype))
    assert_close(m.weight.grad, 2 * gw_ref, name="gw accumulated", **tol(dtype))
    if bias:
        assert_close(m.bias.grad, 2 * gb_ref, name="gb accumulated", **tol(dtype))


@given(geo=geometries(max_n=2, max_c=3, max_k=3, max_extra=3), chunked=st.booleans(), seed=seeds)
def test_gradcheck_input_weight_bias(geo, chunked, seed):
    m, x, _ = make(geo, np.float64, seed)
    if chunked:
        m.max_cols_bytes = 1
    gradcheck(m, x, max_checks=12, seed=seed)


@given(geo=geometries(), seed=seeds)
def test_float32_agrees_with_float64(geo, seed):
    m64, x, rng = make(geo, np.float64, seed)
    m32 = Conv2d(*geo[1:3], geo[5], geo[6], geo[7])
    m32.load_state_dict(m64.state_dict())
    y64 = m64.forward(x)
    y32 = m32.forward(x.astype(np.float32))
    assert y32.dtype == np.float32
    assert_close(y32, y64, name="y float32 vs float64", rtol=1e-4, atol=1e-5)
    gy = rng.standard_normal(y64.shape)
    gx64, gx32 = m64.backward(gy), m32.backward(gy.astype(np.float32))
    assert_close(gx32, gx64, name="gx float32 vs float64", rtol=1e-4, atol=1e-5)
    assert_close(m32.weight.grad, m64.weight.grad, name="gw float32 vs float64", rtol=1e-4, atol=1e-4)
    assert_close(m32.bias.grad, m64.bias.grad, name="gb float32 vs float64", rtol=1e-4, atol=1e-4)


@given(geo=geometries(), seed=seeds)
def test_col2im_is_the_adjoint_of_im2col(geo, seed):
    """<im2col(x), c> == <x, col2im(c)> for every x and c: col2im is exactly the transpose."""
    n, ch, _, h, w, k, s, p = geo
    rng = np.random.default_rng(seed)
    ho = (h + 2 * p[0] - k[0]) // s[0] + 1
    wo = (w + 2 * p[1] - k[1]) // s[1] + 1
    x = rng.standard_normal((n, ch, h, w))
    c = rng.standard_normal((ch * k[0] * k[1], n * ho * wo))
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
# bad inputs: each error names the argument, the expectation and what was given
# ---------------------------------------------------------------------------------------------
def test_errors():
    m = Conv2d(3, 4, 3, padding=1)
    x = np.zeros((2, 3, 5, 5), np.float32)
    with pytest.raises(RuntimeError, match="backward called before forward"):
        m.backward(np.zeros((2, 4, 5, 5), np.float32))
    with pytest.raises(ValueError, match=r"x: expected a 4-D array \(N, C, H, W\), got shape \(3, 5, 5\)"):
        m.forward(x[0])
    with pytest.raises(ValueError, match="x: expected 3 channels at axis 1, got 2"):
        m.forward(x[:, :2])
    with pytest.raises(TypeError, match="x: expected dtype float32 or float64, got int64"):
        m.forward(x.astype(np.int64))
    with pytest.raises(TypeError, match=r"x: expected dtype float32 \(the parameters' dtype\), got float64"):
        m.forward(x.astype(np.float64))
    with pytest.raises(ValueError, match="kernel_size: expected at most the padded input H = 1 \\+ 2\\*1 = 3, got kernel H size 5"):
        Conv2d(3, 4, 5, padding=1).forward(np.zeros((1, 3, 1, 9), np.float32))
    with pytest.raises(ValueError, match="padded input W = 2 \\+ 2\\*0 = 2, got kernel W size 3"):
        Conv2d(3, 4, 3).forward(np.zeros((1, 3, 9, 2), np.float32))
    y = m.forward(x)
    with pytest.raises(ValueError, match=r"gy: expected shape \(2, 4, 5, 5\) \(the forward output's\), got \(2, 4, 5, 4\)"):
        m.backward(np.zeros((2, 4, 5, 4), np.float32))
    with pytest.raises(TypeError, match=r"gy: expected dtype float32 \(the forward output's\), got float64"):
        m.backward(y.astype(np.float64))
    with pytest.raises(TypeError, match="gy: expected dtype float32 or float64, got int32"):
        m.backward(y.astype(np.int32))
    for kwargs, match in [(dict(kernel_size=0), "kernel_size: expected an integer >= 1"),
                          (dict(kernel_size=(3, 3, 3)), "kernel_size: expected an integer >= 1 or a pair"),
                          (dict(stride=0), "stride: expected an integer >= 1"),
                          (dict(padding=-1), "padding: expected an integer >= 0"),
                          (dict(in_channels=0), "in_channels: expected an integer >= 1, got 0"),
                          (dict(out_channels=2.5), "out_channels: expected an integer >= 1, got 2.5")]:
        args = dict(in_channels=3, out_channels=4, kernel_size=3) | kwargs
        with pytest.raises(ValueError, match=match):
            Conv2d(**args)


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
# plain-Python kernels and an independent oracle
# ---------------------------------------------------------------------------------------------
def test_kernels_run_without_jit():
    """NUMBA_DISABLE_JIT=1 runs the kernels as plain Python with the same results."""
    code = (
        "import numpy as np\n"
        "from minignn.layers.conv import Conv2d\n"
        "from minignn.layers.conv.reference import conv2d_forward_ref, conv2d_backward_ref\n"
        "rng = np.random.default_rng(0)\n"
        "m = Conv2d(2, 3, (3, 2), stride=(2, 1), padding=(1, 2), rng=rng).to(dtype=np.float64)\n"
        "x = rng.standard_normal((2, 2, 5, 4)); y = m.forward(x); gy = rng.standard_normal(y.shape)\n"
        "gx = m.backward(gy)\n"
        "gx_r, gw_r, _ = conv2d_backward_ref(x, m.weight.data, gy, m.stride, m.padding)\n"
        "assert np.allclose(y, conv2d_forward_ref(x, m.weight.data, m.bias.data, m.stride, m.padding))\n"
        "assert np.allclose(gx, gx_r) and np.allclose(m.weight.grad, gw_r)\n"
        "import minignn.layers.conv.cpu as k; assert not hasattr(k.im2col_cpu, 'signatures')\n"
        "print('ok')\n")
    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


@given(geo=geometries(), seed=seeds)
def test_matches_torch(geo, seed):
    torch = pytest.importorskip("torch")
    m, x, rng = make(geo, np.float64, seed)
    y = m.forward(x)
    gy = rng.standard_normal(y.shape)
    gx = m.backward(gy)
    tx = torch.from_numpy(x).requires_grad_(True)
    tw = torch.from_numpy(m.weight.data.copy()).requires_grad_(True)
    tb = torch.from_numpy(m.bias.data.copy()).requires_grad_(True)
    ty = torch.nn.functional.conv2d(tx, tw, tb, stride=m.stride, padding=m.padding)
    ty.backward(torch.from_numpy(gy))
    assert_close(y, ty.detach().numpy(), name="y vs torch", rtol=1e-10, atol=1e-12)
    assert_close(gx, tx.grad.numpy(), name="gx vs torch", rtol=1e-10, atol=1e-12)
    assert_close(m.weight.grad, tw.grad.numpy(), name="gw vs torch", rtol=1e-10, atol=1e-12)
    assert_close(m.bias.grad, tb.grad.numpy(), name="gb vs torch", rtol=1e-10, atol=1e-12)
