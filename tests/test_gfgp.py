"""GFGP pieces: global (and local) statistics and the mapping t -> (lam, rho)."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from helpers import assert_close, distinct_array, seeds, gpu_pending

from minignn import backend
from minignn.gradcheck import check_gradients, gradcheck
from minignn.module import Module
from minignn.layers.gfgp import (STD_EPS, GFGPMapping, global_stats_backward, global_stats_forward,
                                 local_stats_backward, local_stats_forward)
from minignn.layers.gfgp import cpu as gcpu
from minignn.layers.gfgp.reference import (gfgp_mapping_reference, global_stats_backward_reference,
                                           global_stats_reference, local_stats_reference)

STATS = ["avg", "avg+std", "max"]
dtypes = st.sampled_from([np.float32, np.float64])
# the `device` fixture is a plain string, so reusing it across generated inputs is safe
device_ok = settings(suppress_health_check=list(settings().suppress_health_check) + [HealthCheck.function_scoped_fixture])
shapes4 = st.tuples(st.integers(1, 3), st.integers(1, 4), st.integers(1, 6), st.integers(1, 6))



# ---------------------------------------------------------------------------------------------
# global statistics
# ---------------------------------------------------------------------------------------------
@device_ok
@given(shape=shapes4, stat=st.sampled_from(STATS), dtype=dtypes, ties=st.booleans(), seed=seeds)
def test_global_stats_kernels_match_reference(device, shape, stat, dtype, ties, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * 3
    if ties:  # repeated values: the max gradient must go to the first argmax, as in the reference
        x = np.round(x)
    x = x.astype(dtype)
    xd = backend.to_device(x, device)
    if gpu_pending(device, "", lambda: global_stats_forward(xd, stat)):
        return
    t, saved = global_stats_forward(xd, stat)
    k = 2 if stat == "avg+std" else 1
    assert t.shape == (shape[0], k * shape[1]) and t.dtype == dtype
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    assert_close(t, global_stats_reference(x, stat), name=f"t ({stat})", **tol)

    gt = rng.standard_normal(t.shape).astype(dtype)
    expected = global_stats_backward_reference(gt, x, stat)
    gx = global_stats_backward(gt, saved)
    assert gx.shape == x.shape and gx.dtype == dtype
    assert_close(gx, expected, name=f"gx ({stat})", **tol)
    # out=: the gradient is added into an existing array in place
    base = rng.standard_normal(shape).astype(dtype)
    acc = base.copy()
    ret = global_stats_backward(gt, saved, out=acc)
    assert ret is acc
    assert_close(acc, base + expected, name=f"out += gx ({stat})", **tol)
    # a non-contiguous out (a strided view) works too
    wide = np.zeros(shape[:3] + (2 * shape[3],), dtype=dtype)
    view = wide[..., ::2]
    view[...] = base
    assert global_stats_backward(gt, saved, out=view) is view
    assert_close(wide[..., ::2], base + expected, name=f"strided out += gx ({stat})", **tol)
    assert np.all(wide[..., 1::2] == 0)


@given(shape=shapes4, stat=st.sampled_from(STATS), seed=seeds)
def test_global_stats_gradient_central_differences(shape, stat, seed):
    rng = np.random.default_rng(seed)
    x = distinct_array(rng, shape, scale=1.0, gap=0.05)  # no ties: max is differentiable
    r = None

    def loss():
        return float(np.sum(global_stats_forward(x, stat)[0] * r))

    t, saved = global_stats_forward(x, stat)
    r = rng.standard_normal(t.shape)
    gx = global_stats_backward(r.copy(), saved)
    check_gradients(loss, {"x": x}, {"x": gx}, max_checks=30, seed=seed)


def test_std_is_finite_for_a_constant_channel():
    x = np.full((2, 3, 4, 4), 1.5)
    t, saved = global_stats_forward(x, "avg+std")
    np.testing.assert_allclose(t[:, 3:], np.sqrt(STD_EPS))
    gx = global_stats_backward(np.ones_like(t), saved)
    assert np.all(np.isfinite(gx))
    np.testing.assert_allclose(gx, 1 / 16)  # the std block contributes (x - avg) = 0


def test_std_is_stable_for_a_large_offset():
    """Two-pass variance: a large mean does not swamp a small spread (float32)."""
    rng = np.random.default_rng(0)
    x = (1e4 + rng.standard_normal((2, 3, 8, 8))).astype(np.float32)
    t, _ = global_stats_forward(x, "avg+std")
    ref = np.sqrt(x.astype(np.float64).reshape(2, 3, -1).var(axis=2) + STD_EPS)
    np.testing.assert_allclose(t[:, 3:], ref, rtol=1e-4)


def test_max_propagates_nan_like_numpy():
    x = np.zeros((1, 2, 3, 3), dtype=np.float32)
    x[0, 0, 1, 1] = np.nan
    x[0, 1, 2, 2] = 5.0
    t, _ = global_stats_forward(x, "max")
    assert np.isnan(t[0, 0]) and t[0, 1] == 5.0


@pytest.mark.parametrize("stat", STATS)
def test_kernels_plain_python_fallback_agrees(stat):
    """The kernels' Python source (what NUMBA_DISABLE_JIT=1 runs) gives the jitted results."""
    def py(kernel):  # under NUMBA_DISABLE_JIT=1 the kernel already is the Python function
        return getattr(kernel, "py_func", kernel)

    rng = np.random.default_rng(1)
    x2 = rng.standard_normal((6, 11))
    g = rng.standard_normal(6)
    if stat == "avg":
        a, b = np.empty(6), np.empty(6)
        gcpu.global_avg_fwd_cpu(x2, a)
        py(gcpu.global_avg_fwd_cpu)(x2, b)
        ga, gb = np.ones((6, 11)), np.ones((6, 11))
        gcpu.global_avg_bwd_cpu(g, ga, True)
        py(gcpu.global_avg_bwd_cpu)(g, gb, True)
    elif stat == "avg+std":
        a, b, sa, sb = np.empty(6), np.empty(6), np.empty(6), np.empty(6)
        gcpu.global_avgstd_fwd_cpu(x2, 1e-5, a, sa)
        py(gcpu.global_avgstd_fwd_cpu)(x2, 1e-5, b, sb)
        np.testing.assert_allclose(sa, sb, rtol=1e-13)
        ga, gb = np.ones((6, 11)), np.ones((6, 11))
        gcpu.global_avgstd_bwd_cpu(x2, g, g[::-1].copy(), a, sa, ga, False)
        py(gcpu.global_avgstd_bwd_cpu)(x2, g, g[::-1].copy(), a, sa, gb, False)
    else:
        a, b = np.empty(6), np.empty(6)
        ia, ib = np.empty(6, np.int64), np.empty(6, np.int64)
        gcpu.global_max_fwd_cpu(x2, a, ia)
        py(gcpu.global_max_fwd_cpu)(x2, b, ib)
        np.testing.assert_array_equal(ia, ib)
        ga, gb = np.ones((6, 11)), np.ones((6, 11))
        gcpu.global_max_bwd_cpu(g, ia, ga, False)
        py(gcpu.global_max_bwd_cpu)(g, ib, gb, False)
    np.testing.assert_allclose(a, b, rtol=1e-13)
    np.testing.assert_allclose(ga, gb, rtol=1e-13)


def test_global_stats_errors():
    x = np.ones((2, 3, 4, 4), dtype=np.float32)
    with pytest.raises(ValueError, match=r"global_stats_forward: x: expected a 4-D array .*got shape \(3, 4, 4\)"):
        global_stats_forward(x[0])
    with pytest.raises(TypeError, match="global_stats_forward: x: expected dtype float32 or float64, got int64"):
        global_stats_forward(np.ones((2, 3, 4, 4), dtype=np.int64))
    with pytest.raises(ValueError, match=r"stat: expected one of \['avg', 'avg\+std', 'max'\], got 'std'"):
        global_stats_forward(x, "std")
    t, saved = global_stats_forward(x, "avg+std")
    with pytest.raises(ValueError, match=r"gt: expected shape \(2, 6\) .*got \(2, 3\)"):
        global_stats_backward(np.ones((2, 3), np.float32), saved)
    with pytest.raises(TypeError, match="gt: expected dtype float32"):
        global_stats_backward(np.ones((2, 6), np.float64), saved)
    with pytest.raises(ValueError, match=r"out: expected shape \(2, 3, 4, 4\)"):
        global_stats_backward(t, saved, out=np.zeros((2, 3, 4, 5), np.float32))
    with pytest.raises(TypeError, match="saved: expected what global_stats_forward returned"):
        global_stats_backward(t, None)


# ---------------------------------------------------------------------------------------------
# local statistics (Table 1b ablation)
# ---------------------------------------------------------------------------------------------
geom = st.sampled_from([((2, 2), (2, 2), (0, 0)), ((3, 3), (2, 2), (1, 1)), ((2, 3), (1, 2), (1, 0)),
                        ((3, 2), (3, 1), (0, 1))])


@device_ok
@given(n=st.integers(1, 2), c=st.integers(1, 3), h=st.integers(3, 6), w=st.integers(3, 6), g=geom,
       stat=st.sampled_from(STATS), dtype=dtypes, seed=seeds)
def test_local_stats_match_reference(device, n, c, h, w, g, stat, dtype, seed):
    rng = np.random.default_rng(seed)
    k, s, p = g
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    xd = backend.to_device(x, device)
    if gpu_pending(device, "", lambda: local_stats_forward(xd, stat, k, s, p)):
        return
    t, saved = local_stats_forward(xd, stat, k, s, p)
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-12)
    assert t.dtype == dtype
    assert_close(t, local_stats_reference(x, stat, k, s, p), name=f"local t ({stat})", **tol)


@given(g=geom, stat=st.sampled_from(STATS), seed=seeds)
def test_local_stats_gradient_central_differences(g, stat, seed):
    rng = np.random.default_rng(seed)
    k, s, p = g
    x = distinct_array(rng, (2, 2, 5, 4), scale=1.0, gap=0.05)
    t, saved = local_stats_forward(x, stat, k, s, p)
    r = rng.standard_normal(t.shape)
    gx = local_stats_backward(r.copy(), saved)
    base = rng.standard_normal(x.shape)
    acc = base.copy()
    assert local_stats_backward(r.copy(), saved, out=acc) is acc
    assert_close(acc, base + gx, rtol=1e-12, atol=1e-12, name="out += gx")
    check_gradients(lambda: float(np.sum(local_stats_forward(x, stat, k, s, p)[0] * r)), {"x": x}, {"x": gx},
                    max_checks=30, seed=seed)


def test_local_std_is_stable_for_a_large_offset():
    """The per-plane shift keeps E[x^2] - E[x]^2 from cancelling (float32, channel mean 1e4)."""
    rng = np.random.default_rng(0)
    x = (1e4 + rng.standard_normal((2, 3, 6, 6))).astype(np.float32)
    t, _ = local_stats_forward(x, "avg+std", 2, 2, 0)
    ref = local_stats_reference(x.astype(np.float64), "avg+std", (2, 2), (2, 2), (0, 0))
    np.testing.assert_allclose(t, ref, rtol=1e-3)


def test_local_stats_errors():
    x = np.ones((1, 2, 4, 4))
    with pytest.raises(ValueError, match=r"local_stats_forward: stat: expected one of \['avg', 'avg\+std', 'max'\], got 'min'"):
        local_stats_forward(x, "min")
    t, saved = local_stats_forward(x, "avg")
    with pytest.raises(ValueError, match=r"local_stats_backward: gt: expected shape \(1, 2, 2, 2\)"):
        local_stats_backward(np.ones((1, 2, 2, 3)), saved)


# ---------------------------------------------------------------------------------------------
# the mapping
# ---------------------------------------------------------------------------------------------
class Heads(Module):
    """Exposes (lam, rho) as one flat output so gradcheck sees every path of the mapping."""

    def __init__(self, mapping):
        super().__init__()
        self.mapping = mapping
        self.shapes = None

    def forward(self, t):
        lam, rho = self.mapping.forward(t)
        self.shapes = (lam.shape, None if rho is None else rho.shape)
        parts = [lam.reshape(-1)] + ([] if rho is None else [np.broadcast_to(rho, rho.shape).reshape(-1)])
        return np.concatenate(parts)

    def backward(self, g):
        n = int(np.prod(self.shapes[0]))
        glam = g[:n].reshape(self.shapes[0])
        grho = None if self.shapes[1] is None else np.ascontiguousarray(g[n:].reshape(self.shapes[1]))
        return self.mapping.backward(glam, grho)


mapping_cfg = st.fixed_dictionaries({
    "stat": st.sampled_from(STATS), "hidden": st.sampled_from([0.25, 0.5, 1.0, 2]),
    "mlp": st.sampled_from(["mlp", "slp"]), "activation": st.sampled_from(["sigmoid", "softplus", "tanh", "identity"]),
    "prior": st.sampled_from([None, "param", "predicted"]), "kernel_size": st.sampled_from([2, 3, (2, 3)]),
    "bias": st.booleans()})


@given(cfg=mapping_cfg, c=st.integers(1, 5), local=st.booleans(), seed=seeds)
def test_mapping_forward_matches_reference(cfg, c, local, seed):
    rng = np.random.default_rng(seed)
    m = GFGPMapping(c, rng=rng, **cfg).to(dtype=np.float64)
    kc = m.in_features
    t = rng.standard_normal((3, kc, 2, 3) if local else (3, kc))
    lam, rho = m.forward(t)
    P = dict(m.named_parameters())
    ref_lam, ref_rho = gfgp_mapping_reference(
        t, P["V_lam"].data, cfg["activation"], U=P["U"].data if cfg["mlp"] == "mlp" else None,
        b_U=P.get("U_bias") and P["U_bias"].data, b_lam=P.get("V_lam_bias") and P["V_lam_bias"].data,
        V_rho=P["V_rho"].data if cfg["prior"] == "predicted" else None,
        b_rho=P.get("V_rho_bias") and P["V_rho_bias"].data)
    assert_close(lam, ref_lam, rtol=1e-12, atol=1e-12, name="lam")
    K = m.K
    if cfg["prior"] is None:
        assert rho is None
    elif cfg["prior"] == "param":
        assert rho.shape == (c, K)
        np.testing.assert_array_equal(rho, 0.0)  # zero init
    else:
        assert rho.shape == ((3, c, K, 2, 3) if local else (3, c, K))
        assert_close(rho, ref_rho, rtol=1e-12, atol=1e-12, name="rho")


@given(cfg=mapping_cfg, bn=st.booleans(), c=st.integers(1, 4), local=st.booleans(), seed=seeds)
def test_mapping_backward_central_differences(cfg, bn, c, local, seed):
    rng = np.random.default_rng(seed)
    m = GFGPMapping(c, batchnorm=bn, rng=rng, **cfg)
    if cfg["prior"] == "param":
        m.rho.data[...] = rng.standard_normal(m.rho.shape)
    n = 4
    t = rng.standard_normal((n, m.in_features, 2, 2) if local else (n, m.in_features))
    gradcheck(Heads(m), t, max_checks=12, seed=seed)


def test_mapping_shapes_init_and_accumulation():
    rng = np.random.default_rng(0)
    m = GFGPMapping(8, stat="avg+std", hidden=0.25, prior="predicted", kernel_size=(2, 3), bias=True, rng=rng)
    shapes = {k: v.shape for k, v in m.named_parameters()}
    assert shapes == {"U": (2, 16), "U_bias": (2,), "V_lam": (8, 2), "V_lam_bias": (8,), "V_rho": (48, 2),
                      "V_rho_bias": (48,)}
    assert np.abs(m.U.data).max() <= 1 / np.sqrt(16) and np.abs(m.V_lam.data).max() <= 1 / np.sqrt(2)
    assert m.U.data.dtype == np.float32
    again = GFGPMapping(8, stat="avg+std", hidden=0.25, prior="predicted", kernel_size=(2, 3), bias=True,
                        rng=np.random.default_rng(0))
    np.testing.assert_array_equal(again.U.data, m.U.data)  # seeded: reproducible
    assert GFGPMapping(6).hidden == 3 and GFGPMapping(1, hidden=0.25).hidden == 1 and GFGPMapping(6, mlp="slp").hidden == 0
    # sigmoid keeps lam in (0, 1); backward adds into .grad
    t = rng.standard_normal((5, 16)).astype(np.float32)
    lam, rho = m.forward(t)
    assert lam.shape == (5, 8) and rho.shape == (5, 8, 6) and np.all((lam > 0) & (lam < 1))
    m.backward(np.ones_like(lam), np.ones_like(rho))
    g1 = m.U.grad.copy()
    m.backward(np.ones_like(lam), np.ones_like(rho))
    np.testing.assert_allclose(m.U.grad, 2 * g1, rtol=1e-6)
    # grho=None: a zero gradient for rho (only the lam head contributes)
    m.zero_grad()
    m.backward(np.ones_like(lam))
    assert np.all(m.V_rho.grad == 0) and np.any(m.V_lam.grad != 0)


def test_mapping_errors():
    with pytest.raises(ValueError, match=r"GFGPMapping: stat: expected one of \['avg', 'avg\+std', 'max'\], got 'min'"):
        GFGPMapping(4, stat="min")
    with pytest.raises(ValueError, match=r"GFGPMapping: activation: expected one of .*got 'relu'"):
        GFGPMapping(4, activation="relu")
    with pytest.raises(ValueError, match=r"GFGPMapping: mlp: expected one of \['mlp', 'slp'\], got 'deep'"):
        GFGPMapping(4, mlp="deep")
    with pytest.raises(ValueError, match=r"GFGPMapping: prior: expected one of \[None, 'param', 'predicted'\]"):
        GFGPMapping(4, prior="learned")
    for bad in (0, -0.5, float("nan"), "half", True):
        with pytest.raises(ValueError, match="GFGPMapping: hidden: expected a positive number"):
            GFGPMapping(4, hidden=bad)
    with pytest.raises(ValueError, match="GFGPMapping: channels: expected an integer >= 1, got 0"):
        GFGPMapping(0)
    with pytest.raises(ValueError, match="GFGPMapping: bias: expected True or False"):
        GFGPMapping(4, bias="yes")
    with pytest.raises(TypeError, match="GFGPMapping: rng: expected a numpy.random.Generator"):
        GFGPMapping(4, rng=3)
    m = GFGPMapping(4, stat="avg+std")
    with pytest.raises(RuntimeError, match="backward called before forward"):
        m.backward(np.ones((2, 4), np.float32))
    with pytest.raises(ValueError, match=r"GFGPMapping.forward: t: expected 8 channels at axis 1, got 4"):
        m.forward(np.ones((2, 4), np.float32))
    with pytest.raises(ValueError, match=r"GFGPMapping.forward: t: expected a 2-D \(N, 8\) or 4-D"):
        m.forward(np.ones((2, 8, 1), np.float32))
    with pytest.raises(TypeError, match="t: expected dtype float32 \\(the parameters' dtype\\), got float64"):
        m.forward(np.ones((2, 8)))
    with pytest.raises(TypeError, match="expected dtype float32 or float64, got int32"):
        m.forward(np.ones((2, 8), np.int32))
    lam, _ = m.forward(np.ones((2, 8), np.float32))
    with pytest.raises(ValueError, match=r"GFGPMapping.backward: glam: expected shape \(2, 4\)"):
        m.backward(np.ones((2, 5), np.float32))
    with pytest.raises(ValueError, match="grho: this mapping has no prior"):
        m.backward(lam, np.ones((2, 4, 4), np.float32))
