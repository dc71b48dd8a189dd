"""CIFAR models with a choice of local pooling: ``tiny``, ``vgg11`` and ``resnet20``.

``build_model(name, pool="max", num_classes=10, **pool_kw)`` builds one of them with every local
(downsampling) pooling of the given kind. The kinds are the names of
:data:`minignn.layers.POOLINGS` (``minignn pools`` lists them); each one's spec builds the 2x2,
stride-2 layer:

========================  =============================================================
pool                      layer used at every 2x2 / stride-2 downsampling
========================  =============================================================
``"skip"``                :class:`~minignn.layers.Subsample2d` (``x[:, :, ::2, ::2]``)
``"avg"``                 :class:`~minignn.layers.AvgPool2d`
``"max"``                 :class:`~minignn.layers.MaxPool2d`
``"maxent"``              :class:`~minignn.layers.MaxEntPool2d`, constant lam (``lam="const"``)
``"maxent-param"``        MaxEntPool2d, a trained lam per channel (``lam="param"``)
``"gfgp"``                MaxEntPool2d with GFGP lam per sample and channel (``lam="gfgp"``)
``"gfgp-local"``          MaxEntPool2d with local GFGP, lam per output position (``lam="local"``)
========================  =============================================================

Extra keyword arguments (``pool_kw``) are the spec's options (``POOLINGS[pool].options``:
``lam_init`` and ``prior`` for maxent / maxent-param; ``stat``, ``hidden``, ``mlp``,
``activation``, ``prior``, ``bias`` and ``batchnorm`` for gfgp / gfgp-local); any other name is a
ValueError listing the valid ones.

Architectures (3x32x32 input; every convolution is 3x3, padding 1, without bias, followed by
BatchNorm2d and ReLU):

* ``tiny``: three blocks conv-BN-ReLU-pool of widths 32, 64, 128, global average pool, linear.
* ``vgg11``: widths 64-P-128-P-256-256-P-512-512-P-512-512-P (P = pool, five of them), global
  average pool, linear.
* ``resnet20``: He et al.'s CIFAR ResNet (conv 16, then 3 stages of 3 BasicBlocks with 16, 32 and
  64 channels, global average pool, linear). Shortcuts are option A: identity, or where the shape
  changes, strided subsampling ``x[:, :, ::2, ::2]`` with zero-padded extra channels (no
  parameters). With ``pool="skip"`` (a spec with ``subsampling=True``) the first block of
  stages 2 and 3 downsamples with a stride-2 first convolution, as in the original. With any
  other pool that convolution has stride 1 and is followed (after its BN and ReLU) by the chosen
  2x2 pool, as the GFGP paper does for ResNets; the shortcut keeps its strided subsampling.

``width`` scales every channel count (``max(1, round(c * width))``); it exists so tests can run
the same architectures small.

Each model names the module that sees the data in ``model.input_layer`` (a name from
``model.named_modules()``: ``"conv1"`` for tiny and vgg11, ``"conv"`` for resnet20). The trainer
switches off that module's input gradient (``needs_input_grad``), which training never needs. A
model of your own that sets no ``input_layer`` keeps every input gradient (right whatever comes
before its first convolution); set it to skip the wasted work.
"""
from __future__ import annotations

import math
import numbers
from typing import Callable

import numpy as np

from .layers.registry import POOLINGS, validate_options
from .layers.shape import Identity, ShortcutA, Subsample2d  # noqa: F401  (also importable from here)
from .module import Module, Sequential

MODELS: dict[str, Callable[..., Module]] = {}
_OPTION = "pool option"  # how build_model's and make_pool's option errors name an option


def register_model(name: str):
    """Decorator adding a builder ``fn(pool, num_classes, width, **pool_kw) -> Module`` to the registry."""
    def deco(fn):
        if name in MODELS:
            raise ValueError(f"register_model: a model named {name!r} is already registered")
        MODELS[name] = fn
        return fn
    return deco


def _layers():
    """The layer classes of the architectures (the local poolings come from the registry)."""
    from .layers.activation import Flatten, ReLU
    from .layers.batchnorm import BatchNorm2d
    from .layers.conv import Conv2d
    from .layers.linear import Linear
    from .layers.pooling import GlobalAvgPool2d
    return dict(Flatten=Flatten, ReLU=ReLU, BatchNorm2d=BatchNorm2d, Conv2d=Conv2d, Linear=Linear,
                GlobalAvgPool2d=GlobalAvgPool2d)


def make_pool(pool: str, channels: int, **pool_kw) -> Module:
    """One 2x2, stride-2 local pooling of kind ``pool`` over ``channels`` channels.

    ``POOLINGS[pool].build(channels, **pool_kw)``, after :func:`~minignn.layers.validate_options`
    has checked that ``pool`` is registered and ``pool_kw`` holds only that spec's options.
    """
    opts = validate_options(pool, pool_kw, where=_OPTION)
    layer = POOLINGS[pool].build(channels, **opts)
    layer._pool_channels = int(channels)  # marks a local pooling slot (see local_pools)
    return layer


def _w(c: int, width: float) -> int:
    return max(1, int(round(c * width)))


def _check_width(width):
    if isinstance(width, (bool, np.bool_)) or not isinstance(width, numbers.Real) or not 0 < width < math.inf:
        raise ValueError(f"width: expected a number > 0 (finite), got {width!r}")


def _conv_bn_relu(L, cin, cout, stride=1):
    return [L["Conv2d"](cin, cout, 3, stride=stride, padding=1, bias=False), L["BatchNorm2d"](cout), L["ReLU"]()]


def _named(layers: list[tuple[str, Module]]) -> Sequential:
    """A Sequential whose children carry readable names (``conv1``, ``pool1``, ``fc``...)."""
    seq = Sequential()
    for name, layer in layers:
        if name in seq._modules:
            raise ValueError(f"duplicate layer name {name!r}")
        setattr(seq, name, layer)
    return seq


def _plain_cnn(widths_and_pools, pool, num_classes, width, pool_kw) -> Sequential:
    L = _layers()
    layers, cin, nconv, npool = [], 3, 0, 0
    for item in widths_and_pools:
        if item == "P":
            npool += 1
            layers.append((f"pool{npool}", make_pool(pool, cin, **pool_kw)))
            continue
        nconv += 1
        cout = _w(item, width)
        conv, bn, relu = _conv_bn_relu(L, cin, cout)
        layers += [(f"conv{nconv}", conv), (f"bn{nconv}", bn), (f"relu{nconv}", relu)]
        cin = cout
    layers += [("gap", L["GlobalAvgPool2d"]()), ("flatten", L["Flatten"]()), ("fc", L["Linear"](cin, num_classes))]
    seq = _named(layers)
    seq.input_layer = "conv1"  # the module whose input is the data (see the module docstring)
    return seq


@register_model("tiny")
def tiny(pool: str = "max", num_classes: int = 10, width: float = 1.0, **pool_kw) -> Sequential:
    """Three conv-BN-ReLU-pool blocks (32, 64, 128 channels), global average pool, linear."""
    return _plain_cnn([32, "P", 64, "P", 128, "P"], pool, num_classes, width, pool_kw)


@register_model("vgg11")
def vgg11(pool: str = "max", num_classes: int = 10, width: float = 1.0, **pool_kw) -> Sequential:
    """VGG-11 for CIFAR with BN: 64-P-128-P-256-256-P-512-512-P-512-512-P, GAP, linear."""
    cfg = [64, "P", 128, "P", 256, 256, "P", 512, 512, "P", 512, 512, "P"]
    return _plain_cnn(cfg, pool, num_classes, width, pool_kw)


class BasicBlock(Module):
    """ResNet basic block: ``relu(bn2(conv2(P(relu(bn1(conv1(x)))))) + shortcut(x))``.

    ``P`` is an optional local pooling (the block then downsamples by it, with a stride-1 conv1);
    without it, ``stride`` goes to conv1. The shortcut is the identity when the shape is kept,
    else option A (:class:`ShortcutA`). Shapes: x (N, Cin, H, W) -> (N, Cout, H/s, W/s).

    Backward is written from the children's: the gradient through the final ReLU goes both to the
    main path (bn2, conv2, P, relu1, bn1, conv1 in reverse) and to the shortcut; the two input
    gradients add.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, pool: Module | None = None):
        super().__init__()
        L = _layers()
        down = stride if pool is None else 1
        self.conv1 = L["Conv2d"](in_channels, out_channels, 3, stride=down, padding=1, bias=False)
        self.bn1 = L["BatchNorm2d"](out_channels)
        self.relu1 = L["ReLU"]()
        if pool is not None:
            self.pool = pool
        self.conv2 = L["Conv2d"](out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = L["BatchNorm2d"](out_channels)
        if stride != 1 or in_channels != out_channels:
            self.shortcut = ShortcutA(in_channels, out_channels, stride)
        else:
            self.shortcut = Identity()
        self.relu2 = L["ReLU"]()
        self.has_pool = pool is not None

    def _main(self):
        mods = [self.conv1, self.bn1, self.relu1]
        if self.has_pool:
            mods.append(self.pool)
        return mods + [self.conv2, self.bn2]

    def forward(self, x):
        h = x
        for m in self._main():
            h = m.forward(h)
        s = self.shortcut.forward(x)
        if h.shape != s.shape:
            raise ValueError(f"BasicBlock.forward: main path gives {tuple(h.shape)} but the shortcut gives"
                             f" {tuple(s.shape)} for input {tuple(x.shape)} (use even spatial sizes)")
        return self.relu2.forward(h + s)

    def backward(self, gy):
        g = self.relu2.backward(gy)
        gx = g
        for m in reversed(self._main()):
            gx = m.backward(gx)
        return gx + self.shortcut.backward(g)


@register_model("resnet20")
def resnet20(pool: str = "max", num_classes: int = 10, width: float = 1.0, **pool_kw) -> Sequential:
    """He et al.'s ResNet-20 for CIFAR (3 stages x 3 BasicBlocks, 16/32/64 channels, option-A
    shortcuts). The two downsampling blocks use a stride-1 conv1 followed by the chosen 2x2 pool,
    except for a subsampling pool (``POOLINGS[pool].subsampling``, i.e. ``"skip"``), which they fold
    into a stride-2 conv1 as in the original."""
    pool_kw = validate_options(pool, pool_kw, where=_OPTION)  # before any layer is built
    fold = POOLINGS[pool].subsampling  # plain subsampling: a stride-2 conv1 does it
    L = _layers()
    c0 = _w(16, width)
    conv, bn, relu = _conv_bn_relu(L, 3, c0)
    layers = [("conv", conv), ("bn", bn), ("relu", relu)]
    cin = c0
    for stage, c in enumerate((16, 32, 64), start=1):
        cout = _w(c, width)
        blocks = Sequential()
        for b in range(3):
            stride = 2 if (stage > 1 and b == 0) else 1
            p = make_pool(pool, cout, **pool_kw) if (stride == 2 and not fold) else None
            blocks.append(BasicBlock(cin, cout, stride, pool=p))
            cin = cout
        layers.append((f"stage{stage}", blocks))
    layers += [("gap", L["GlobalAvgPool2d"]()), ("flatten", L["Flatten"]()), ("fc", L["Linear"](cin, num_classes))]
    seq = _named(layers)
    seq.input_layer = "conv"  # the module whose input is the data
    return seq


def build_model(name: str, pool: str = "max", num_classes: int = 10, width: float = 1.0, pool_at=None,
                other_pool: str = "max", **pool_kw) -> Module:
    """Build a registered model (``tiny``, ``vgg11``, ``resnet20``) with every local pooling of
    kind ``pool`` (a name of :data:`minignn.layers.POOLINGS`, see the module docstring);
    ``pool_kw`` are that pooling's options (a ValueError names the valid ones).

    ``pool_at`` (a sequence of 1-based pooling-layer numbers, in network order) puts ``pool`` at
    those local poolings only and ``other_pool`` (default max pooling, with its default options)
    at the others, as the GFGP paper's depth study (Table 4) does. The model is first built with
    ``pool`` everywhere, then the other slots are replaced, so the weights of every other layer
    are those of the all-``pool`` model of the same seed.

    Weights are drawn from ``minignn.init``'s generator: call ``minignn.init.manual_seed`` first
    for a reproducible model. Returns a Module in training mode (float32, on the CPU) whose
    ``build_spec`` records these arguments (:func:`minignn.save` stores it, :func:`minignn.load`
    rebuilds the model from it).
    """
    if name not in MODELS:
        raise ValueError(f"model: expected one of {tuple(MODELS)}, got {name!r}")
    pool_kw = validate_options(pool, pool_kw, where=_OPTION)
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f"num_classes: expected an integer >= 1, got {num_classes!r}")
    _check_width(width)
    model = MODELS[name](pool=pool, num_classes=int(num_classes), width=width, **pool_kw)
    # how to build it again (minignn.save stores it; minignn.load rebuilds from it)
    model.build_spec = {"model": name, "pool": pool, "num_classes": int(num_classes), "width": float(width),
                        "pool_kw": dict(pool_kw)}
    if pool_at is not None:
        slots = local_pools(model)
        at = check_pool_at(pool_at, len(slots), name, pool)
        if other_pool not in POOLINGS:
            raise ValueError(f"other_pool: expected one of {tuple(POOLINGS)}, got {other_pool!r}")
        for i, (slot, layer) in enumerate(slots, start=1):
            if i not in at:
                _set_module(model, slot, make_pool(other_pool, layer._pool_channels))
        model.build_spec.update(pool_at=list(at), other_pool=other_pool)
    return model


def check_pool_at(pool_at, count: int | None = None, model: str = "the model", pool: str = "") -> tuple[int, ...]:
    """``pool_at`` as a sorted tuple of distinct layer numbers in 1..count (a ValueError naming it
    otherwise); ``count=None`` checks only that they are integers >= 1."""
    if isinstance(pool_at, (str, bytes)) or not hasattr(pool_at, "__iter__"):
        raise ValueError(f"pool_at: expected a list of pooling-layer numbers (1-based), got {pool_at!r}")
    vals = list(pool_at)
    if not vals or any(isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or v < 1 for v in vals):
        raise ValueError(f"pool_at: expected a non-empty list of pooling-layer numbers >= 1, got {pool_at!r}")
    if len(set(vals)) != len(vals):
        raise ValueError(f"pool_at: expected distinct layer numbers, got {pool_at!r}")
    if count is not None:
        if count == 0:
            raise ValueError(f"pool_at: {model} with pool={pool!r} has no local pooling layers to choose from")
        if max(vals) > count:
            raise ValueError(f"pool_at: expected layer numbers in 1..{count} ({model} has {count} local pooling"
                             f" layers), got {pool_at!r}")
    return tuple(sorted(int(v) for v in vals))


def local_pools(model: Module) -> list[tuple[str, Module]]:
    """(dotted name, module) of every local pooling slot of a model built by :func:`build_model`
    (the layers :func:`make_pool` made), in network order; ``pool_at`` numbers them from 1."""
    return [(n, m) for n, m in model.named_modules() if hasattr(m, "_pool_channels")]


def _set_module(model: Module, dotted: str, new: Module):
    *path, last = dotted.split(".")
    parent = model
    for part in path:
        parent = parent._modules[part]
    parent._modules[last] = new            # in place: a Sequential runs its children in this order
    object.__setattr__(parent, last, new)


def pooling_layers(model: Module) -> list[tuple[str, Module]]:
    """(name, module) of every max-entropy pooling layer (those that keep ``last_lam``), in order."""
    return [(n, m) for n, m in model.named_modules() if hasattr(m, "last_lam")]


def diagnostic_names() -> tuple[str, ...]:
    """Every diagnostic a registered pooling records (``lam``, ``rho``, ``a``, ``gate``, ...), each
    once, in registry order: the union of :attr:`PoolingSpec.diagnostics` over :data:`POOLINGS`."""
    return tuple(dict.fromkeys(d for spec in POOLINGS.values() for d in spec.diagnostics))


def diagnostic_layers(model: Module, names=None) -> list[tuple[str, Module, tuple[str, ...]]]:
    """``(layer name, module, diagnostics)`` of every layer that keeps a diagnostic, in network order.

    A layer keeps diagnostic ``d`` when it has a ``last_<d>`` attribute (set by its forward, or
    None before one): max-entropy pooling ``last_lam`` and ``last_rho``, mixed pooling ``last_a``,
    gated pooling ``last_gate``, LP pooling ``last_p``, DPP ``last_gamma`` and ``last_alpha``, LIP
    ``last_logit``, Gaussian pooling ``last_eta``. ``names`` limits the search (default :func:`diagnostic_names`)."""
    names = diagnostic_names() if names is None else tuple(names)
    out = []
    for n, m in model.named_modules():
        kept = tuple(d for d in names if hasattr(m, f"last_{d}"))
        if kept:
            out.append((n, m, kept))
    return out


def diagnostic_values(layers):
    """``(layer name, module, diagnostic, value)`` for every diagnostic the ``layers`` (as
    :func:`diagnostic_layers` gives them) hold after a forward, the value as a NumPy array (from
    the device when on a GPU); a diagnostic still None (rho without a prior) is left out."""
    from . import backend
    for name, m, diagnostics in layers:
        for d in diagnostics:
            value = getattr(m, f"last_{d}", None)
            if value is not None:
                yield name, m, d, np.asarray(backend.to_numpy(value))


def count_parameters(model: Module) -> int:
    return int(sum(int(np.prod(p.shape)) for p in model.parameters()))
