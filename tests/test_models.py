"""Models: every architecture with every pooling runs forward + backward; the residual block and
the small modules of models.py match central differences in float64."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

from helpers import assert_close, distinct_array, require

from minignn import backend, init
from minignn.gradcheck import gradcheck
from minignn.layers import POOLINGS, Identity, ShortcutA, Subsample2d
from minignn.models import MODELS, BasicBlock, build_model, count_parameters, make_pool, pooling_layers

# small but complete versions of each model: (width, input size)
SMALL = {"tiny": (0.25, 8), "vgg11": (1 / 16, 32), "resnet20": (0.25, 8)}
N_POOLS = {"tiny": 3, "vgg11": 5, "resnet20": 2}


def _pool_types():
    from minignn.layers.gfgp.layer import MaxEntPool2d
    from minignn.layers.pooling import AvgPool2d, MaxPool2d
    from minignn.layers import DPPool2d, GatedPool2d, GaussianPool2d, LIPPool2d, LPPool2d, MixedPool2d, S3Pool2d, SoftPool2d, StochasticPool2d
    return {"max": MaxPool2d, "avg": AvgPool2d, "skip": Subsample2d, "maxent": MaxEntPool2d,
            "maxent-param": MaxEntPool2d, "gfgp": MaxEntPool2d, "gfgp-local": MaxEntPool2d, "softpool": SoftPool2d,
            "mixed": MixedPool2d, "gated": GatedPool2d, "gfgp-gated": MixedPool2d, "lppool": LPPool2d,
            "stochastic": StochasticPool2d, "s3": S3Pool2d,
            "lip": LIPPool2d, "dpp": DPPool2d, "gfgp-dpp": DPPool2d, "gaussian": GaussianPool2d}


@pytest.mark.parametrize("pool", tuple(POOLINGS))
@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_forward_backward(name, pool, device):
    require(device, "conv2d", "batchnorm2d", "relu", "global_avg_pool2d", "linear", *POOLINGS[pool].ops)
    width, size = SMALL[name]
    init.manual_seed(0)
    model = build_model(name, pool=pool, num_classes=7, width=width).to(device)
    xp = backend.xp_for(device)
    x = xp.asarray(np.random.default_rng(1).standard_normal((2, 3, size, size)).astype(np.float32))
    y = model.forward(x)
    assert y.shape == (2, 7) and y.dtype == np.float32
    assert np.all(np.isfinite(backend.to_numpy(y)))
    model.zero_grad()
    gx = model.backward(xp.ones_like(y))
    assert gx.shape == x.shape and gx.dtype == np.float32
    grads = [backend.to_numpy(p.grad) for p in model.parameters()]
    assert all(np.all(np.isfinite(g)) for g in grads)
    assert sum(float(np.abs(g).sum()) > 0 for g in grads) >= len(grads) // 2
    # the pooling asked for is the one used, at every downsampling
    kind = _pool_types()[pool]
    n_local = sum(isinstance(m, kind) for m in model.modules())
    if pool == "skip" and name == "resnet20":
        assert n_local == 0  # stride-2 convolutions, as in He et al.
    else:
        assert n_local == N_POOLS[name]
    assert len(pooling_layers(model)) == (N_POOLS[name] if pool in ("maxent", "maxent-param", "gfgp", "gfgp-local")
                                          else 0)


def test_models_at_full_width_shapes():
    """The real architectures on one 32x32 image: channel counts and parameter totals."""
    init.manual_seed(0)
    x = np.zeros((1, 3, 32, 32), np.float32)
    tiny = build_model("tiny", "max")
    assert [m.weight.shape[0] for n, m in tiny.named_modules() if n.startswith("conv")] == [32, 64, 128]
    assert tiny.forward(x).shape == (1, 10)
    vgg = build_model("vgg11", "max")
    assert ([m.weight.shape[0] for n, m in vgg.named_modules() if n.startswith("conv")]
            == [64, 128, 256, 256, 512, 512, 512, 512])
    res = build_model("resnet20", "skip")
    convs = [m for m in res.modules() if type(m).__name__ == "Conv2d"]
    assert len(convs) == 19  # 1 + 3 stages x 3 blocks x 2 (option-A shortcuts have no conv)
    assert count_parameters(res) == 269_722  # He et al.'s ResNet-20: 0.27M (BN's scale and shift included)
    assert res.forward(x).shape == (1, 10)


def test_build_is_seeded():
    a = (init.manual_seed(3), build_model("tiny", "gfgp", width=0.25))[1].state_dict()
    b = (init.manual_seed(3), build_model("tiny", "gfgp", width=0.25))[1].state_dict()
    c = (init.manual_seed(4), build_model("tiny", "gfgp", width=0.25))[1].state_dict()
    assert list(a) == list(b) and all(np.array_equal(a[k], b[k]) for k in a)
    assert not all(np.array_equal(a[k], c[k]) for k in a)


def test_pool_options_reach_maxent():
    m = build_model("tiny", "gfgp", width=0.25, stat="max", activation="softplus")
    pools = pooling_layers(m)
    assert [n for n, _ in pools] == ["pool1", "pool2", "pool3"]
    assert all(p.stat == "max" and p.lam_form == "gfgp" for _, p in pools)
    m = build_model("tiny", "maxent", width=0.25, lam_init=2.5)
    assert all(p.lam_form == "const" and p.lam_init == 2.5 for _, p in pooling_layers(m))


def test_build_errors():
    with pytest.raises(ValueError, match="model: expected one of .*'tiny'.*got 'vgg99'"):
        build_model("vgg99")
    with pytest.raises(ValueError, match="pool: expected one of .*got 'median'"):
        build_model("tiny", pool="median")
    with pytest.raises(ValueError, match="pool option stat: unknown option for pool 'max', which takes no options"):
        build_model("tiny", pool="max", stat="max")
    with pytest.raises(ValueError, match="pool option hidden: unknown option for pool 'skip', which takes no options"):
        build_model("resnet20", pool="skip", hidden=0.25)
    with pytest.raises(ValueError, match="lam is chosen by the pool name: .*gfgp \\(lam='gfgp'\\)"):
        make_pool("gfgp", 8, lam="const")
    with pytest.raises(ValueError, match="width: expected a number > 0"):
        build_model("tiny", width=0)
    with pytest.raises(ValueError, match="num_classes"):
        build_model("tiny", num_classes=0)


# --- the residual block ---------------------------------------------------------------------------
@pytest.mark.parametrize("cin,cout,stride,pool", [
    (2, 2, 1, None),          # identity shortcut
    (2, 4, 2, None),          # stride-2 conv, option-A shortcut
    (2, 4, 2, "max"),         # stride-1 conv + max pool
    (2, 4, 2, "gfgp"),        # stride-1 conv + GFGP pooling (its MLP's gradients included)
])
def test_basic_block_gradcheck(cin, cout, stride, pool):
    init.manual_seed(5)
    p = None if pool is None else make_pool(pool, cout)
    block = BasicBlock(cin, cout, stride, pool=p)
    x = distinct_array(np.random.default_rng(2), (2, cin, 4, 4), scale=1.0, gap=0.05)
    y = block.forward(x.astype(np.float32))
    assert y.shape == (2, cout, 4 // stride, 4 // stride)
    assert gradcheck(block, x, max_checks=20)


def test_basic_block_forward_is_the_formula():
    """relu(main(x) + shortcut(x)) with the children applied by hand."""
    init.manual_seed(0)
    blk = BasicBlock(2, 4, 2, pool=make_pool("avg", 4))
    x = np.random.default_rng(0).standard_normal((3, 2, 6, 6)).astype(np.float32)
    y = blk.forward(x)
    h = x
    for m in (blk.conv1, blk.bn1, blk.relu1, blk.pool, blk.conv2, blk.bn2):
        h = m.forward(h)
    s = np.zeros((3, 4, 3, 3), np.float32)
    s[:, 1:3] = x[:, :, ::2, ::2]
    assert_close(y, np.maximum(h + s, 0), rtol=1e-6, atol=1e-6, name="block output")


def test_tiny_model_gradcheck():
    """The whole tiny net (GFGP pooling) end to end in float64, a sample of every tensor."""
    init.manual_seed(1)
    model = build_model("tiny", "gfgp", num_classes=3, width=0.125)
    x = np.random.default_rng(3).standard_normal((2, 3, 8, 8))
    assert gradcheck(model, x, max_checks=8)


# --- the small modules ------------------------------------------------------------------------------
shapes = st.tuples(st.integers(1, 3), st.integers(1, 4), st.integers(1, 7), st.integers(1, 7))


@given(shape=shapes, stride=st.integers(1, 3), seed=st.integers(0, 2**31 - 1))
def test_subsample_matches_slicing_and_gradcheck(shape, stride, seed):
    x = np.random.default_rng(seed).standard_normal(shape)
    m = Subsample2d(stride)
    y = m.forward(x)
    assert np.array_equal(y, x[:, :, ::stride, ::stride]) and y.flags.c_contiguous
    assert gradcheck(m, x, max_checks=30)


@given(shape=shapes, extra=st.integers(0, 3), stride=st.integers(1, 2), seed=st.integers(0, 2**31 - 1))
def test_shortcut_a_matches_reference_and_gradcheck(shape, extra, stride, seed):
    n, c, h, w = shape
    x = np.random.default_rng(seed).standard_normal(shape)
    m = ShortcutA(c, c + extra, stride)
    y = m.forward(x)
    ref = np.zeros((n, c + extra) + x[:, :, ::stride, ::stride].shape[2:])
    ref[:, extra // 2: extra // 2 + c] = x[:, :, ::stride, ::stride]
    assert np.array_equal(y, ref)
    assert gradcheck(m, x, max_checks=30)
    assert Identity().backward(x) is x


def test_small_module_errors():
    with pytest.raises(RuntimeError, match="Subsample2d.backward called before forward"):
        Subsample2d().backward(np.zeros((1, 1, 1, 1), np.float32))
    m = Subsample2d()
    m.forward(np.zeros((1, 2, 4, 4), np.float32))
    with pytest.raises(ValueError, match="gy: expected shape \\(1, 2, 2, 2\\)"):
        m.backward(np.zeros((1, 2, 4, 4), np.float32))
    with pytest.raises(ValueError, match="x: expected a 4-D array"):
        m.forward(np.zeros((2, 4, 4), np.float32))
    with pytest.raises(TypeError, match="x: expected dtype float32 or float64, got int64"):
        m.forward(np.zeros((1, 2, 4, 4), np.int64))
    with pytest.raises(ValueError, match="stride"):
        Subsample2d(0)
    with pytest.raises(ValueError, match="expected 3 channels"):
        ShortcutA(3, 4, 2).forward(np.zeros((1, 2, 4, 4), np.float32))
    with pytest.raises(RuntimeError, match="ShortcutA.backward called before forward"):
        ShortcutA(3, 4, 2).backward(np.zeros((1, 4, 2, 2), np.float32))
