"""Engine core: Module API, gradcheck, loss, SGD, backend seam."""
import os
import copy

import numpy as np
import pytest
from hypothesis import given, strategies as st

import minignn
from minignn import SGD, Module, Parameter, Sequential, SoftmaxCrossEntropy, backend
from minignn.gradcheck import GradcheckError, check_gradients, gradcheck


class Scale(Module):
    """y = w * x + b elementwise over features (a tiny module with two parameters)."""

    def __init__(self, n, bug=False):
        super().__init__()
        self.w = Parameter(np.linspace(0.5, 1.5, n))
        self.b = Parameter(np.zeros(n))
        self.register_buffer("count", np.zeros(1))
        self.bug = bug
        self._saved = None

    def forward(self, x):
        self._saved = x
        return x * self.w.data + self.b.data

    def backward(self, gy):
        x = self._saved_or_raise(self._saved)
        self.w.grad += (gy * x).sum(axis=0) * (1.1 if self.bug else 1.0)
        self.b.grad += gy.sum(axis=0)
        return gy * self.w.data


class Square(Module):
    def forward(self, x):
        self._x = x
        return x * x

    def backward(self, gy):
        return 2 * self._x * gy


def test_registration_and_named_parameters():
    m = Sequential(Scale(3), Square(), Scale(3))
    names = [n for n, _ in m.named_parameters()]
    assert names == ["0.w", "0.b", "2.w", "2.b"]
    assert len(m.parameters()) == 4
    assert [n for n, _ in m.named_buffers()] == ["0.count", "2.count"]


def test_state_dict_roundtrip_and_errors():
    a, b = Sequential(Scale(3)), Sequential(Scale(3))
    a[0].w.data[:] = [1, 2, 3]
    a[0].count[:] = 7
    b.load_state_dict(a.state_dict())
    np.testing.assert_array_equal(b[0].w.data, [1, 2, 3])
    np.testing.assert_array_equal(b[0].count, [7])
    with pytest.raises(KeyError, match="missing keys"):
        b.load_state_dict({"0.w": np.ones(3)})
    bad = a.state_dict()
    bad["0.w"] = np.ones(4)
    with pytest.raises(ValueError, match=r"0\.w: expected shape \(3,\), got \(4,\)"):
        b.load_state_dict(bad)


def test_train_eval_propagate():
    m = Sequential(Scale(2), Sequential(Square()))
    m.eval()
    assert not any(x.training for x in m.modules())
    m.train()
    assert all(x.training for x in m.modules())


def test_zero_grad_and_backward_accumulates():
    m = Scale(2)
    x = np.ones((4, 2))
    m.forward(x)
    m.backward(np.ones((4, 2)))
    m.backward(np.ones((4, 2)))
    np.testing.assert_array_equal(m.b.grad, [8, 8])
    m.zero_grad()
    np.testing.assert_array_equal(m.b.grad, [0, 0])


def test_backward_before_forward_error():
    with pytest.raises(RuntimeError, match="Scale.backward called before forward"):
        Scale(2).backward(np.ones((1, 2)))


def test_to_dtype_casts_params_and_buffers():
    m = Scale(3).to(dtype=np.float32)
    assert m.w.data.dtype == np.float32 and m.w.grad.dtype == np.float32 and m.count.dtype == np.float32
    with pytest.raises(TypeError, match="dtype"):
        m.to(dtype=np.int32)
    with pytest.raises(ValueError, match="device"):
        m.to(device="tpu")


def test_to_moves_and_casts_gradients_with_their_parameters():
    m = Sequential(Scale(3))
    m.forward(np.array([[1.0, 2.0, 3.0]]))
    m.backward(np.array([[0.5, -1.0, 1.0 / 3.0]]))  # w.grad = gy * x, b.grad = gy
    w_grad, b_grad = m[0].w.grad.copy(), m[0].b.grad.copy()
    assert np.all(w_grad != 0) and np.all(b_grad != 0)
    m.to(device="cpu")
    np.testing.assert_array_equal(m[0].w.grad, w_grad)
    m.to(dtype=np.float32)
    for p, g in ((m[0].w, w_grad), (m[0].b, b_grad)):
        assert p.grad.dtype == np.float32 and p.grad.shape == p.data.shape
        np.testing.assert_array_equal(p.grad, g.astype(np.float32))
    m.to(dtype=np.float64)
    assert m[0].w.grad.dtype == np.float64
    np.testing.assert_array_equal(m[0].w.grad, w_grad.astype(np.float32).astype(np.float64))


def test_gradcheck_passes_and_catches_wrong_gradient():
    x = np.random.default_rng(0).standard_normal((5, 3))
    assert gradcheck(Sequential(Scale(3), Square(), Scale(3)), x)
    with pytest.raises(GradcheckError) as e:
        gradcheck(Scale(3, bug=True), x)
    msg = str(e.value)
    assert "gradient of w at index" in msg and "expected" in msg and "got" in msg


def test_check_gradients_functional():
    a = np.array([1.0, -2.0, 3.0])
    check_gradients(lambda: float(np.sum(a ** 3)), {"a": a}, {"a": 3 * a ** 2})
    with pytest.raises(GradcheckError, match=r"gradient of a at index \(1,\)"):
        wrong = 3 * a ** 2
        wrong[1] += 1
        check_gradients(lambda: float(np.sum(a ** 3)), {"a": a}, {"a": wrong})


def _ce_reference(z, labels, eps):
    z = z.astype(np.float64)
    n, k = z.shape
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    q = np.full((n, k), eps / k)
    q[np.arange(n), labels] += 1 - eps
    return float(-(q * np.log(p)).sum(1).mean()), (p - q) / n


@given(n=st.integers(1, 6), k=st.integers(2, 7), eps=st.sampled_from([0.0, 0.1, 0.3]), seed=st.integers(0, 999),
       scale=st.sampled_from([1.0, 100.0]))
def test_cross_entropy_matches_reference_and_gradcheck(n, k, eps, seed, scale):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, k)) * scale
    labels = rng.integers(0, k, n)
    ce = SoftmaxCrossEntropy(label_smoothing=eps)
    loss = ce.forward(z, labels)
    ref_loss, ref_g = _ce_reference(z, labels, eps)
    assert np.isclose(loss, ref_loss, rtol=1e-10, atol=1e-10)
    g = ce.backward()
    np.testing.assert_allclose(g, ref_g, rtol=1e-9, atol=1e-12)
    if scale == 1.0:
        check_gradients(lambda: SoftmaxCrossEntropy(eps).forward(z, labels), {"logits": z}, {"logits": g})


def test_cross_entropy_is_stable_for_huge_logits():
    z = np.array([[1e4, -1e4, 0.0]], dtype=np.float32)
    ce = SoftmaxCrossEntropy()
    assert np.isfinite(ce.forward(z, np.array([1])))
    assert np.all(np.isfinite(ce.backward()))


def test_cross_entropy_errors():
    ce = SoftmaxCrossEntropy()
    with pytest.raises(TypeError, match="labels: expected an integer array"):
        ce.forward(np.zeros((2, 3)), np.zeros(2))
    with pytest.raises(ValueError, match=r"labels: expected values in \[0, 3\)"):
        ce.forward(np.zeros((2, 3)), np.array([0, 3]))
    with pytest.raises(ValueError, match="logits: expected a 2-D array"):
        ce.forward(np.zeros((2, 3, 1)), np.array([0, 1]))
    with pytest.raises(ValueError, match="label_smoothing"):
        SoftmaxCrossEntropy(1.5)
    with pytest.raises(RuntimeError, match="before forward"):
        SoftmaxCrossEntropy().backward()


def _sgd_reference(w, grads, lr, mu, nesterov, wd):
    w = w.copy()
    b = None
    for g in grads:
        g = g + wd * w
        if mu:
            b = g.copy() if b is None else mu * b + g
            g = g + mu * b if nesterov else b
        w = w - lr * g
    return w


@given(mu=st.sampled_from([0.0, 0.9]), nesterov=st.booleans(), wd=st.sampled_from([0.0, 5e-4]),
       seed=st.integers(0, 999))
def test_sgd_matches_formula(mu, nesterov, wd, seed):
    if nesterov and mu == 0:
        nesterov = False
    rng = np.random.default_rng(seed)
    p = Parameter(rng.standard_normal(5))
    w0 = p.data.copy()
    grads = [rng.standard_normal(5) for _ in range(4)]
    opt = SGD([p], lr=0.1, momentum=mu, nesterov=nesterov, weight_decay=wd)
    for g in grads:
        p.grad[:] = g
        opt.step()
    np.testing.assert_allclose(p.data, _sgd_reference(w0, grads, 0.1, mu, nesterov, wd), rtol=1e-12)


def test_sgd_state_roundtrip_resumes_exactly():
    rng = np.random.default_rng(1)
    grads = [rng.standard_normal(4) for _ in range(6)]
    p1 = Parameter(np.ones(4))
    o1 = SGD([p1], lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3)
    for g in grads:
        p1.grad[:] = g
        o1.step()
    p2 = Parameter(np.ones(4))
    o2 = SGD([p2], lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3)
    for g in grads[:3]:
        p2.grad[:] = g
        o2.step()
    state, w = copy.deepcopy(o2.state_dict()), p2.data.copy()
    p3 = Parameter(w)
    o3 = SGD([p3], lr=1.0, momentum=0.5).load_state_dict(state)
    for g in grads[3:]:
        p3.grad[:] = g
        o3.step()
    np.testing.assert_array_equal(p3.data, p1.data)


def test_sgd_errors():
    p = Parameter(np.ones(2))
    with pytest.raises(ValueError, match=r"lr: expected a (finite real )?number > 0, got 0"):  # optim.py's new wording
        SGD([p], lr=0)
    with pytest.raises(ValueError, match="nesterov=True needs momentum > 0"):
        SGD([p], nesterov=True)
    with pytest.raises(TypeError, match=r"params\[0\]: expected a Parameter"):
        SGD([np.ones(2)])


def test_backend_cpu_seam():
    x = np.ones(3, dtype=np.float32)
    assert backend.get_array_module(x) is np
    assert backend.device_of(x) == "cpu"
    assert backend.to_device(x, "cpu") is x
    with pytest.raises(ValueError, match="device: expected one of"):
        backend.check_device("cuda")
    if not backend.gpu_available():
        with pytest.raises(RuntimeError, match="device='gpu' was asked for"):
            backend.check_device("gpu")
        assert backend.gpu_unavailable_reason()


def test_package_exports():
    for name in ["Module", "Parameter", "Sequential", "SGD", "SoftmaxCrossEntropy", "gradcheck"]:
        assert hasattr(minignn, name)


def test_runtime_tuning_applies_at_import_and_can_be_turned_off():
    import subprocess
    import sys
    code = ("import os, minignn; from minignn import _runtime as r; "
            "print(os.environ.get('OPENBLAS_THREAD_TIMEOUT'), os.environ.get('GOMP_SPINCOUNT'), r.applied.get('mallopt'))")
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPENBLAS_THREAD_TIMEOUT", "GOMP_SPINCOUNT", "MINIGNN_NO_TUNING")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    blas, gomp, malloc = out.stdout.split()
    assert (blas, gomp) == ("4", "10000")
    if sys.platform.startswith("linux"):
        assert malloc == "True"
    out = subprocess.run([sys.executable, "-c", code], env=dict(env, MINIGNN_NO_TUNING="1"), capture_output=True,
                         text=True, timeout=120)
    assert out.stdout.split() == ["None", "None", "None"], out.stdout + out.stderr
    # a value the user set is kept
    out = subprocess.run([sys.executable, "-c", code], env=dict(env, GOMP_SPINCOUNT="7"), capture_output=True,
                         text=True, timeout=120)
    assert out.stdout.split()[1] == "7"
