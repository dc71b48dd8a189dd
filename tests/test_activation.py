"""ReLU, Dropout and Flatten: what is specific to them. The contract suite (tests/test_ops.py)
checks relu and dropout against their references and central differences on every device; here:
ReLU at exactly zero, its serial and parallel kernels, Flatten, Dropout's masks (train/eval,
scaling, seeding, statistics) and every bad input."""
import numpy as np
import pytest
from hypothesis import given, strategies as st
from helpers import assert_close, device_ok, dtypes, require, seeds

from minignn import backend, init
from minignn.gradcheck import gradcheck
from minignn.layers import Dropout, Flatten, ReLU
from minignn.layers import activation as act

# any rank from 1 to 5 (ReLU and Dropout), size-1 and odd axes included
any_shape = st.lists(st.integers(1, 5), min_size=1, max_size=5).map(tuple)
batched_shape = st.lists(st.integers(1, 5), min_size=2, max_size=5).map(tuple)
probs = st.sampled_from([0.1, 0.5, 0.9]) | st.floats(0.01, 0.95)


def away_from_zero(rng, shape, gap=0.1):
    """Values of both signs with |v| >= gap: no zeros, so a zero in Dropout's output marks a
    dropped cell."""
    return rng.choice([-1.0, 1.0], size=shape) * (gap + np.abs(rng.standard_normal(shape)))


# ---------------------------------------------------------------------------------------------
# ReLU
# ---------------------------------------------------------------------------------------------
@device_ok
@given(shape=any_shape, dtype=dtypes, seed=seeds)
def test_relu_at_exactly_zero(device, shape, dtype, seed):
    """y = 0 and no gradient at x = 0 or -0 (PyTorch's convention; the contract's inputs stay
    away from the kink)."""
    require(device, "relu")
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(dtype)
    x.flat[::3] = 0
    x.flat[1::3] = -0.0
    m = ReLU()
    y = backend.to_numpy(m.forward(backend.to_device(x, device)))
    np.testing.assert_array_equal(y, np.maximum(x, 0))
    assert not np.signbit(y).any()  # no -0 comes out
    gy = rng.standard_normal(shape).astype(dtype)
    gx = backend.to_numpy(m.backward(backend.to_device(gy, device)))
    np.testing.assert_array_equal(gx, np.where(x > 0, gy, 0))


@pytest.mark.parametrize("size", [act.PARALLEL_MIN_SIZE - 1, act.PARALLEL_MIN_SIZE + 3])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_serial_and_parallel_kernels(size, dtype):
    """Both sides of the size threshold, on a non-contiguous input, with NaN and infinities."""
    rng = np.random.default_rng(size)
    base = rng.standard_normal((size, 2)).astype(dtype)
    x = base[:, 1]  # a strided view
    x[:4] = [np.nan, np.inf, -np.inf, 0.0]
    m = ReLU()
    y = m.forward(x)
    np.testing.assert_array_equal(y[4:], np.maximum(x[4:], 0))
    assert np.isnan(y[0]) and y[1] == np.inf and y[2] == 0 and y[3] == 0  # NaN propagates
    gy = rng.standard_normal(size).astype(dtype)
    gx = m.backward(gy)
    np.testing.assert_array_equal(gx, np.where(x > 0, gy, 0))


def test_relu_errors():
    m = ReLU()
    with pytest.raises(RuntimeError, match="ReLU.backward called before forward"):
        m.backward(np.zeros(3, np.float32))
    with pytest.raises(TypeError, match="ReLU.forward: x: expected dtype float32 or float64, got int64"):
        m.forward(np.zeros(3, np.int64))
    with pytest.raises(TypeError, match="x: expected a numpy or cupy array, got list"):
        m.forward([1.0, -1.0])
    m.forward(np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match=r"ReLU.backward: gy: expected shape \(2, 3\) \(the forward output's\), got \(3, 2\)"):
        m.backward(np.zeros((3, 2), np.float32))
    with pytest.raises(TypeError, match=r"gy: expected dtype float32 \(the forward output's\), got float64"):
        m.backward(np.zeros((2, 3), np.float64))


# ---------------------------------------------------------------------------------------------
# Flatten
# ---------------------------------------------------------------------------------------------
@device_ok
@given(shape=batched_shape, dtype=dtypes, seed=seeds)
def test_flatten_round_trip(device, shape, dtype, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(dtype)
    m = Flatten()
    y = m.forward(backend.to_device(x, device))
    assert y.shape == (shape[0], int(np.prod(shape[1:]))) and y.dtype == dtype
    np.testing.assert_array_equal(backend.to_numpy(y), x.reshape(shape[0], -1))  # row-major (C, H, W) order
    gy = rng.standard_normal(y.shape).astype(dtype)
    gx = m.backward(backend.to_device(gy, device))
    assert gx.shape == shape and gx.dtype == dtype
    np.testing.assert_array_equal(backend.to_numpy(gx), gy.reshape(shape))
    assert_close(m.backward(m.forward(x)), x, rtol=0, atol=0, name="unflatten(flatten(x))")


@given(shape=batched_shape, seed=seeds)
def test_flatten_gradcheck(shape, seed):
    gradcheck(Flatten(), np.random.default_rng(seed).standard_normal(shape), max_checks=10, seed=seed)


def test_flatten_non_contiguous_and_errors():
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 5)).transpose(0, 1, 3, 2)  # (2, 3, 5, 4)
    m = Flatten()
    np.testing.assert_array_equal(m.forward(x), np.ascontiguousarray(x).reshape(2, 60))
    with pytest.raises(RuntimeError, match="Flatten.backward called before forward"):
        Flatten().backward(np.zeros((2, 60)))
    with pytest.raises(ValueError, match=r"Flatten.forward: x: expected at least 2 dimensions \(N, \.\.\.\), got shape \(5,\)"):
        m.forward(np.zeros(5))
    with pytest.raises(TypeError, match="Flatten.forward: x: expected dtype float32 or float64, got int32"):
        m.forward(np.zeros((2, 3), np.int32))
    m.forward(x)
    with pytest.raises(ValueError, match=r"Flatten.backward: gy: expected shape \(2, 60\) \(the forward output's\), got \(2, 3, 5, 4\)"):
        m.backward(x)
    with pytest.raises(TypeError, match=r"gy: expected dtype float64 \(the forward output's\), got float32"):
        m.backward(np.zeros((2, 60), np.float32))


# ---------------------------------------------------------------------------------------------
# Dropout
# ---------------------------------------------------------------------------------------------
@device_ok
@given(shape=any_shape, dtype=dtypes, p=probs, seed=seeds)
def test_dropout_train_scales_and_reuses_the_mask(device, shape, dtype, p, seed):
    require(device, "dropout")
    rng = np.random.default_rng(seed)
    x = away_from_zero(rng, shape).astype(dtype)  # no zeros in x: a zero in y marks a dropped cell
    m = Dropout(p, rng=np.random.default_rng(seed))
    y = backend.to_numpy(m.forward(backend.to_device(x, device)))
    assert y.shape == x.shape and y.dtype == dtype
    kept = y != 0
    scale = dtype(1 / (1 - p))
    assert_close(y[kept], x[kept] * scale, name="kept cells scaled by 1/(1-p)", rtol=1e-6 if dtype == np.float32 else 1e-15)
    gy = rng.standard_normal(shape).astype(dtype)
    gx = backend.to_numpy(m.backward(backend.to_device(gy, device)))
    assert gx.dtype == dtype
    assert_close(gx, np.where(kept, gy * scale, 0), name="gx uses the forward's mask",
                 rtol=1e-6 if dtype == np.float32 else 1e-15, atol=0)
    # the same mask again on a second backward
    np.testing.assert_array_equal(backend.to_numpy(m.backward(backend.to_device(gy, device))), gx)


@device_ok
@given(shape=any_shape, dtype=dtypes, p=st.sampled_from([0.0, 0.3, 0.99]), seed=seeds)
def test_dropout_identity_in_eval_and_for_p0(device, shape, dtype, p, seed):
    require(device, "dropout")
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(dtype)
    gy = rng.standard_normal(shape).astype(dtype)
    for training in (False, True):
        m = Dropout(p).train(training)
        if training and p > 0:
            continue
        y = m.forward(backend.to_device(x, device))
        np.testing.assert_array_equal(backend.to_numpy(y), x)
        np.testing.assert_array_equal(backend.to_numpy(m.backward(backend.to_device(gy, device))), gy)


def test_dropout_statistics():
    """The fraction dropped is p (within 5 standard errors) and E[y] = x."""
    n = 200_000
    x = np.ones(n, np.float32)
    for p in (0.1, 0.5, 0.8):
        y = Dropout(p, rng=np.random.default_rng(int(p * 10))).forward(x)
        dropped = np.mean(y == 0)
        se = np.sqrt(p * (1 - p) / n)
        assert abs(dropped - p) < 5 * se, (p, dropped)
        assert abs(y.astype(np.float64).mean() - 1) < 5 * np.sqrt(p / (1 - p) / n), (p, y.mean())
        assert set(np.unique(y).tolist()) == {0.0, np.float32(1 / (1 - p))}


def test_dropout_seeding():
    """minignn.init.manual_seed makes the masks reproducible; a given rng overrides the library's."""
    x = np.ones((4, 8, 3, 3), np.float32)
    init.manual_seed(5)
    a1, a2 = Dropout(0.5).forward(x), Dropout(0.5).forward(x)
    init.manual_seed(5)
    b1, b2 = Dropout(0.5).forward(x), Dropout(0.5).forward(x)
    np.testing.assert_array_equal(a1, b1)
    np.testing.assert_array_equal(a2, b2)
    assert not np.array_equal(a1, a2)  # the generator moves on between draws
    init.manual_seed(6)
    assert not np.array_equal(Dropout(0.5).forward(x), a1)
    # a module built before the reseed still follows it (the generator is looked up per forward)
    m = Dropout(0.5)
    init.manual_seed(5)
    np.testing.assert_array_equal(m.forward(x), a1)
    # an explicit generator: independent of manual_seed
    c = Dropout(0.5, rng=np.random.default_rng(1)).forward(x)
    init.manual_seed(5)
    np.testing.assert_array_equal(Dropout(0.5, rng=np.random.default_rng(1)).forward(x), c)
    assert not np.array_equal(c, a1)


def test_dropout_errors():
    for p in (-0.1, 1.0, 1.5, float("nan"), "0.5", None):
        with pytest.raises(ValueError, match=r"Dropout: p: expected a number in \[0, 1\), got " + repr(p).replace("(", r"\(")):
            Dropout(p)
    with pytest.raises(TypeError, match="Dropout: rng: expected a numpy.random.Generator or None, got int"):
        Dropout(0.5, rng=3)
    m = Dropout(0.5)
    assert repr(m) == "Dropout(p=0.5)" and Dropout().p == 0.5
    with pytest.raises(RuntimeError, match="Dropout.backward called before forward"):
        m.backward(np.zeros(3, np.float32))
    with pytest.raises(TypeError, match="Dropout.forward: x: expected dtype float32 or float64, got int64"):
        m.forward(np.zeros(3, np.int64))
    m.forward(np.ones((2, 3), np.float32))
    with pytest.raises(ValueError, match=r"Dropout.backward: gy: expected shape \(2, 3\) \(the forward output's\), got \(6,\)"):
        m.backward(np.zeros(6, np.float32))
    with pytest.raises(TypeError, match=r"gy: expected dtype float32 \(the forward output's\), got float64"):
        m.backward(np.zeros((2, 3)))
    m.eval().forward(np.ones((2, 3), np.float32))
    with pytest.raises(ValueError, match=r"gy: expected shape \(2, 3\)"):
        m.backward(np.zeros((3, 2), np.float32))
