"""GFGP pieces: global (and local) statistics and the mapping t -> (lam, rho), what is specific to
them. The statistics' public paths against their references (every statistic, distinct values,
every window geometry, every layout, float32 and float64), their float64 central differences and
the NUMBA_DISABLE_JIT=1 run are the contract suite's (tests/test_ops.py, ops ``gfgp_stats`` and
``gfgp_local_stats``). Here: ties, ``out=`` accumulation, std stability, NaN, errors, the mapping."""
import numpy as np
import pytest
from hypothesis import given, strategies as st
from helpers import HypothesisDraw, assert_close, device_ok, dtypes, require, seeds

from minignn import backend, cases
from minignn.gradcheck import gradcheck
from minignn.module import Module
from minignn.ops import OPS
from minignn.layers.gfgp import (STD_EPS, GFGPMapping, global_stats_backward, global_stats_forward,
                                 local_stats_backward, local_stats_forward)
from minignn.layers.gfgp.reference import (gfgp_mapping_reference, global_stats_backward_reference,
                                           global_stats_reference, local_stats_reference)

STATS = ["avg", "avg+std", "max"]
shapes4 = st.tuples(st.integers(1, 3), st.integers(1, 4), st.integers(1, 6), st.integers(1, 6))


def added_into(backward, gt, saved, shape, dtype, rng, tol):
    """backward(gt, saved, out=...) into a C-contiguous array and into a strided view: each is
    returned, holds what was there plus the gradient (to ``tol``), and the view's neighbours
    stay 0. Returns the gradient itself, ``backward(gt, saved)``, on the host in float64."""
    gx = backend.to_numpy(backward(gt, saved)).astype(np.float64)
    base = rng.standard_normal(shape).astype(dtype)
    acc = backend.to_device(base.copy(), backend.device_of(gt))      # (the same array on the CPU)
    assert backward(gt, saved, out=acc) is acc
    assert_close(acc, base + gx, name="out += gx", **tol)
    wide = backend.to_device(np.zeros(shape[:3] + (2 * shape[3],), dtype=dtype), backend.device_of(gt))
    view = wide[..., ::2]
    view[...] = backend.to_device(base, backend.device_of(gt))
    assert backward(gt, saved, out=view) is view
    wide = backend.to_numpy(wide)
    assert_close(wide[..., ::2], base + gx, name="strided out += gx", **tol)
    assert np.all(wide[..., 1::2] == 0)
    return gx


# ---------------------------------------------------------------------------------------------
# global statistics
# ---------------------------------------------------------------------------------------------
@device_ok
@given(shape=shapes4, stat=st.sampled_from(STATS), dtype=dtypes, seed=seeds)
def test_global_stats_ties_and_out_accumulation(device, shape, stat, dtype, seed):
    """What the contract's distinct-valued samples leave out: repeated values (the max gradient
    goes to the first argmax, row-major, as in the reference) and ``out=`` (the gradient added
    in place into a C-contiguous array and into a strided view)."""
    require(device, "gfgp_stats")
    rng = np.random.default_rng(seed)
    x = np.round(rng.standard_normal(shape) * 3).astype(dtype)       # small integers: many ties
    t, saved = global_stats_forward(backend.to_device(x, device), stat)
    tol = OPS["gfgp_stats"].tol(dtype)
    assert_close(t, global_stats_reference(x, stat), name=f"t ({stat}, ties)", **tol)
    gt = backend.to_device(rng.standard_normal(t.shape).astype(dtype), device)
    gx = added_into(global_stats_backward, gt, saved, shape, dtype, rng, tol)
    assert_close(gx, global_stats_backward_reference(backend.to_numpy(gt), x, stat), name=f"gx ({stat}, ties)", **tol)
    if stat == "max":                                                # exactly one cell per plane gets gt
        assert np.array_equal((gx != 0).sum(axis=(2, 3)), (backend.to_numpy(gt) != 0).astype(int))


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


@given(dtype=dtypes, data=st.data())
def test_max_gradient_goes_to_the_first_nan(dtype, data):
    """The rule of every max-like kernel: a NaN wins and the *first* NaN (row-major) takes the
    gradient, as numpy's argmax picks it; here with 2-4 NaNs anywhere in a plane."""
    d = HypothesisDraw(data)
    h, w = d.int(1, 6), d.int(2, 6)
    x = d.rng.standard_normal((2, 2, h, w)).astype(dtype)
    for _ in range(d.int(2, 4)):
        x[d.int(0, 1), d.int(0, 1), d.int(0, h - 1), d.int(0, w - 1)] = np.nan
    t, saved = global_stats_forward(x, "max")
    gx = global_stats_backward(np.ones_like(t), saved)
    flat = x.reshape(2, 2, -1)
    first = flat.argmax(-1)                                   # numpy: the first NaN if any, else the first max
    expected = np.zeros_like(flat)
    np.put_along_axis(expected, first[..., None], 1.0, axis=-1)
    np.testing.assert_array_equal(gx.reshape(2, 2, -1), expected)
    np.testing.assert_array_equal(np.isnan(t), np.isnan(flat).any(-1))


def test_mapping_overflow_is_an_error_naming_x():
    """Statistics near float32's limit overflow the MLP (U t is inf, then inf - inf): a clear error
    naming x and the statistic, never a NaN lam or a blame on lam."""
    from minignn.layers import MaxEntPool2d
    x = np.random.default_rng(0).uniform(1e38, 3e38, (2, 64, 4, 4)).astype(np.float32)
    m = MaxEntPool2d(64, stat="max")
    with np.errstate(over="ignore", invalid="ignore"), \
            pytest.raises(ValueError, match=r"MaxEntPool2d.forward: x: expected values the GFGP mapping can take in float32,"
                                            r" got \|x\| up to 3e\+38: its 'max' statistics .* overflow the mapping"):
        m.forward(x)


@pytest.mark.parametrize("stat", STATS)
@pytest.mark.parametrize("lo, hi", [(1e38, 3e38), (0.0, 3e38), (-1.7e38, 1.7e38)])
def test_gfgp_on_inputs_near_the_float32_limit(stat, lo, hi):
    """Finite inputs near float32's limit (the avg+std case gave NaN y): y finite and inside each
    window's range, gx free of NaN (a saturated sigmoid passes no gradient, even an infinite one),
    or the clear overflow error above. Checked with 4 channels, where the mapping does not overflow."""
    from minignn.layers import MaxEntPool2d
    x = np.random.default_rng(1).uniform(lo, hi, (2, 4, 4, 4)).astype(np.float32)
    m = MaxEntPool2d(4, stat=stat)
    with np.errstate(over="ignore", invalid="ignore"):
        y = m.forward(x)
        gx = m.backward(np.ones_like(y))
    win = x.reshape(2, 4, 2, 2, 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(2, 4, 2, 2, 4)
    assert np.all(np.isfinite(y)), "y"
    slack = 1e-6 * np.abs(win).max(-1)                         # the rounding of Y = X_r + sum W (X - X_r)
    assert np.all((y >= win.min(-1) - slack) & (y <= win.max(-1) + slack)), "y outside its window's range"
    assert not np.isnan(gx).any(), "gx"


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
@device_ok
@given(stat=st.sampled_from(STATS), dtype=dtypes, data=st.data())
def test_local_stats_backward_adds_into_out(device, stat, dtype, data):
    """``out=``: the local statistics' gradient added in place (C-contiguous and strided), on
    the window geometries of :mod:`minignn.cases`."""
    require(device, "gfgp_local_stats")
    d = HypothesisDraw(data)
    k, s, p = cases.window(d, max_s=3)
    n, c = cases.planes(d, min_n=1, max_c=2)
    shape = (n, c) + cases.spatial(d, k, p, extra=4)
    x = cases.distinct(d, shape, dtype, gap=0.05)
    t, saved = local_stats_forward(backend.to_device(x, device), stat, k, s, p)
    gt = backend.to_device(d.rng.standard_normal(t.shape).astype(dtype), device)
    added_into(local_stats_backward, gt, saved, shape, dtype, d.rng, OPS["gfgp_local_stats"].tol(dtype))


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
