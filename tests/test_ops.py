"""The contract suite: every op of ``minignn.ops.OPS`` on every device, from the table alone.

For each op and device (a device the op has no kernel on is a visible skip that names the op):

* its public path against its plain-NumPy reference (run in float64) on generated inputs in
  float32 and float64, drawn in C order, Fortran order or as strided views, empty and
  single-image batches included, and enough planes to cross the CPU kernels' chunk boundaries;
  outputs and gradients within the op's tolerance, the inputs left unchanged;
* float64 gradients against central differences;
* once, in a subprocess with ``NUMBA_DISABLE_JIT=1``, the first check again for every op on the
  CPU, so that the kernels' plane bodies run as plain Python too.

Adding an op to the table adds it here; the per-family test files hold only what is specific to
a family (limits of max-entropy pooling, batch-norm running statistics, tie rules, errors).
"""
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, strategies as st

from helpers import HypothesisDraw

from minignn import backend
from minignn.gradcheck import check_gradients
from minignn.ops import OPS

NO_JIT = os.environ.get("NUMBA_DISABLE_JIT") == "1"
_GPU_REASON = "" if backend.gpu_available() else f"no usable GPU: {backend.gpu_unavailable_reason()}"
_SIM_REASON = backend.sim_unavailable_reason()


def _params(names):
    """(op, device) pairs; unsupported ones are skipped with the op (and what it lacks) named."""
    out = []
    for name in names:
        for device in backend.DEVICES:
            marks = []
            op = OPS[name]
            if not op.supports(device):
                marks.append(pytest.mark.skip(reason=f"{name}: no {'GPU' if device != 'cpu' else 'CPU'} kernel yet for "
                                                     f"{', '.join(op.missing(device))}"))
            elif device == "gpu" and _GPU_REASON:
                marks.append(pytest.mark.skip(reason=f"{name}: {_GPU_REASON}"))
            elif device == "gpu-sim" and _SIM_REASON:
                marks.append(pytest.mark.skip(reason=f"{name}: no gpu-sim: {_SIM_REASON}"))
            if device == "gpu":
                marks.append(pytest.mark.gpu)
            out.append(pytest.param(name, device, id=f"{name}-{device}", marks=marks))
    return out


ALL = _params(list(OPS))
DIFFERENTIABLE = _params([n for n, op in OPS.items() if op.backward is not None])
DTYPES = [pytest.param(np.float32, id="float32"), pytest.param(np.float64, id="float64")]


def _is_array(a):
    return isinstance(a, np.ndarray) and a.ndim > 0


def relayout(a, layout):
    """The same values in another memory layout: "C", "F" (reversed strides) or "strided" (every
    other element of a wider array)."""
    if not _is_array(a) or a.size == 0 or layout == "C":
        return a
    if layout == "F":
        return np.asfortranarray(a)
    wide = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), dtype=a.dtype)
    wide[..., ::2] = a
    return wide[..., ::2]


def _f64(a):
    return a.astype(np.float64) if _is_array(a) and a.dtype.kind == "f" else a


def _dev(a, device):
    return backend.to_device(a, device) if isinstance(a, np.ndarray) else a


def _host(a):
    return a if a is None or isinstance(a, (int, float)) else backend.to_numpy(a)


def _compare(got, want, what, tol):
    if want is None:
        assert got is None, f"{what}: expected None, got {type(got).__name__}"
        return
    got = _host(got)
    assert got is not None, f"{what}: got None"
    assert np.shape(got) == np.shape(want), f"{what}: shape {np.shape(got)} != reference {np.shape(want)}"
    np.testing.assert_allclose(np.asarray(got, np.float64), np.asarray(want, np.float64), err_msg=what, **tol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name, device", ALL)
@given(data=st.data())
def test_matches_reference(name, device, dtype, data):
    op = OPS[name]
    case = op.sample(HypothesisDraw(data), dtype)
    layout = data.draw(st.sampled_from(["C", "F", "strided"]), label="layout")
    before = [a.copy() if isinstance(a, np.ndarray) else a for a in case.inputs]
    inputs = [_dev(relayout(a, layout), device) for a in case.inputs]
    tol = op.tol(dtype)

    outs, saved = op.forward(*inputs, **case.params)
    ref_outs, ref_saved = op.reference[0](*map(_f64, case.inputs), **case.params)
    assert len(outs) == len(ref_outs)
    floats = any(_is_array(a) and a.dtype.kind == "f" for a in case.inputs)
    if floats and hasattr(outs[0], "dtype"):
        assert outs[0].dtype == dtype, f"{name}: output dtype {outs[0].dtype}, input dtype {np.dtype(dtype)}"
    for i, (o, r) in enumerate(zip(outs, ref_outs)):
        if o is not None and hasattr(o, "shape"):
            assert backend.device_of(o) == device, f"{name}: output {i} on {backend.device_of(o)}"
        _compare(o, r, f"{name}: output {i}", tol)

    if op.backward is not None:
        rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="gy seed"))
        gys = [rng.standard_normal(np.shape(ref_outs[i])).astype(dtype) for i in range(op.grad_outputs)]
        grads = op.backward(saved, *[_dev(g, device) for g in gys])
        ref_grads = op.reference[1](ref_saved, *map(_f64, gys))
        assert len(grads) == len(case.inputs) == len(ref_grads)
        for i, (g, r) in enumerate(zip(grads, ref_grads)):
            _compare(g, r, f"{name}: gradient of input {i}", tol)
            if _is_array(case.inputs[i]) and case.inputs[i].dtype.kind == "f" and hasattr(g, "dtype"):
                assert g.dtype == dtype or name == "batchnorm2d", f"{name}: gradient {i} dtype {g.dtype}"

    for i, (a, b) in enumerate(zip(inputs, before)):
        if isinstance(b, np.ndarray):
            np.testing.assert_array_equal(_host(a), b, err_msg=f"{name}: input {i} was modified")


ON_GPU = [p for p in ALL if p.values[1] != "cpu"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name, device", ON_GPU)
@given(data=st.data())
def test_gpu_devices_agree_with_the_cpu_kernels(name, device, dtype, data):
    """The same inputs through the CPU kernels and through the GPU code (on gpu-sim or a GPU):
    outputs and gradients within the op's tolerance of each other."""
    op = OPS[name]
    case = op.sample(HypothesisDraw(data), dtype)
    outs_c, saved_c = op.forward(*case.inputs, **case.params)
    outs_d, saved_d = op.forward(*[_dev(a, device) for a in case.inputs], **case.params)
    tol = op.tol(dtype)
    for i, (c, d) in enumerate(zip(outs_c, outs_d)):
        _compare(d, None if c is None else _host(c), f"{name}: output {i}, {device} vs cpu", tol)
    if op.backward is not None:
        rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="gy seed"))
        gys = [rng.standard_normal(np.shape(_host(outs_c[i]))).astype(dtype) for i in range(op.grad_outputs)]
        grads_c = op.backward(saved_c, *gys)
        grads_d = op.backward(saved_d, *[_dev(g, device) for g in gys])
        for i, (c, d) in enumerate(zip(grads_c, grads_d)):
            _compare(d, None if c is None else _host(c), f"{name}: gradient of input {i}, {device} vs cpu", tol)


@pytest.mark.skipif(NO_JIT, reason="plain-Python kernels: the reference check is enough there")
@pytest.mark.parametrize("name, device", DIFFERENTIABLE)
@given(data=st.data())
def test_gradients_match_central_differences(name, device, data):
    """float64: the gradient of sum(y * r) for every checked input against central differences."""
    op = OPS[name]
    case = op.sample(HypothesisDraw(data), np.float64)
    inputs = list(case.inputs)            # host arrays: perturbed in place by the checker
    outs, saved = op.forward(*[_dev(a, device) for a in inputs], **case.params)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="r seed"))
    rs = [rng.standard_normal(np.shape(_host(outs[i]))) for i in range(op.grad_outputs)]
    grads = op.backward(saved, *[_dev(r, device) for r in rs])
    wrt = [i for i in case.grad_inputs() if isinstance(inputs[i], np.ndarray)]   # 0-d arrays included
    tensors = {f"input {i}": inputs[i] for i in wrt}
    analytic = {f"input {i}": _host(grads[i]) for i in wrt}

    def loss():
        ys, _ = op.forward(*[_dev(a, device) for a in inputs], **case.params)
        return sum(float(np.sum(np.asarray(_host(y), np.float64) * r)) for y, r in zip(ys, rs))

    check_gradients(loss, tensors, analytic, **{"max_checks": 20, "seed": 0, **op.gradcheck})


@pytest.mark.skipif(not NO_JIT, reason="runs only inside test_every_op_runs_without_jit's subprocess")
def test_kernels_are_plain_python_here():
    """Under NUMBA_DISABLE_JIT=1 no kernel of minignn is a compiled dispatcher."""
    from numba.core.dispatcher import Dispatcher
    jitted = [f"{mod}.{k}" for mod, m in list(sys.modules.items()) if mod.startswith("minignn")
              for k, v in vars(m).items() if isinstance(v, Dispatcher)]
    assert len(OPS) > 0 and not jitted, jitted


@pytest.mark.skipif(NO_JIT, reason="this is the subprocess")
def test_every_op_runs_without_jit():
    """One subprocess, NUMBA_DISABLE_JIT=1: every op's CPU path against its reference, so the
    inner plane bodies of every kernel run as plain Python (a py_func only de-jits the outer loop)."""
    env = dict(os.environ, NUMBA_DISABLE_JIT="1", HYPOTHESIS_PROFILE="nojit")
    cmd = [sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider", "-m", "not gpu",
           "-k", "(test_matches_reference and cpu) or test_kernels_are_plain_python_here"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900,
                         cwd=os.path.dirname(__file__))
    expected = 2 * len(OPS) + 1
    assert out.returncode == 0 and f"{expected} passed" in out.stdout, out.stdout[-3000:] + out.stderr[-2000:]


# ---------------------------------------------------------------------------------------------
# the table itself
# ---------------------------------------------------------------------------------------------
LAYER_OPS = {"conv2d", "im2col", "batchnorm2d", "relu", "dropout", "linear", "max_pool2d", "avg_pool2d",
             "global_avg_pool2d", "maxent_pool2d", "gfgp_stats", "gfgp_local_stats", "softmax_cross_entropy",
             "sgd_update", "augment"}


def test_the_table_lists_every_op_with_a_reference_and_a_cpu_path():
    assert LAYER_OPS <= set(OPS), sorted(LAYER_OPS - set(OPS))
    for name, op in OPS.items():
        assert op.name == name and op.summary and op.sample is not None
        assert op.supports("cpu"), name
        assert callable(op.reference[0]) and (op.backward is None) == (op.reference[1] is None), name
        assert all(n in OPS for n in op.needs), name


@pytest.fixture
def cpu_only():
    """A temporary op "cpu_only" in the table, ReLU's CPU kernels and no GPU slot."""
    from minignn import ops
    op = OPS["relu"]
    OPS._ops["cpu_only"] = ops.Op("cpu_only", "", op.forward, op.backward, op.reference, cpu=op.cpu, gpu=None)
    yield OPS["cpu_only"]
    del OPS._ops["cpu_only"]


def test_dispatch_picks_the_device_kernels_and_names_an_op_without_a_gpu_kernel(cpu_only):
    from minignn import ops
    fake_gpu_array = type("ndarray", (), {"__module__": "cupy._core.core"})()
    sim_array = backend.to_device(np.zeros(3), "gpu-sim") if not _SIM_REASON else backend.SimArray(3)
    assert ops.kernels("max_pool2d", np.zeros(3)) is OPS["max_pool2d"].cpu
    assert ops.kernels("max_pool2d", fake_gpu_array) is OPS["max_pool2d"].slot("gpu")
    assert ops.kernels("max_pool2d", sim_array) is OPS["max_pool2d"].slot("gpu")   # the same GPU glue
    assert ops.kernels("relu", fake_gpu_array) is OPS["relu"].gpu
    for a, device in ((fake_gpu_array, "gpu"), (sim_array, "gpu-sim")):
        with pytest.raises(NotImplementedError, match=f"cpu_only: no GPU kernel yet \\(array on {device}\\)"):
            ops.kernels("cpu_only", a)
    with pytest.raises(KeyError, match="op: expected one of"):
        ops.kernels("no_such_op", np.zeros(3))


def test_register_rejects_duplicates_and_bad_slots_and_resolves_lazy_gpu_kernels(cpu_only):
    from minignn import ops
    op = OPS["relu"]
    with pytest.raises(ValueError, match="already registered"):
        ops.register(op)
    with pytest.raises(TypeError, match="expected Kernels, XP"):
        ops.register(ops.Op("bad", "", op.forward, op.backward, op.reference, cpu=len))
    lazy = ops.Op("lazy", "", op.forward, op.backward, op.reference, cpu=op.cpu,
                  gpu="minignn.layers.activation:_relu_fwd_xp")
    from minignn.layers.activation import _relu_fwd_xp
    assert lazy.slot("gpu") is _relu_fwd_xp and lazy.supports("gpu")
    dep = ops.Op("dep", "", op.forward, op.backward, op.reference, cpu=ops.XP, gpu=ops.XP, needs=(cpu_only.name,))
    assert dep.missing("gpu") == dep.missing("gpu-sim") == ["cpu_only"] and dep.supports("cpu")
