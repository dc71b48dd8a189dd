"""Linear: what is specific to the layer. The contract suite (tests/test_ops.py) checks linear
against its reference and central differences on every device; here: the layer handing its
weight and bias to the op with the gradients adding up, PyTorch's initialisation
(statistically), state and dtype moves, and every bad input."""
import numpy as np
import pytest
from hypothesis import given, strategies as st
from helpers import HypothesisDraw, assert_close, device_ok, dtypes, require

from minignn import backend, init
from minignn.layers import Linear
from minignn.ops import OPS


def linear_case(data, dtype):
    """A Linear holding the weight (and bias, or none) of a case of the linear op's sampler, its
    x and a generator."""
    d = HypothesisDraw(data)
    x, w, b = OPS["linear"].sample(d, dtype).inputs
    m = Linear(w.shape[1], w.shape[0], bias=b is not None).to(dtype=dtype)
    m.weight.data[...] = w
    if b is not None:
        m.bias.data[...] = b
    return m, x, d.rng


@device_ok
@given(data=st.data(), dtype=dtypes)
def test_layer_hands_its_parameters_to_the_op_and_gradients_add_up(device, data, dtype):
    """The layer gives what the linear op gives with its weight and bias, on its device, and the
    parameter gradients of two backward passes (two upstream gradients) add up in .grad."""
    require(device, "linear")
    m, x, rng = linear_case(data, dtype)
    params = [p.data.copy() for p in m.parameters()]  # [weight] or [weight, bias]
    w, b = (params + [None])[:2]
    tol = OPS["linear"].tol(dtype)
    (y_op,), saved = OPS["linear"].forward(x, w, b)
    y = m.to(device=device).forward(backend.to_device(x, device))
    assert backend.device_of(y) == device
    assert_close(y, y_op, name="y of the layer vs the op", **tol)
    total = [np.zeros_like(p) for p in params]
    for step in (1, 2):
        gy = rng.standard_normal(y_op.shape).astype(dtype)
        gx_op, *grads = OPS["linear"].backward(saved, gy)
        assert_close(m.backward(backend.to_device(gy, device)), gx_op, name=f"gx of backward {step}", **tol)
        total = [t + g for t, g in zip(total, grads)]
        for (name, p), t in zip(m.named_parameters(), total):
            assert_close(p.grad, t, name=f"{name}.grad after {step} backward(s)", **tol)


def test_non_contiguous_upstream_gradient():
    """A reversed view of gy (the contract draws only the inputs in other layouts)."""
    rng = np.random.default_rng(0)
    m = Linear(4, 3, rng=rng).to(dtype=np.float64)
    m.forward(rng.standard_normal((4, 4)))
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


@given(data=st.data())
def test_op_matches_torch(data):
    """The linear op against torch.nn.functional.linear, in float64."""
    torch = pytest.importorskip("torch")
    d = HypothesisDraw(data)
    inputs = OPS["linear"].sample(d, np.float64).inputs  # x, w and b (or None)
    (y,), saved = OPS["linear"].forward(*inputs)
    gy = d.rng.standard_normal(y.shape)
    grads = OPS["linear"].backward(saved, gy)
    tensors = [None if a is None else torch.from_numpy(a).requires_grad_(True) for a in inputs]
    ty = torch.nn.functional.linear(*tensors)
    ty.backward(torch.from_numpy(gy))
    assert_close(y, ty.detach().numpy(), name="y vs torch", rtol=1e-12, atol=1e-12)
    for name, g, t in zip(("gx", "gw", "gb"), grads, tensors):
        if t is not None:
            assert_close(g, t.grad.numpy(), name=f"{name} vs torch", rtol=1e-12, atol=1e-12)


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
