"""An empty batch (N = 0) through every layer and model the project exports.

For each Module: forward on an (0, ...) input, backward with an (0, ...) gradient, and check that
the output has N = 0 and the trailing shape of the same layer's output for N = 2, the input
gradient has the input's shape and dtype, every parameter gradient is exactly zero, and no buffer
(batch-norm running statistics) moved. Parameter gradients accumulate (``+=``), so they start from
zero; just before the backward the allocator is dirtied with NaN blocks of the parameters' sizes,
so a layer that adds a gradient buffer it never wrote (``np.empty`` for N = 0, the old Conv2d bug)
adds NaN or garbage instead of silently adding zeros. Everything runs in float64.
"""
import inspect

import numpy as np
import pytest

import minignn
import minignn.layers as L
import minignn.models as M
from minignn import Module, Sequential

C = 2  # channels of every 4-D case: tiny, so each case takes milliseconds


def _block(*a, **k):
    return M.BasicBlock(*a, **k)


# (id, class, build(), input shape for N = 1 without the batch axis, train mode)
LAYER_CASES = [
    ("Conv2d", L.Conv2d, lambda: L.Conv2d(C, 3, 3, padding=1), (C, 5, 5), True),
    ("Conv2d-nobias-stride2", L.Conv2d, lambda: L.Conv2d(C, 3, (3, 2), stride=2, bias=False), (C, 5, 6), True),
    ("BatchNorm2d-train", L.BatchNorm2d, lambda: L.BatchNorm2d(C), (C, 3, 3), True),
    ("BatchNorm2d-eval", L.BatchNorm2d, lambda: L.BatchNorm2d(C), (C, 3, 3), False),
    ("ReLU", L.ReLU, lambda: L.ReLU(), (C, 3, 3), True),
    ("Linear", L.Linear, lambda: L.Linear(4, 3), (4,), True),
    ("Linear-nobias", L.Linear, lambda: L.Linear(4, 3, bias=False), (4,), True),
    ("Flatten", L.Flatten, lambda: L.Flatten(), (C, 3, 3), True),
    ("Dropout-train", L.Dropout, lambda: L.Dropout(0.5), (C, 3), True),
    ("Dropout-eval", L.Dropout, lambda: L.Dropout(0.5), (C, 3), False),
    ("MaxPool2d", L.MaxPool2d, lambda: L.MaxPool2d(2), (C, 4, 4), True),
    ("MaxPool2d-3s2p1", L.MaxPool2d, lambda: L.MaxPool2d(3, 2, 1), (C, 5, 5), True),
    ("AvgPool2d", L.AvgPool2d, lambda: L.AvgPool2d(2), (C, 4, 4), True),
    ("AvgPool2d-3s2p1", L.AvgPool2d, lambda: L.AvgPool2d(3, 2, 1), (C, 5, 5), True),
    ("GlobalAvgPool2d", L.GlobalAvgPool2d, lambda: L.GlobalAvgPool2d(), (C, 3, 3), True),
    ("SoftPool2d", L.SoftPool2d, lambda: L.SoftPool2d(2), (C, 4, 4), True),
    ("MixedPool2d", L.MixedPool2d, lambda: L.MixedPool2d(C), (C, 4, 4), True),
    ("MixedPool2d-3s2p1-layer", L.MixedPool2d, lambda: L.MixedPool2d(C, 3, 2, 1, mix="layer"), (C, 5, 5), True),
    ("MixedPool2d-gfgp", L.MixedPool2d, lambda: L.MixedPool2d(C, mix="gfgp"), (C, 4, 4), True),
    ("GatedPool2d", L.GatedPool2d, lambda: L.GatedPool2d(C), (C, 4, 4), True),
    ("GatedPool2d-3s2p1", L.GatedPool2d, lambda: L.GatedPool2d(C, 3, 2, 1), (C, 5, 5), True),
    # power-average pooling takes x >= 0: behind a ReLU, as in the models
    ("LPPool2d", L.LPPool2d, lambda: Sequential(L.ReLU(), L.LPPool2d(C)), (C, 4, 4), True),
    ("LPPool2d-3s2p1", L.LPPool2d, lambda: Sequential(L.ReLU(), L.LPPool2d(C, 3, 2, 1)), (C, 5, 5), True),
    ("StochasticPool2d-3s2p1", L.StochasticPool2d, lambda: Sequential(L.ReLU(), L.StochasticPool2d(3, 2, 1)),
     (C, 5, 5), True),
    ("S3Pool2d", L.S3Pool2d, lambda: L.S3Pool2d(), (C, 5, 5), True),
    ("DPPool2d", L.DPPool2d, lambda: L.DPPool2d(C), (C, 5, 5), True),
    ("DPPool2d-asym-3", L.DPPool2d, lambda: L.DPPool2d(C, 3, variant="asym"), (C, 6, 6), True),
    ("DPPool2d-gfgp", L.DPPool2d, lambda: L.DPPool2d(C, params="gfgp"), (C, 4, 4), True),
    ("LIPPool2d", L.LIPPool2d, lambda: L.LIPPool2d(C), (C, 5, 5), True),
    ("GaussianPool2d", L.GaussianPool2d, lambda: L.GaussianPool2d(C), (C, 5, 5), True),
    ("InstanceNorm2d", L.InstanceNorm2d, lambda: L.InstanceNorm2d(C), (C, 3, 3), True),
    ("Subsample2d", L.Subsample2d, lambda: L.Subsample2d(2), (C, 5, 5), True),
    ("ShortcutA", L.ShortcutA, lambda: L.ShortcutA(C, 4, 2), (C, 4, 4), True),
    ("Identity", L.Identity, lambda: L.Identity(), (C, 3, 3), True),
    ("Sequential", Sequential, lambda: Sequential(L.Flatten(), L.Linear(C * 9, 3), L.ReLU()), (C, 3, 3), True),
    ("BasicBlock", M.BasicBlock, lambda: _block(C, C), (C, 4, 4), True),
    ("BasicBlock-down", M.BasicBlock, lambda: _block(C, 4, 2), (C, 4, 4), True),
    ("BasicBlock-pool", M.BasicBlock, lambda: _block(C, 4, 2, pool=L.MaxPool2d(2)), (C, 4, 4), True),
    ("BasicBlock-eval", M.BasicBlock, lambda: _block(C, 4, 2), (C, 4, 4), False),
]
for _lam in ("const", "param", "gfgp", "local"):
    for _train in (True, False):
        LAYER_CASES.append((f"MaxEntPool2d-{_lam}-{'train' if _train else 'eval'}", L.MaxEntPool2d,
                            lambda lam=_lam: L.MaxEntPool2d(C, lam=lam), (C, 4, 4), _train))
for _opts in (dict(prior="param"), dict(prior="predicted"), dict(batchnorm=True), dict(stat="avg+std", bias=True),
              dict(stat="max", mlp="slp")):
    LAYER_CASES.append(("MaxEntPool2d-gfgp-" + "-".join(f"{k}={v}" for k, v in _opts.items()), L.MaxEntPool2d,
                        lambda o=_opts: L.MaxEntPool2d(C, lam="gfgp", **o), (C, 4, 4), True))
LAYER_CASES.append(("MaxEntPool2d-local-batchnorm", L.MaxEntPool2d,
                    lambda: L.MaxEntPool2d(C, lam="local", batchnorm=True), (C, 4, 4), True))


class _MappingAsLayer(Module):
    """GFGPMapping returns (lam, rho) and takes backward(glam, grho): this wraps it as x -> lam."""

    def __init__(self, **kw):
        super().__init__()
        self.mapping = L.GFGPMapping(C, **kw)

    def forward(self, t):
        lam, rho = self.mapping.forward(t)
        self._rho_shape = None if rho is None else rho.shape
        return lam

    def backward(self, glam):
        grho = None
        if self._rho_shape is not None and self.mapping.prior == "predicted":
            grho = np.zeros(self._rho_shape)
        return self.mapping.backward(glam, grho)


for _shape in ((C,), (C, 2, 2)):
    for _opts in (dict(), dict(prior="predicted"), dict(batchnorm=True, bias=True)):
        LAYER_CASES.append((f"GFGPMapping-{len(_shape) + 1}d-" + ("-".join(f"{k}={v}" for k, v in _opts.items())
                                                                   or "default"),
                            L.GFGPMapping, lambda o=_opts: _MappingAsLayer(**o), _shape, True))



def _exported_module_classes():
    """Every Module subclass that minignn, minignn.layers or minignn.models exports (Module itself
    excluded)."""
    found = {}
    for mod in (minignn, L, M):
        names = getattr(mod, "__all__", None) or [n for n in vars(mod) if not n.startswith("_")]
        for n in names:
            obj = getattr(mod, n)
            if inspect.isclass(obj) and issubclass(obj, Module) and obj is not Module:
                found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return found


def test_every_exported_module_has_an_empty_batch_case():
    covered = {cls for _, cls, _, _, _ in LAYER_CASES}
    missing = sorted(name for name, cls in _exported_module_classes().items() if cls not in covered)
    assert not missing, f"add an N = 0 case to LAYER_CASES for {missing}"


def _dirty_allocator(shapes, copies=4):
    """Free NaN-filled float64 blocks of these shapes, so an ``np.empty`` of the same size that
    follows is likely to be handed NaN rather than fresh zero pages."""
    blocks = [np.full(s, np.nan) for s in shapes for _ in range(copies)]
    del blocks


def _check_empty_batch(m, x_shape, training, seed=0):
    m = m.to(dtype=np.float64).train(training)
    rng = np.random.default_rng(seed)
    full = m.forward(rng.standard_normal((2,) + x_shape))  # the output's trailing shape for a real batch
    x = np.zeros((0,) + x_shape)
    buffers = {k: v.copy() for k, v in m.named_buffers()}
    m.zero_grad()
    y = m.forward(x)
    assert y.shape == (0,) + full.shape[1:], f"output shape {y.shape}, expected {(0,) + full.shape[1:]}"
    assert y.dtype == np.float64
    params = list(m.named_parameters())
    _dirty_allocator([p.shape for _, p in params])
    gx = m.backward(np.zeros(y.shape))
    assert gx is not None and gx.shape == x.shape and gx.dtype == x.dtype, \
        f"input gradient {None if gx is None else (gx.shape, gx.dtype)}, expected {x.shape, x.dtype}"
    for name, p in params:
        assert p.grad.shape == p.data.shape and p.grad.dtype == np.float64, \
            f"{name}.grad: {p.grad.shape} {p.grad.dtype}"
        bad = np.flatnonzero(p.grad.reshape(-1) != 0)
        assert bad.size == 0, (f"{name}.grad after an empty batch: expected exactly 0, got {bad.size} nonzero"
                               f" entries, e.g. {p.grad.reshape(-1)[bad[:4]]}")
    for k, v in m.named_buffers():
        np.testing.assert_array_equal(v, buffers[k], err_msg=f"buffer {k} changed on an empty batch")


def _params(cases):
    out = []
    for case_id, _cls, build, shape, training in cases:
        out.append(pytest.param(build, shape, training, id=case_id))
    return out


@pytest.mark.parametrize("build,x_shape,training", _params(LAYER_CASES))
def test_layer_empty_batch(build, x_shape, training):
    _check_empty_batch(build(), x_shape, training)


def _pool_case(spec):
    """A registry pooling; one that takes x >= 0 (lppool, stochastic) behind a ReLU, as in the models."""
    return Sequential(L.ReLU(), spec.build(C)) if spec.name in ("lppool", "stochastic") else spec.build(C)


POOL_CASES = [(f"pool-{name}", None, (lambda s=spec: _pool_case(s)), (C, 4, 4), training)
              for name, spec in L.POOLINGS.items() for training in (True, False)]


@pytest.mark.parametrize("build,x_shape,training", _params(POOL_CASES))
def test_registered_pooling_empty_batch(build, x_shape, training):
    _check_empty_batch(build(), x_shape, training)


MODEL_CASES = [(f"model-{name}-{pool}", None, (lambda n=name, p=pool: M.build_model(n, pool=p, width=0.125)),
                (3, 32, 32), True)
               for name in M.MODELS for pool in L.POOLINGS]
MODEL_CASES += [(f"model-{name}-max-eval", None, (lambda n=name: M.build_model(n, pool="max", width=0.125)),
                 (3, 32, 32), False) for name in M.MODELS]


@pytest.mark.parametrize("build,x_shape,training", _params(MODEL_CASES))
def test_model_empty_batch(build, x_shape, training):
    _check_empty_batch(build(), x_shape, training)
