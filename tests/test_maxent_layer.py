"""MaxEntPool2d: the four lam forms (const, param, gfgp, local), priors, and the GFGP mapping
settings, against the NumPy references and central differences."""
import numpy as np
import pytest
from hypothesis import given, strategies as st
from helpers import assert_close, device_ok, distinct_array, dtypes, require, seeds

from minignn import backend
from minignn.gradcheck import gradcheck
from minignn.module import Sequential
from minignn.layers.gfgp.reference import gfgp_mapping_reference, global_stats_reference, local_stats_reference
from minignn.layers.gfgp.layer import MaxEntPool2d
from minignn.layers.maxent.reference import maxent_pool2d_forward_ref

ACTS = ["sigmoid", "softplus", "tanh", "identity"]
#: the statistics op each GFGP lam form is built on (besides maxent_pool2d)
STATS_OP = {"gfgp": ("gfgp_stats",), "local": ("gfgp_local_stats",)}
geoms = st.sampled_from([(2, None, 0), (2, 2, 0), (3, 2, 1), ((2, 3), (1, 2), (1, 0)), (3, 1, 1)])


@st.composite
def layer_cfgs(draw, batchnorm=True):
    """A valid MaxEntPool2d configuration (lam form x prior x stat x mapping settings)."""
    lam = draw(st.sampled_from(["const", "param", "gfgp", "local"]))
    priors = [None, "param", "predicted"] if lam == "gfgp" else [None, "param"]
    k, s, p = draw(geoms)
    return dict(kernel_size=k, stride=s, padding=p, lam=lam, lam_init=draw(st.sampled_from([0.0, 0.5, 1.0, -1.0, 3.0])),
                prior=draw(st.sampled_from(priors)), stat=draw(st.sampled_from(["avg", "avg+std", "max"])),
                hidden=draw(st.sampled_from([0.25, 0.5, 1.0])), mlp=draw(st.sampled_from(["mlp", "slp"])),
                activation=draw(st.sampled_from(ACTS)), bias=draw(st.booleans()),
                batchnorm=draw(st.booleans()) if batchnorm else False)


def randomise(layer, rng):
    """Non-trivial trained parameters: random lam (param form) and rho (param prior)."""
    for name, p in layer.named_parameters():
        if name == "lam":
            p.data[...] = rng.uniform(-1, 2, p.shape)
        elif name.endswith("rho"):
            p.data[...] = rng.standard_normal(p.shape)


def expected_output(layer, x):
    """y from the references only: stats -> mapping -> max-entropy pooling, all in NumPy."""
    k, s, p = layer.kernel_size, layer.stride, layer.padding
    P = {n: backend.to_numpy(q.data) for n, q in layer.named_parameters()}
    if layer.lam_form == "const":
        lam = layer.lam_init
    elif layer.lam_form == "param":
        lam = P["lam"]
    else:
        m = layer.mapping
        t = (global_stats_reference(x, layer.stat) if layer.lam_form == "gfgp"
             else local_stats_reference(x, layer.stat, k, s, p))
        lam, rho = gfgp_mapping_reference(
            t, P["mapping.V_lam"], m.activation, U=P.get("mapping.U"), b_U=P.get("mapping.U_bias"),
            b_lam=P.get("mapping.V_lam_bias"), V_rho=P.get("mapping.V_rho"), b_rho=P.get("mapping.V_rho_bias"))
    rho = P.get("rho", P.get("mapping.rho", rho if layer.lam_form in ("gfgp", "local") else None))
    return maxent_pool2d_forward_ref(x, lam, rho, k, s, p), lam, rho


@device_ok
@given(cfg=layer_cfgs(batchnorm=False), n=st.integers(1, 3), c=st.integers(1, 4), h=st.integers(3, 7),
       w=st.integers(3, 7), dtype=dtypes, seed=seeds)
def test_forward_matches_references(device, cfg, n, c, h, w, dtype, seed):
    require(device, "maxent_pool2d", *STATS_OP.get(cfg["lam"], ()))
    rng = np.random.default_rng(seed)
    layer = MaxEntPool2d(c, rng=rng, **cfg).to(dtype=dtype)
    randomise(layer, rng)
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    y = layer.to(device=device).forward(backend.to_device(x, device))
    y_ref, lam_ref, _ = expected_output(layer, x.astype(np.float64))
    tol = dict(rtol=2e-4, atol=2e-5) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-12)
    assert y.dtype == dtype
    assert_close(y, y_ref, name=f"y ({cfg['lam']})", **tol)
    assert_close(layer.last_lam, np.broadcast_to(lam_ref, layer.last_lam.shape), name="last_lam", **tol)


@given(cfg=layer_cfgs(), n=st.integers(2, 3), c=st.integers(1, 3), h=st.integers(3, 5), w=st.integers(3, 5),
       seed=seeds)
def test_gradcheck_whole_layer(cfg, n, c, h, w, seed):
    rng = np.random.default_rng(seed)
    layer = MaxEntPool2d(c, rng=rng, **cfg)
    randomise(layer, rng)
    x = distinct_array(rng, (n, c, h, w), scale=1.0, gap=0.02)  # no ties: the "max" statistic is differentiable
    gradcheck(layer, x, max_checks=10, seed=seed)


@pytest.mark.parametrize("lam,prior,lam_shape,rho_shape", [
    ("const", None, (3,), None), ("param", "param", (3,), (3, 4)), ("gfgp", None, (2, 3), None),
    ("gfgp", "predicted", (2, 3), (2, 3, 4)), ("gfgp", "param", (2, 3), (3, 4)), ("local", None, (2, 3, 3, 2), None),
    ("local", "param", (2, 3, 3, 2), (3, 4))])
def test_last_lam_and_rho_shapes(lam, prior, lam_shape, rho_shape):
    layer = MaxEntPool2d(3, lam=lam, prior=prior, lam_init=0.7)
    x = np.random.default_rng(0).standard_normal((2, 3, 6, 5)).astype(np.float32)
    for mode in ("train", "eval"):
        getattr(layer, mode)()
        layer.forward(x)
        assert layer.last_lam.shape == lam_shape, mode
        assert (layer.last_rho is None) if rho_shape is None else (layer.last_rho.shape == rho_shape), mode
    if lam in ("const", "param"):
        np.testing.assert_allclose(layer.last_lam, 0.7)
    if lam == "gfgp":  # sigmoid: lam in (0, 1), and it depends on the sample
        assert np.all((layer.last_lam > 0) & (layer.last_lam < 1))


def test_limits_average_and_max():
    rng = np.random.default_rng(0)
    x = distinct_array(rng, (2, 3, 4, 6), scale=1.0, gap=0.05)
    windows = x.reshape(2, 3, 2, 2, 3, 2)
    avg = MaxEntPool2d(3, lam="const", lam_init=0.0).forward(x)
    assert_close(avg, windows.mean(axis=(3, 5)), rtol=1e-12, atol=1e-12, name="lam=0 is average pooling")
    mx = MaxEntPool2d(3, lam="const", lam_init=2000.0).forward(x)
    assert_close(mx, windows.max(axis=(3, 5)), rtol=0, atol=1e-9, name="large lam is max pooling")
    mn = MaxEntPool2d(3, lam="const", lam_init=-2000.0).forward(x)
    assert_close(mn, windows.min(axis=(3, 5)), rtol=0, atol=1e-9, name="large negative lam is min pooling")


def test_defaults_are_the_papers_best_and_a_maxpool_drop_in():
    layer = MaxEntPool2d(8)
    assert (layer.lam_form, layer.stat, layer.prior) == ("gfgp", "avg", None)
    m = layer.mapping
    assert (m.mlp, m.hidden, m.activation, m.bias, m.batchnorm) == ("mlp", 4, "sigmoid", False, False)
    assert {k: v.shape for k, v in layer.named_parameters()} == {"mapping.U": (4, 8), "mapping.V_lam": (8, 4)}
    assert layer.stride == (2, 2)  # stride None = kernel_size, as MaxPool2d
    rng = np.random.default_rng(1)
    net = Sequential(MaxEntPool2d(8, kernel_size=3, stride=2, padding=1, rng=rng), MaxEntPool2d(8, rng=rng))
    x = rng.standard_normal((2, 8, 9, 7)).astype(np.float32)
    y = net.forward(x)
    assert y.shape == (2, 8, 2, 2) and y.dtype == np.float32  # 9x7 -> 5x4 -> 2x2
    gx = net.backward(np.ones_like(y))
    assert gx.shape == x.shape and gx.dtype == np.float32 and np.all(np.isfinite(gx))


def test_backward_adds_into_parameter_grads():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 8, 4, 4)).astype(np.float32)
    # explicit generators: with the library-wide one the hidden ReLU units could all be dead for
    # this input (all MLP gradients exactly 0), depending on what ran before
    for layer in (MaxEntPool2d(8, lam="param", prior="param", rng=np.random.default_rng(0)),
                  MaxEntPool2d(8, prior="predicted", bias=True, rng=np.random.default_rng(1))):
        y = layer.forward(x)
        layer.backward(np.ones_like(y))
        first = {k: p.grad.copy() for k, p in layer.named_parameters()}
        assert all(np.any(g != 0) for g in first.values()), first
        layer.backward(np.ones_like(y))
        for k, p in layer.named_parameters():
            np.testing.assert_allclose(p.grad, 2 * first[k], rtol=1e-5, atol=1e-7, err_msg=k)


@pytest.mark.parametrize("kwargs, match", [
    (dict(lam="fixed"), r"MaxEntPool2d: lam: expected one of \['const', 'param', 'gfgp', 'local'\], got 'fixed'"),
    (dict(lam="param", prior="predicted"), "MaxEntPool2d: prior: 'predicted' needs lam='gfgp'"),
    (dict(lam="local", prior="predicted"), "MaxEntPool2d: prior: 'predicted' needs lam='gfgp'"),
    (dict(lam="const", lam_init=float("inf")), "MaxEntPool2d: lam_init: expected a finite number, got inf"),
    (dict(activation="relu"), "MaxEntPool2d: activation: expected one of"),
    (dict(kernel_size=2, padding=2), "MaxEntPool2d: padding: expected smaller than kernel_size"),
    (dict(kernel_size=0), "MaxEntPool2d: kernel_size: expected an integer >= 1")])
def test_constructor_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MaxEntPool2d(4, **kwargs)


@pytest.mark.parametrize("kwargs, shape, dtype, error, match", [
    ({}, (4, 6, 6), np.float32, ValueError, r"MaxEntPool2d.forward: x: expected a 4-D array .*got shape \(4, 6, 6\)"),
    ({}, (2, 3, 6, 6), np.float32, ValueError, "MaxEntPool2d.forward: x: expected 4 channels at axis 1, got 3"),
    ({}, (2, 4, 6, 6), np.int64, TypeError, "expected dtype float32 or float64, got int64"),
    ({}, (2, 4, 6, 6), np.float64, TypeError, "expected dtype float32 \\(the parameters' dtype\\), got float64"),
    (dict(kernel_size=(2, 3)), (2, 4, 6, 2), np.float32, ValueError,
     "MaxEntPool2d.forward: kernel_size: expected at most the padded input W")])
def test_forward_errors(kwargs, shape, dtype, error, match):
    with pytest.raises(error, match=match):
        MaxEntPool2d(4, **kwargs).forward(np.ones(shape, dtype))


def test_backward_errors():
    layer = MaxEntPool2d(4)
    with pytest.raises(RuntimeError, match="MaxEntPool2d.backward called before forward"):
        layer.backward(np.ones((2, 4, 3, 3), np.float32))
    y = layer.forward(np.ones((2, 4, 6, 6), np.float32))
    with pytest.raises(ValueError, match=r"MaxEntPool2d.backward: gy: expected shape \(2, 4, 3, 3\) .*got \(2, 4, 3, 2\)"):
        layer.backward(np.ones((2, 4, 3, 2), np.float32))
    with pytest.raises(TypeError, match="MaxEntPool2d.backward: gy: expected dtype float32"):
        layer.backward(y.astype(np.float64))
