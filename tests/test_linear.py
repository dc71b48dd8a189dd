"""Linear: forward and backward against plain NumPy, central differences in float64, PyTorch's
initialisation (statistically), state and dtype moves, and every bad input."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from helpers import assert_close, seeds

from minignn import backend, init
from minignn.gradcheck import gradcheck
from minignn.layers import Linear

# the `device` fixture is a plain string, so reusing it across generated inputs is safe
device_ok = settings(suppress_health_check=list(settings().suppress_health_check) + [HealthCheck.function_scoped_fixture])
dtypes = st.sampled_from([np.float32, np.float64])
dims = st.tuples(st.integers(1, 5), st.integers(1, 9), st.integers(1, 7))  # (N, in, out): batch 1, odd sizes


def tol(dtype):
    return dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)


def make(dims, dtype, seed, bias=True):
    n, fin, fout = dims
    rng = np.random.default_rng(seed)
    m = Linear(fin, fout, bias=bias, rng=rng).to(dtype=dtype)
    x = rng.standard_normal((n, fin)).astype(dtype)
    return m, x, rng


@device_ok
@given(dims=dims, dtype=dtypes, bias=st.booleans(), seed=seeds)
def test_forward_backward_match_numpy(device, dims, dtype, bias, seed):
    m, x, rng = make(dims, dtype, seed, bias)
    w = m.weight.data.astype(np.float64)
    b = m.bias.data.astype(np.float64) if bias else np.zeros(dims[2])
    m.to(device=device)
    y = m.forward(backend.to_device(x, device))
    assert backend.device_of(y) == device and y.shape == (dims[0], dims[2]) and y.dtype == dtype
    x64 = x.astype(np.float64)
    # written out element by element: y[n, o] = sum_i x[n, i] w[o, i] + b[o]
    y_ref = np.einsum("ni,oi->no", x64, w) + b
    assert_close(y, y_ref, name="y", **tol(dtype))

    gy = rng.standard_normal(y.shape).astype(dtype)
    gx = m.backward(backend.to_device(gy, device))
    gy64 = gy.astype(np.float64)
    assert gx.shape == x.shape and gx.dtype == dtype
    assert_close(gx, np.einsum("no,oi->ni", gy64, w), name="gx", **tol(dtype))
    assert_close(m.weight.grad, np.einsum("no,ni->oi", gy64, x64), name="gw", **tol(dtype))
    if bias:
        assert_close(m.bias.grad, gy64.sum(axis=0), name="gb", **tol(dtype))
    # gradients ADD into .grad
    m.backward(backend.to_device(gy, device))
    assert_close(m.weight.grad, 2 * np.einsum("no,ni->oi", gy64, x64), name="gw accumulated", **tol(dtype))
    if bias:
        assert_close(m.bias.grad, 2 * gy64.sum(axis=0), name="gb accumulated", **tol(dtype))


@given(dims=dims, bias=st.booleans(), seed=seeds)
def test_gradcheck_input_weight_bias(dims, bias, seed):
    m, x, _ = make(dims, np.float32, seed, bias)
    gradcheck(m, x, max_checks=15, seed=seed)


def test_non_contiguous_input():
    rng = np.random.default_rng(0)
    m = Linear(4, 3, rng=rng).to(dtype=np.float64)
    x = rng.standard_normal((8, 6))[::2, 1:5]  # a strided view, (4, 4)
    assert not x.flags.c_contiguous
    assert_close(m.forward(x), x @ m.weight.data.T + m.bias.data, name="y of a strided view")
    gy = rng.standard_normal((4, 3))[:, ::-1]
    assert_close(m.backward(gy), gy @ m.weight.data, name="gx of a strided gy")


# ---------------------------------------------------------------------------------------------
# initialisation as PyTorch: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fin, fout", [(1, 300), (7, 100), (64, 48), (500, 20)])
def test_init_range_and_distribution(fin, fout):
    m = Linear(fin, fout, rng=np.random.default_rng(fin))
    bound = 1 / np.sqrt(fin)
    assert m.weight.shape == (fout, fin) and m.bias.shape == (fout,)
    assert m.weight.dtype == np.float32 and m.bias.dtype == np.float32
    for name, a in (("weight", m.weight.data.astype(np.float64)), ("bias", m.bias.data.astype(np.float64))):
        n = a.size
        assert np.abs(a).max() <= bound, f"{name} outside [-1/sqrt(fan_in), 1/sqrt(fan_in)]"
        # U(-b, b): mean 0 and std b/sqrt(3); the tolerances are > 5 standard errors
        assert abs(a.mean()) < 5 * bound / np.sqrt(3 * n), f"{name} mean {a.mean()}"
        # relative standard error of the sample std of a uniform: sqrt(0.8 / n) / 2
        assert abs(a.std() / (bound / np.sqrt(3)) - 1) < 2.5 * np.sqrt(0.8 / n) + 1e-3, f"{name} std {a.std()}"
        # spread over the whole interval: both ends reached within 10% (P(miss) < 1e-6 for n >= 300)
        if n >= 300:
            assert a.max() > 0.9 * bound and a.min() < -0.9 * bound, name
    # the bias is not the weight's first row (independent draws)
    assert not np.array_equal(m.bias.data, m.weight.data[:, 0])


def test_init_is_reproducible():
    a = Linear(5, 4, rng=np.random.default_rng(3))
    b = Linear(5, 4, rng=np.random.default_rng(3))
    np.testing.assert_array_equal(a.weight.data, b.weight.data)
    np.testing.assert_array_equal(a.bias.data, b.bias.data)
    init.manual_seed(11)
    c = Linear(5, 4)
    init.manual_seed(11)
    d = Linear(5, 4)
    e = Linear(5, 4)  # the library generator moved on
    np.testing.assert_array_equal(c.weight.data, d.weight.data)
    np.testing.assert_array_equal(c.bias.data, d.bias.data)
    assert not np.array_equal(d.weight.data, e.weight.data)


def test_no_bias():
    m = Linear(3, 2, bias=False, rng=np.random.default_rng(0)).to(dtype=np.float64)
    assert m.bias is None
    assert [n for n, _ in m.named_parameters()] == ["weight"]
    assert list(m.state_dict()) == ["weight"]
    assert repr(m) == "Linear(3, 2, bias=False)" and repr(Linear(3, 2)) == "Linear(3, 2)"
    x = np.random.default_rng(1).standard_normal((4, 3))
    assert_close(m.forward(x), x @ m.weight.data.T, name="y without bias")
    gradcheck(m, x, max_checks=None)


# ---------------------------------------------------------------------------------------------
# state and dtype moves
# ---------------------------------------------------------------------------------------------
def test_state_dict_round_trip_and_to_float64():
    rng = np.random.default_rng(2)
    m = Linear(6, 3, rng=rng)
    sd = m.state_dict()
    assert list(sd) == ["weight", "bias"] and sd["weight"].shape == (3, 6)
    m2 = Linear(6, 3, rng=np.random.default_rng(99))
    assert not np.array_equal(m2.weight.data, m.weight.data)
    m2.load_state_dict(sd)
    x = rng.standard_normal((2, 6)).astype(np.float32)
    np.testing.assert_array_equal(m2.forward(x), m.forward(x))
    sd["weight"][...] = 0  # a copy, not the live array
    assert np.any(m.weight.data != 0)
    with pytest.raises(ValueError, match=r"weight: expected shape \(3, 6\), got \(6, 3\)"):
        m2.load_state_dict({"weight": np.zeros((6, 3)), "bias": np.zeros(3)})

    m.forward(x)
    m.backward(np.ones((2, 3), np.float32))
    w32 = m.weight.data.copy()
    assert m.to(dtype=np.float64) is m
    for a in (m.weight.data, m.weight.grad, m.bias.data, m.bias.grad):
        assert a.dtype == np.float64
    np.testing.assert_array_equal(m.weight.data, w32.astype(np.float64))
    with pytest.raises(RuntimeError, match="backward called before forward"):
        m.backward(np.ones((2, 3)))  # the float32 cache was dropped by the move
    x64 = x.astype(np.float64)
    assert m.forward(x64).dtype == np.float64
    with pytest.raises(TypeError, match="Module.to: dtype: expected float32 or float64, got int64"):
        m.to(dtype=np.int64)


# ---------------------------------------------------------------------------------------------
# bad inputs
# ---------------------------------------------------------------------------------------------
def test_errors():
    m = Linear(4, 3)
    x = np.zeros((2, 4), np.float32)
    with pytest.raises(RuntimeError, match="Linear.backward called before forward"):
        m.backward(np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match=r"Linear.forward: x: expected a 2-D array \(N, features\), got shape \(4,\)"):
        m.forward(x[0])
    with pytest.raises(ValueError, match=r"x: expected a 2-D array \(N, features\), got shape \(2, 4, 1, 1\)"):
        m.forward(x.reshape(2, 4, 1, 1))
    with pytest.raises(ValueError, match=r"x: expected 4 channels at axis 1, got 5 \(shape \(2, 5\)\)"):
        m.forward(np.zeros((2, 5), np.float32))
    with pytest.raises(TypeError, match="x: expected dtype float32 or float64, got int64"):
        m.forward(x.astype(np.int64))
    with pytest.raises(TypeError, match=r"x: expected dtype float32 \(the parameters' dtype\), got float64"):
        m.forward(x.astype(np.float64))
    with pytest.raises(TypeError, match=r"x: expected dtype float64 \(the parameters' dtype\), got float32"):
        Linear(4, 3).to(dtype=np.float64).forward(x)
    y = m.forward(x)
    with pytest.raises(ValueError, match=r"Linear.backward: gy: expected shape \(2, 3\) \(the forward output's\), got \(3, 2\)"):
        m.backward(np.zeros((3, 2), np.float32))
    with pytest.raises(TypeError, match=r"gy: expected dtype float32 \(the forward output's\), got float64"):
        m.backward(y.astype(np.float64))
    with pytest.raises(TypeError, match="gy: expected dtype float32 or float64, got int32"):
        m.backward(y.astype(np.int32))
    for args, match in [((0, 3), "in_features: expected an integer >= 1, got 0"),
                        ((4, -1), "out_features: expected an integer >= 1, got -1"),
                        ((4.0, 3), "in_features: expected an integer >= 1, got 4.0"),
                        ((True, 3), "in_features: expected an integer >= 1, got True")]:
        with pytest.raises(ValueError, match="Linear: " + match):
            Linear(*args)


@given(dims=dims, seed=seeds)
def test_matches_torch(dims, seed):
    torch = pytest.importorskip("torch")
    m, x, rng = make(dims, np.float64, seed)
    y = m.forward(x)
    gy = rng.standard_normal(y.shape)
    gx = m.backward(gy)
    t = torch.nn.Linear(dims[1], dims[2]).double()
    with torch.no_grad():
        t.weight.copy_(torch.from_numpy(m.weight.data))
        t.bias.copy_(torch.from_numpy(m.bias.data))
    tx = torch.from_numpy(x).requires_grad_(True)
    ty = t(tx)
    ty.backward(torch.from_numpy(gy))
    assert_close(y, ty.detach().numpy(), name="y vs torch", rtol=1e-12, atol=1e-12)
    assert_close(gx, tx.grad.numpy(), name="gx vs torch", rtol=1e-12, atol=1e-12)
    assert_close(m.weight.grad, t.weight.grad.numpy(), name="gw vs torch", rtol=1e-12, atol=1e-12)
    assert_close(m.bias.grad, t.bias.grad.numpy(), name="gb vs torch", rtol=1e-12, atol=1e-12)


def test_init_bounds_match_torch():
    """PyTorch's own Linear init has the same bound (its extreme values approach 1/sqrt(fan_in))."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    t = torch.nn.Linear(400, 50)
    m = Linear(400, 50, rng=np.random.default_rng(0))
    for ours, theirs in ((m.weight.data, t.weight.detach().numpy()), (m.bias.data, t.bias.detach().numpy())):
        bt, bo = np.abs(theirs).max(), np.abs(ours).max()
        assert bo <= 1 / 20 and bt <= 1 / 20
        assert abs(bo - bt) < 0.1 / 20, (bo, bt)
    w, tw = m.weight.data, t.weight.detach().numpy()  # 20000 draws each: std within 3%
    assert abs(w.std() - tw.std()) < 0.03 * tw.std(), (w.std(), tw.std())
