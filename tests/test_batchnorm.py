"""BatchNorm2d: what is specific to batch normalisation. The contract suite (tests/test_ops.py)
checks batchnorm2d (train and eval mode) against its reference and central differences on every
device; here: the layer handing its parameters and statistics to the op, the running statistics
as PyTorch keeps them, gradcheck catching the wrong mode, state and dtype moves, and every bad
input."""
import copy

import numpy as np
import pytest
from hypothesis import given, strategies as st
from helpers import HypothesisDraw, assert_close, device_ok, dtypes, require, seeds

from minignn import backend
from minignn.gradcheck import GradcheckError, gradcheck
from minignn.layers import BatchNorm2d
from minignn.layers.batchnorm import batch_norm2d_backward, batch_norm2d_forward
from minignn.layers.batchnorm.reference import batchnorm2d_forward_ref
from minignn.ops import OPS

momenta = st.sampled_from([0.0, 0.1, 0.5, 1.0]) | st.floats(0.0, 1.0)


OP = OPS["batchnorm2d"]


@st.composite
def shapes(draw):
    """(N, C, H, W) to train on: batch 1 and odd, non-square planes included; N*H*W > 1."""
    n, c = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    h, w = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    if n * h * w < 2:
        w += 1
    return n, c, h, w


def make(shape, dtype, seed, momentum=0.1):
    """A BatchNorm2d with random gamma, beta and running statistics, and an input whose channels
    have different means and scales."""
    rng = np.random.default_rng(seed)
    c = shape[1]
    m = BatchNorm2d(c, momentum=momentum).to(dtype=dtype)
    m.weight.data[...] = rng.uniform(0.5, 2.0, c) * rng.choice([-1, 1], c)
    m.bias.data[...] = rng.standard_normal(c)
    m.running_mean[...] = rng.standard_normal(c)
    m.running_var[...] = rng.uniform(0.5, 2.0, c)
    x = (rng.standard_normal(shape) * rng.uniform(0.5, 3.0, (1, c, 1, 1))
         + rng.standard_normal((1, c, 1, 1))).astype(dtype)
    return m, x, rng


# ---------------------------------------------------------------------------------------------
# the layer around the op
# ---------------------------------------------------------------------------------------------
@device_ok
@given(data=st.data(), momentum=momenta)
def test_layer_hands_its_parameters_and_statistics_to_the_op(device, data, momentum):
    """The layer on a case of the op's sampler gives what the op gives with the layer's gamma,
    beta, eps and running statistics; in train mode it then updates the running statistics with
    the batch mean and the unbiased batch variance (PyTorch's rule), in eval mode it leaves them
    alone; the gradients ADD into .grad."""
    require(device, "batchnorm2d")
    d = HypothesisDraw(data)
    case = OP.sample(d, d.choice([np.float32, np.float64]))
    x, gamma, beta, mean, var = case.inputs
    training, dtype, c = case.params["training"], x.dtype, x.shape[1]
    rm0 = d.rng.standard_normal(c).astype(dtype) if mean is None else mean
    rv0 = d.rng.uniform(0.5, 2.0, c).astype(dtype) if var is None else var
    m = BatchNorm2d(c, eps=d.choice([1e-5, 1e-2]), momentum=momentum).to(dtype=dtype).train(training)
    for a, v in ((m.weight.data, gamma), (m.bias.data, beta), (m.running_mean, rm0), (m.running_var, rv0)):
        a[...] = v
    m.to(device=device)
    y = m.forward(backend.to_device(x, device))
    (y_op, bmean, bvar), saved = OP.forward(x, gamma, beta, rm0, rv0, eps=m.eps, training=training)
    assert_close(y, y_op, name="y of the layer vs the op", **OP.tol(dtype))
    assert m.running_mean.dtype == dtype and m.running_var.dtype == dtype
    if training:
        count = x.shape[0] * x.shape[2] * x.shape[3]
        assert_close(m.running_mean, (1 - momentum) * rm0 + momentum * bmean, name="running_mean", **OP.tol(dtype))
        assert_close(m.running_var, (1 - momentum) * rv0 + momentum * bvar * count / (count - 1),
                     name="running_var (unbiased)", **OP.tol(dtype))
    else:
        np.testing.assert_array_equal(backend.to_numpy(m.running_mean), rm0)
        np.testing.assert_array_equal(backend.to_numpy(m.running_var), rv0)
    gy = d.rng.standard_normal(x.shape).astype(dtype)
    gx_op, ggamma, gbeta, _, _ = OP.backward(saved, gy)
    for k in (1, 2):
        assert_close(m.backward(backend.to_device(gy, device)), gx_op, name=f"gx (backward {k})", **OP.tol(dtype))
        assert m.weight.grad.dtype == dtype and m.bias.grad.dtype == dtype
        assert_close(m.weight.grad, k * ggamma, name=f"weight.grad after {k} backward(s)", **OP.tol(dtype))
        assert_close(m.bias.grad, k * gbeta, name=f"bias.grad after {k} backward(s)", **OP.tol(dtype))


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_functional_statistics_are_float64(training):
    """batch_norm2d_forward hands back the statistics it used in float64 whatever x's dtype, with
    invstd = 1 / sqrt(var + eps) (the contract compares their values, not their dtype)."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    g, b = np.ones(3, np.float32), np.zeros(3, np.float32)
    _, mean, var, invstd = batch_norm2d_forward(x, g, b, np.zeros(3, np.float32), np.full(3, 2, np.float32),
                                                eps=1e-3, training=training)
    assert mean.dtype == var.dtype == invstd.dtype == np.float64
    assert_close(invstd, 1 / np.sqrt(var + 1e-3), rtol=1e-12, atol=0, name="invstd")


def test_reference_is_independent():
    """The reference itself against the textbook formulas written out here (one fixed case)."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 2, 2, 3))
    gamma, beta = np.array([1.5, -0.5]), np.array([0.2, 0.1])
    y, (rm, rv) = batchnorm2d_forward_ref(x, gamma, beta, np.zeros(2), np.ones(2), True, momentum=0.25, eps=1e-5)
    for c in range(2):
        v = x[:, c].ravel()
        mu, s2 = v.sum() / v.size, ((v - v.sum() / v.size) ** 2).sum() / v.size
        np.testing.assert_allclose(y[:, c], gamma[c] * (x[:, c] - mu) / np.sqrt(s2 + 1e-5) + beta[c], rtol=1e-12)
        np.testing.assert_allclose(rm[c], 0.25 * mu, rtol=1e-12)
        np.testing.assert_allclose(rv[c], 0.75 + 0.25 * s2 * v.size / (v.size - 1), rtol=1e-12)


# ---------------------------------------------------------------------------------------------
# running statistics over several steps
# ---------------------------------------------------------------------------------------------
@given(shape=shapes(), momentum=momenta, steps=st.integers(1, 4), dtype=dtypes, seed=seeds)
def test_running_statistics_follow_pytorch_rule(shape, momentum, steps, dtype, seed):
    rng = np.random.default_rng(seed)
    c = shape[1]
    m = BatchNorm2d(c, momentum=momentum).to(dtype=dtype)
    np.testing.assert_array_equal(m.running_mean, np.zeros(c))
    np.testing.assert_array_equal(m.running_var, np.ones(c))
    rm, rv = np.zeros(c), np.ones(c)
    for _ in range(steps):
        x = (rng.standard_normal(shape) * 3 + rng.standard_normal((1, c, 1, 1))).astype(dtype)
        m.forward(x)
        x64 = x.astype(np.float64)
        rm = (1 - momentum) * rm + momentum * x64.mean(axis=(0, 2, 3))
        rv = (1 - momentum) * rv + momentum * x64.var(axis=(0, 2, 3), ddof=1)  # unbiased
    assert_close(m.running_mean, rm, name="running_mean", **OP.tol(dtype))
    assert_close(m.running_var, rv, name="running_var", **OP.tol(dtype))
    # eval mode uses them and leaves them alone
    m.eval()
    x = rng.standard_normal(shape).astype(dtype)
    y = m.forward(x)
    rm_e, rv_e = m.running_mean.copy(), m.running_var.copy()
    assert_close(y, (x - rm.reshape(1, c, 1, 1)) / np.sqrt(rv.reshape(1, c, 1, 1) + m.eps), name="eval y", **OP.tol(dtype))
    m.forward(x)
    np.testing.assert_array_equal(m.running_mean, rm_e)
    np.testing.assert_array_equal(m.running_var, rv_e)


# ---------------------------------------------------------------------------------------------
# gradcheck on the stateful layer
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_gradcheck_leaves_the_callers_layer_alone(training):
    """gradcheck's repeated forwards update the running statistics of its own deep copy only (in
    train mode the output never reads them, so they do not disturb the check): the caller's
    parameters, statistics, mode and dtype stay as they were."""
    m, x, _ = make((2, 3, 3, 2), np.float32, 11)
    m.train(training)
    before = copy.deepcopy(m.state_dict())
    gradcheck(m, x, max_checks=12, seed=0)
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(v, before[k], err_msg=f"gradcheck changed the caller's {k}")
    assert m.training == training and m.weight.dtype == np.float32


def test_gradcheck_catches_the_wrong_mode():
    """Sanity of the check itself: a backward that ignores the paths through the batch statistics
    (the eval formula used in train mode) must fail gradcheck, on the input but not on gamma."""
    class FrozenStatsBackward(BatchNorm2d):
        def backward(self, gy):
            x, mean, invstd, _ = self._saved
            self._saved = (x, mean, invstd, False)
            return super().backward(gy)

    m, x, _ = make((2, 3, 3, 2), np.float64, 7)
    bad = FrozenStatsBackward(3).to(dtype=np.float64)
    bad.load_state_dict(m.state_dict())
    gradcheck(m, x, max_checks=None)
    with pytest.raises(GradcheckError, match="gradient of input at index"):
        gradcheck(bad, x, max_checks=None)
    gradcheck(bad, x, max_checks=None, check_input=False)  # gamma and beta grads are the same formulas
    bad.eval()
    gradcheck(bad, x, max_checks=None)  # in eval mode that formula is the right one


# ---------------------------------------------------------------------------------------------
# state, dtype moves, construction
# ---------------------------------------------------------------------------------------------
@given(shape=shapes(), seed=seeds)
def test_state_dict_round_trip_with_buffers(shape, seed):
    m, x, _ = make(shape, np.float32, seed)
    m.forward(x)  # moves the running statistics away from their initial values
    sd = m.state_dict()
    assert list(sd) == ["weight", "bias", "running_mean", "running_var"]
    m2 = BatchNorm2d(shape[1])
    m2.load_state_dict(sd)
    for k in sd:
        np.testing.assert_array_equal(m2.state_dict()[k], sd[k], err_msg=k)
    sd["running_mean"][...] = 123.0  # state_dict hands out copies
    assert not np.any(m.running_mean == 123.0)
    m.eval(), m2.eval()
    np.testing.assert_array_equal(m2.forward(x), m.forward(x))
    # a float64 copy loads from the float32 state and keeps its own dtype
    m3 = BatchNorm2d(shape[1]).to(dtype=np.float64)
    m3.load_state_dict(m.state_dict())
    assert m3.running_var.dtype == np.float64
    assert_close(m3.running_var, m.running_var, name="running_var loaded into float64")
    with pytest.raises(ValueError, match=r"running_mean: expected shape \(%d,\), got \(%d,\)" % (shape[1], shape[1] + 1)):
        m2.load_state_dict(dict(sd, running_mean=np.zeros(shape[1] + 1, np.float32)))
    with pytest.raises(KeyError, match="missing keys \\['running_var'\\]"):
        m2.load_state_dict({k: v for k, v in sd.items() if k != "running_var"})


def test_to_float64_converts_params_grads_buffers():
    m = BatchNorm2d(3)
    assert m.weight.dtype == m.bias.dtype == m.running_mean.dtype == m.running_var.dtype == np.float32
    m.forward(np.random.default_rng(0).standard_normal((2, 3, 2, 2)).astype(np.float32))
    rm = m.running_mean.copy()
    assert m.to(dtype=np.float64) is m
    for a in (m.weight.data, m.weight.grad, m.bias.data, m.bias.grad, m.running_mean, m.running_var):
        assert a.dtype == np.float64
    assert_close(m.running_mean, rm, name="running_mean survives the cast")
    assert [n for n, _ in m.named_buffers()] == ["running_mean", "running_var"]
    assert m.state_dict()["running_var"].dtype == np.float64
    x = np.random.default_rng(1).standard_normal((2, 3, 2, 2))
    assert m.forward(x).dtype == np.float64
    assert m.backward(x).dtype == np.float64


def test_init_and_repr():
    m = BatchNorm2d(4, eps=1e-3, momentum=0.2)
    np.testing.assert_array_equal(m.weight.data, np.ones(4))
    np.testing.assert_array_equal(m.bias.data, np.zeros(4))
    np.testing.assert_array_equal(m.running_mean, np.zeros(4))
    np.testing.assert_array_equal(m.running_var, np.ones(4))
    assert [n for n, _ in m.named_parameters()] == ["weight", "bias"]
    assert m.eps == 1e-3 and m.momentum == 0.2
    assert repr(m) == "BatchNorm2d(4, eps=0.001, momentum=0.2)"
    d = BatchNorm2d(2)
    assert d.eps == 1e-5 and d.momentum == 0.1


def test_batch_of_one_image_and_single_pixel():
    """Batch 1 trains over the plane; N*H*W = 1 trains nowhere (as PyTorch) but works in eval."""
    rng = np.random.default_rng(3)
    m = BatchNorm2d(2).to(dtype=np.float64)
    x = rng.standard_normal((1, 2, 3, 1))
    y = m.forward(x)
    assert_close(y.mean(axis=(0, 2, 3)), np.zeros(2), atol=1e-12, name="per-channel mean of y")
    with pytest.raises(ValueError, match=r"BatchNorm2d.forward: x: expected more than 1 value per channel in "
                                         r"train mode \(N\*H\*W > 1\), got shape \(1, 2, 1, 1\)"):
        m.forward(x[:, :, :1])
    m.eval()
    assert_close(m.forward(x[:, :, :1]), (x[:, :, :1] - m.running_mean.reshape(1, 2, 1, 1))
                 / np.sqrt(m.running_var.reshape(1, 2, 1, 1) + 1e-5), name="eval y of one pixel")


# ---------------------------------------------------------------------------------------------
# bad inputs
# ---------------------------------------------------------------------------------------------
def test_errors():
    m = BatchNorm2d(3)
    x = np.zeros((2, 3, 4, 5), np.float32)
    with pytest.raises(RuntimeError, match="BatchNorm2d.backward called before forward"):
        m.backward(x)
    with pytest.raises(ValueError, match=r"x: expected a 4-D array \(N, C, H, W\), got shape \(3, 4, 5\)"):
        m.forward(x[0])
    with pytest.raises(ValueError, match=r"x: expected a 4-D array \(N, C, H, W\), got shape \(2, 3\)"):
        m.forward(x[:, :, 0, 0])
    with pytest.raises(ValueError, match="x: expected 3 channels at axis 1, got 2"):
        m.forward(x[:, :2])
    with pytest.raises(TypeError, match="x: expected dtype float32 or float64, got int32"):
        m.forward(x.astype(np.int32))
    with pytest.raises(TypeError, match=r"x: expected dtype float32 \(the parameters' dtype\), got float64"):
        m.forward(x.astype(np.float64))
    with pytest.raises(TypeError, match=r"x: expected dtype float64 \(the parameters' dtype\), got float32"):
        BatchNorm2d(3).to(dtype=np.float64).forward(x)
    with pytest.raises(TypeError, match="x: expected a numpy or cupy array, got list"):
        m.forward(x.tolist())
    y = m.forward(x)
    with pytest.raises(ValueError, match=r"gy: expected shape \(2, 3, 4, 5\) \(the forward output's\), got \(2, 3, 5, 4\)"):
        m.backward(np.zeros((2, 3, 5, 4), np.float32))
    with pytest.raises(TypeError, match=r"gy: expected dtype float32 \(the forward output's\), got float64"):
        m.backward(y.astype(np.float64))
    with pytest.raises(TypeError, match="gy: expected dtype float32 or float64, got int64"):
        m.backward(y.astype(np.int64))
    for kwargs, match in [(dict(num_features=0), "num_features: expected an integer >= 1, got 0"),
                          (dict(num_features=2.0), "num_features: expected an integer >= 1, got 2.0"),
                          (dict(eps=0), "eps: expected a number > 0, got 0"),
                          (dict(eps=-1e-5), "eps: expected a number > 0, got -1e-05"),
                          (dict(eps="1e-5"), "eps: expected a number > 0, got '1e-5'"),
                          (dict(momentum=1.5), r"momentum: expected a number in \[0, 1\], got 1.5"),
                          (dict(momentum=-0.1), r"momentum: expected a number in \[0, 1\], got -0.1")]:
        with pytest.raises(ValueError, match="BatchNorm2d: " + match):
            BatchNorm2d(**(dict(num_features=3) | kwargs))


def test_functional_errors():
    x = np.zeros((2, 3, 4, 4))
    g, b = np.ones(3), np.zeros(3)
    with pytest.raises(ValueError, match="gamma: expected 3 channels at axis 0, got 2"):
        batch_norm2d_forward(x, g[:2], b)
    with pytest.raises(TypeError, match=r"beta: expected dtype float64 \(the parameters' dtype\), got float32"):
        batch_norm2d_forward(x, g, b.astype(np.float32))
    with pytest.raises(ValueError, match="mean, var: expected the running statistics when training=False, got None"):
        batch_norm2d_forward(x, g, b, training=False)
    with pytest.raises(ValueError, match="var: expected 3 channels at axis 0, got 4"):
        batch_norm2d_forward(x, g, b, np.zeros(3), np.ones(4), training=False)
    with pytest.raises(ValueError, match=r"expected more than 1 value per channel when training"):
        batch_norm2d_forward(x[:1, :, :1, :1], g, b)
    _, mean, _, invstd = batch_norm2d_forward(x, g, b)
    with pytest.raises(ValueError, match=r"gy: expected shape \(2, 3, 4, 4\)"):
        batch_norm2d_backward(np.zeros((2, 3, 4, 3)), x, g, mean, invstd)


# ---------------------------------------------------------------------------------------------
# an independent oracle
# ---------------------------------------------------------------------------------------------
@given(shape=shapes(), momentum=momenta, steps=st.integers(1, 3), seed=seeds)
def test_matches_torch(shape, momentum, steps, seed):
    torch = pytest.importorskip("torch")
    m, x, rng = make(shape, np.float64, seed, momentum)
    t = torch.nn.BatchNorm2d(shape[1], eps=m.eps, momentum=momentum).double()
    with torch.no_grad():
        t.weight.copy_(torch.from_numpy(m.weight.data))
        t.bias.copy_(torch.from_numpy(m.bias.data))
        t.running_mean.copy_(torch.from_numpy(m.running_mean))
        t.running_var.copy_(torch.from_numpy(m.running_var))
    for step in range(steps + 1):
        training = step < steps  # a few train steps, then one in eval mode
        m.train(training), t.train(training)
        x = rng.standard_normal(shape) * 2 + 1
        gy = rng.standard_normal(shape)
        m.zero_grad()
        y = m.forward(x)
        gx = m.backward(gy)
        tx = torch.from_numpy(x).requires_grad_(True)
        t.zero_grad()
        ty = t(tx)
        ty.backward(torch.from_numpy(gy))
        assert_close(y, ty.detach().numpy(), name=f"y vs torch (step {step})", rtol=1e-10, atol=1e-10)
        assert_close(gx, tx.grad.numpy(), name=f"gx vs torch (step {step})", rtol=1e-9, atol=1e-10)
        assert_close(m.weight.grad, t.weight.grad.numpy(), name="ggamma vs torch", rtol=1e-9, atol=1e-10)
        assert_close(m.bias.grad, t.bias.grad.numpy(), name="gbeta vs torch", rtol=1e-9, atol=1e-10)
        assert_close(m.running_mean, t.running_mean.numpy(), name="running_mean vs torch", rtol=1e-12, atol=1e-12)
        assert_close(m.running_var, t.running_var.numpy(), name="running_var vs torch", rtol=1e-12, atol=1e-12)
