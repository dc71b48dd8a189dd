r"""A model summary, as torchinfo and Keras print one: every layer with its output shape, its
parameters and its forward FLOPs, from one forward pass.

    from minignn.models import build_model
    s = build_model("tiny", pool="gfgp").summary((3, 32, 32))   # prints the table, returns a Summary
    s.total_params, s.flops, s.to_dict()                        # 116266 parameters; FLOPs per image

or, on the command line, ``minignn summary --model vgg11 --pool gfgp [--json]``.

What a row is
-------------
One row per call of a *leaf* layer, in the order the forward calls them: a module without
children, or one whose FLOPs rule counts its children too (:class:`MaxEntPool2d` with GFGP,
whose mapping is part of its row; see ``covers_children`` in :data:`FLOP_RULES`). Each row holds
the qualified name (``stage2.0.conv1``), the type, the output shape (with the batch axis), the
number of parameters of the layer and its children (all parameters in minignn are trained) and
the forward FLOPs per sample. A layer called twice gets two rows; its parameters count in the
first only. The parameter total is that of the whole model (each Parameter once), so it also
holds parameters that no row shows (a container's own, a layer the forward never called);
:attr:`Summary.unlisted_params` says how many.

FLOPs convention
----------------
One multiply-add is 2 FLOPs; an exp, a comparison, a division or a square root is 1. Per sample
(batch FLOPs / N), forward only, eval mode. With ``Ho x Wo`` the output positions and
``K = kh*kw`` the window:

==========================  ===================================================================
layer                       FLOPs
==========================  ===================================================================
Conv2d                      ``2 Cin/groups kh kw Cout Ho Wo`` (+ ``Cout Ho Wo`` with a bias)
Linear                      ``2 in out`` (+ ``out`` with a bias)
BatchNorm2d (eval)          2 per element (one scale and one shift)
ReLU                        1 per element
MaxPool2d, AvgPool2d        ``K`` per output (K - 1 comparisons / adds, + 1: the divide or the
                            first move); a padded border window counts as a full one
GlobalAvgPool2d             1 per input element (H W - 1 adds and one divide per channel)
MaxEntPool2d                ``5 K + 1`` per output: per window cell the logit lam x (1), its
                            exp (1), the normaliser's add (1) and the weighted value's
                            multiply-add (2); one division per output. A prior rho adds one add
                            per cell (``6 K + 1``). GFGP ("gfgp" / "gfgp-local") adds its
                            statistics and its mapping, below
SoftPool2d                  ``5 K + 1`` per output: max-entropy pooling at lam = 1
MixedPool2d                 ``2 K + 3`` per output: the max (K - 1 comparisons) and the mean
                            (K - 1 adds, one divide), one more each for the first cell, and the
                            mix (a multiply-add and a multiply); "gfgp" adds the statistics and
                            the mapping (with its sigmoid), as GFGP
GatedPool2d                 ``4 K + 7`` per output: mixed pooling's ``2 K + 3``, the dot
                            product omega . x (K multiply-adds) and the sigmoid (4)
LPPool2d                    ``6 K + 5`` per output: per cell the max's comparison, x / m, the
                            power as exp(p log u) (3) and an add; per output the divide by |R|,
                            the root (3) and the multiply by m
StochasticPool2d            ``5 K + 2`` per output, the eval rule sum x^2 / sum x: per cell the
                            max's comparison, x / m, the add to the sum and the square's
                            multiply-add; per output the divide and the multiply by m
                            (training's draw is not counted)
S3Pool2d                    4 per input element (the stride-1 2x2 max, 3 comparisons + 1) and
                            4 per output (eval: the 2x2 average; training's gather is a copy)
DPPool2d                    ``13 K + 1`` per output: per cell the window mean's add, d and v
                            (3), v's mean, the ratio, the power as exp(gamma log r) (3, a log
                            and an exp counted as one FLOP each), + alpha, the weight's adds
                            and the weighted value's multiply-add; one divide per output;
                            "gfgp" (gfgp-dpp) adds the statistics and the mapping (two heads)
InstanceNorm2d              7 per element: the mean's add, the subtraction, the variance's
                            multiply-add, the scale by 1/std and the affine multiply-add
LIPPool2d                   ``6 K + 1`` per output (per cell the max's comparison, L - m, the
                            exp, the normaliser's add and the weighted value's multiply-add;
                            one divide) + 5 per input element (the logits' 12 sigmoid); its
                            children (the 3x3 conv, the instance norm) count themselves
GaussianPool2d              ``4 K + 4`` per output: per cell the mean's add, the deviation, its
                            square's multiply-add (the two-pass variance, 3); per output the
                            sqrt, the floor, and mu + eta sigma (2); plus the statistics and
                            the mapping (two heads); training's softplus of the noisy eta and
                            the draw are not counted
GFGP statistics             per input cell: "avg" 1 (an add), "max" 1 (a comparison),
                            "avg+std" 4 (add; subtract the mean, square, add); global over
                            H x W, or ("gfgp-local") over each window, K cells per output; the
                            per-statistic divisions and square roots are left out
GFGPMapping                 per sample (per output position for "gfgp-local"): each 1x1 layer
                            ``2 in out`` (+ ``out`` bias, + ``2 out`` batch norm), ``D`` for the
                            ReLU, and per lam the activation: sigmoid 4, softplus 3, tanh 1,
                            identity 0
Flatten, Identity,          0 (they move or copy values; no arithmetic)
Subsample2d, ShortcutA
Dropout                     0 (the identity in eval mode)
==========================  ===================================================================

The rules live in one table, :data:`FLOP_RULES` (exact class -> :class:`FlopRule`): a new layer
type adds one entry. A layer type without an entry counts 0 and shows ``?`` in the FLOPs column
(a subclass is a type of its own). Arithmetic a container does itself, between its children
(the residual sum of a ResNet block, one add per output element), is in no row and not counted.

Memory: the parameters' bytes, the input's and the sum of every row's output, all in the
summary's dtype, for the whole batch (views such as Flatten's output count as copies, so the
activation figure is an upper bound of what a forward keeps).

The model is left as it was: the pass runs in eval mode (so batch-norm statistics do not move)
and every module's train/eval flag is restored; every attribute the forward rebinds
(``_saved``, ``last_lam``, ...) is put back, so a backward pending from an earlier forward still
works; layers with a scratch ``_workspace`` (Conv2d) get a fresh one for the pass, so the
buffers that backward reads are not overwritten. The leaves' ``forward`` is wrapped on the
instance for the pass and unwrapped in a ``finally`` block, also when the forward fails. The input
is standard normal from a private generator (seed 0): the library's random state is untouched.
"""
from __future__ import annotations

import argparse
import dataclasses
from typing import Callable

import numpy as np

from . import backend
from .checks import FLOAT_DTYPES
from .layers.activation import Dropout, Flatten, ReLU
from .layers.batchnorm import BatchNorm2d
from .layers.conv import Conv2d
from .layers.gfgp import GFGPMapping
from .layers.gfgp.layer import MaxEntPool2d
from .layers.linear import Linear
from .layers.lppool import LPPool2d
from .layers.mixpool.layer import GatedPool2d, MixedPool2d
from .layers.pooling import AvgPool2d, GlobalAvgPool2d, MaxPool2d
from .layers.softpool import SoftPool2d
from .layers.stochastic.layer import S3Pool2d, StochasticPool2d
from .layers.lip.instnorm import InstanceNorm2d
from .layers.lip.layer import LIPPool2d
from .layers.dpp.layer import DPPool2d
from .layers.gaussian.layer import GaussianPool2d
from .layers.shape import Identity, ShortcutA, Subsample2d
from .module import Module

__all__ = ["FlopRule", "FLOP_RULES", "LayerRow", "Summary", "summarize", "add_parser", "cmd_summary",
           "parse_input_shape"]

#: Attributes holding reusable scratch buffers: replaced by a fresh empty dict for the pass.
SCRATCH_ATTRS = ("_workspace",)


# ================================================================================================
# the FLOPs rules
# ================================================================================================
@dataclasses.dataclass(frozen=True)
class FlopRule:
    """How to count one layer type's forward FLOPs.

    Parameters
    ----------
    count : callable
        ``count(module, x_shape, y_shape) -> int``: the FLOPs of the whole batch (the shapes
        include the batch axis; the summary divides by N).
    note : str
        The rule in words (shown for layers that count 0, kept in :meth:`Summary.to_dict`).
    covers_children : bool
        True when ``count`` includes the module's children: the module is then one row, its
        children are not listed (MaxEntPool2d and its GFGP mapping).
    """

    count: Callable[[Module, tuple, tuple], int]
    note: str
    covers_children: bool = False


def _size(shape) -> int:
    return int(np.prod(shape, dtype=np.int64)) if shape is not None else 0


def _conv(m, x, y):
    n, cout, ho, wo = y
    kh, kw = m.kernel_size
    groups = getattr(m, "groups", 1)
    per_out = 2 * (m.in_channels // groups) * kh * kw + (1 if m.bias is not None else 0)
    return n * cout * ho * wo * per_out


def _linear(m, x, y):
    return y[0] * (2 * m.in_features * m.out_features + (m.out_features if m.bias is not None else 0))


def _per_element(k):
    return lambda m, x, y: k * _size(y)


def _window_pool(m, x, y):
    kh, kw = m.kernel_size
    return _size(y) * kh * kw


#: FLOPs of one cell of a statistic's input (GFGP's t), see the module docstring.
STAT_FLOPS = {"avg": 1, "max": 1, "avg+std": 4}
#: FLOPs of one lam through the mapping's output activation.
ACTIVATION_FLOPS = {"sigmoid": 4, "softplus": 3, "tanh": 1, "identity": 0}


def _one_by_one(n_in, n_out, bias, batchnorm) -> int:
    return 2 * n_in * n_out + (n_out if bias else 0) + (2 * n_out if batchnorm else 0)


def _mapping_per_row(m: GFGPMapping) -> int:
    """FLOPs of one row t -> (lam, rho) of a GFGP mapping."""
    f, feat = 0, m.in_features
    if m.mlp == "mlp":
        f += _one_by_one(feat, m.hidden, m.bias, m.batchnorm) + m.hidden  # U, then the ReLU
        feat = m.hidden
    out = m.channels * m.heads
    f += _one_by_one(feat, out, m.bias, m.batchnorm) + ACTIVATION_FLOPS[m.activation] * out
    if m.prior == "predicted":
        f += _one_by_one(feat, m.channels * m.K, m.bias, m.batchnorm)
    return f


def _mapping(m, x, y):
    rows = x[0] if len(x) == 2 else x[0] * x[2] * x[3]  # (N, kC) or (N, kC, Ho, Wo)
    return rows * _mapping_per_row(m)


def _maxent(m, x, y):
    n, c, ho, wo = y
    kh, kw = m.kernel_size
    k = kh * kw
    per_cell = 5 + (1 if m.prior is not None else 0)
    f = n * c * ho * wo * (per_cell * k + 1)
    if m.lam_form == "gfgp":
        f += STAT_FLOPS[m.stat] * _size(x) + n * _mapping_per_row(m.mapping)
    elif m.lam_form == "local":
        f += STAT_FLOPS[m.stat] * k * n * c * ho * wo + n * ho * wo * _mapping_per_row(m.mapping)
    return f


def _mixed(m, x, y):
    n, c, ho, wo = y
    kh, kw = m.kernel_size
    f = n * c * ho * wo * (2 * kh * kw + 3)
    if m.mix == "gfgp":
        f += STAT_FLOPS[m.stat] * _size(x) + n * _mapping_per_row(m.mapping)
    return f


def _dpp(m, x, y):
    k = m.kernel_size * m.kernel_size
    f = _size(y) * (13 * k + 1)
    if m.params == "gfgp":
        f += STAT_FLOPS[m.stat] * _size(x) + y[0] * _mapping_per_row(m.mapping)
    return f


def _gaussian(m, x, y):
    kh, kw = m.kernel_size
    return (_size(y) * (4 * kh * kw + 4) + STAT_FLOPS[m.stat] * _size(x)
            + y[0] * _mapping_per_row(m.mapping))


def _per_window(per_cell, per_out):
    def rule(m, x, y):
        kh, kw = m.kernel_size
        return _size(y) * (per_cell * kh * kw + per_out)
    return rule


def _zero(m, x, y):
    return 0


FLOP_RULES: dict[type, FlopRule] = {
    Conv2d: FlopRule(_conv, "2 Cin/groups kh kw per output (+1 with a bias)"),
    Linear: FlopRule(_linear, "2 in out per sample (+out with a bias)"),
    BatchNorm2d: FlopRule(_per_element(2), "2 per element (eval: scale and shift)"),
    ReLU: FlopRule(_per_element(1), "1 per element"),
    MaxPool2d: FlopRule(_window_pool, "kh kw per output (K - 1 comparisons + 1)"),
    AvgPool2d: FlopRule(_window_pool, "kh kw per output (K - 1 adds + 1 divide)"),
    GlobalAvgPool2d: FlopRule(lambda m, x, y: _size(x), "1 per input element"),
    MaxEntPool2d: FlopRule(_maxent, "5 K + 1 per output (6 K + 1 with a prior), plus GFGP's statistics and"
                                    " mapping", covers_children=True),
    SoftPool2d: FlopRule(_per_window(5, 1), "5 K + 1 per output (max-entropy pooling at lam = 1)"),
    MixedPool2d: FlopRule(_mixed, "2 K + 3 per output, plus GFGP's statistics and mapping (gfgp-gated)",
                          covers_children=True),
    GatedPool2d: FlopRule(_per_window(4, 7), "4 K + 7 per output (max, mean, omega . x, sigmoid, mix)"),
    LPPool2d: FlopRule(_per_window(6, 5), "6 K + 5 per output (powers as exp(p log u), the root)"),
    StochasticPool2d: FlopRule(_per_window(5, 2), "5 K + 2 per output (eval: sum x^2 / sum x, max-normalised)"),
    GaussianPool2d: FlopRule(_gaussian, "4 K + 4 per output, plus GFGP's statistics and mapping (two heads)",
                             covers_children=True),
    DPPool2d: FlopRule(_dpp, "13 K + 1 per output (log and exp per cell counted as 1 each), plus GFGP's statistics"
                             " and mapping (gfgp-dpp)", covers_children=True),
    InstanceNorm2d: FlopRule(_per_element(7), "7 per element (mean, variance, normalise, affine)"),
    LIPPool2d: FlopRule(lambda m, x, y: _per_window(6, 1)(m, x, y) + 5 * _size(x),
                        "6 K + 1 per output (the softmax(L)-weighted mean) + 5 per input (12 sigmoid); its conv and"
                        " instance norm count themselves"),
    S3Pool2d: FlopRule(lambda m, x, y: 4 * _size(x) + 4 * _size(y),
                       "4 per input (the stride-1 2x2 max) + 4 per output (eval: the 2x2 average)"),
    GFGPMapping: FlopRule(_mapping, "its 1x1 layers' matmuls, ReLU and activation per row",
                          covers_children=True),
    Flatten: FlopRule(_zero, "0: a reshape"),
    Identity: FlopRule(_zero, "0: passes its input on"),
    Subsample2d: FlopRule(_zero, "0: strided copy"),
    ShortcutA: FlopRule(_zero, "0: strided copy with zero channels"),
    Dropout: FlopRule(_zero, "0: the identity in eval mode"),
}
"""Exact layer class -> :class:`FlopRule`; see the module docstring for the convention."""


# ================================================================================================
# the summary
# ================================================================================================
@dataclasses.dataclass
class LayerRow:
    """One call of a leaf layer.

    ``flops`` is per sample (None: no rule for this type, shown as ``?``); ``params`` counts the
    layer's parameters and its children's (0 for a repeated call, ``repeat`` True).
    """

    name: str
    type: str
    input_shape: tuple | None
    output_shape: tuple | list | None
    params: int
    flops: int | float | None
    note: str
    repeat: bool = False

    def to_dict(self) -> dict:
        return {"name": self.name, "type": self.type, "input_shape": _jsonable_shape(self.input_shape),
                "output_shape": _jsonable_shape(self.output_shape), "params": self.params, "flops": self.flops,
                "flops_note": self.note, "repeat": self.repeat}


def _jsonable_shape(shape):
    if shape is None:
        return None
    return [_jsonable_shape(s) if isinstance(s, (tuple, list)) else int(s) for s in shape]


def _human(n) -> str:
    """``1769472 -> '1.77 M'``, ``950 -> '950'``: three significant digits."""
    if n is None:
        return "?"
    n = float(n)
    for factor, unit in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= factor:
            v = n / factor
            digits = 2 if v < 10 else 1 if v < 100 else 0
            return f"{v:.{digits}f} {unit}"
    return f"{n:.0f}" if n == int(n) else f"{n:.3g}"


def _flops_text(n) -> str:
    """``'12.3 MFLOPs'``, ``'950 FLOPs'``."""
    h = _human(n)
    return f"{h}FLOPs" if h[-1].isalpha() else f"{h} FLOPs"


def _bytes(n: int) -> str:
    for factor, unit in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if n >= factor:
            return f"{n / factor:.1f} {unit}"
    return f"{n} B"


def _shape_text(shape) -> str:
    if shape is None:
        return "-"
    if shape and isinstance(shape[0], (tuple, list)):
        return ", ".join(_shape_text(s) for s in shape)
    return str(tuple(int(s) for s in shape))


@dataclasses.dataclass
class Summary:
    """What :func:`summarize` found. ``str(summary)`` is the table, :meth:`to_dict` the same as
    JSON-able data.

    Attributes
    ----------
    rows : list of LayerRow
        In forward order.
    input_shape, output_shape : tuple
        The batch fed (N, C, H, W) and the model's output shape.
    dtype : numpy.dtype
    total_params : int
        Every parameter of the model, each counted once.
    unlisted_params : int
        Of those, the ones in no row (a container's own, or a layer the forward never called).
    flops : int or float
        Forward FLOPs per sample, summed over the rows with a rule.
    unknown : list of str
        Names of the rows whose type has no FLOPs rule (``?``).
    not_called : list of str
        Leaf layers the forward never called.
    param_bytes, input_bytes, activation_bytes : int
        Parameters, the input batch and the sum of every row's output, in ``dtype``.
    """

    rows: list
    input_shape: tuple
    output_shape: tuple | None
    dtype: np.dtype
    total_params: int
    unlisted_params: int
    not_called: list

    @property
    def batch(self) -> int:
        return int(self.input_shape[0])

    @property
    def flops(self):
        return sum(r.flops for r in self.rows if r.flops is not None)

    @property
    def unknown(self) -> list:
        return [r.name for r in self.rows if r.flops is None]

    @property
    def param_bytes(self) -> int:
        return self.total_params * self.dtype.itemsize

    @property
    def input_bytes(self) -> int:
        return _size(self.input_shape) * self.dtype.itemsize

    @property
    def activation_bytes(self) -> int:
        total = 0
        for r in self.rows:
            shapes = r.output_shape if (r.output_shape and isinstance(r.output_shape[0], (tuple, list))) \
                else [r.output_shape]
            total += sum(_size(s) for s in shapes if s is not None)
        return total * self.dtype.itemsize

    def to_dict(self) -> dict:
        """The summary as plain JSON-able data (lists, ints, floats, strings, None)."""
        return {
            "input_shape": _jsonable_shape(self.input_shape),
            "output_shape": _jsonable_shape(self.output_shape),
            "dtype": str(self.dtype),
            "layers": [r.to_dict() for r in self.rows],
            "totals": {"params": self.total_params, "unlisted_params": self.unlisted_params,
                       "flops_per_sample": self.flops, "unknown_flops_layers": self.unknown,
                       "param_bytes": self.param_bytes, "input_bytes": self.input_bytes,
                       "activation_bytes": self.activation_bytes},
            "not_called": list(self.not_called),
            "flops_convention": "one multiply-add = 2 FLOPs; forward, eval mode, per sample",
        }

    def __str__(self) -> str:
        header = ("layer (type)", "output shape", "params", "FLOPs")
        cells = []
        for r in self.rows:
            label = f"{r.name} ({r.type})" if r.name else f"<model> ({r.type})"
            cells.append((label, _shape_text(r.output_shape), "-" if r.repeat else f"{r.params:,}", _human(r.flops)))
        w = [max(len(c[i]) for c in cells + [header]) for i in range(4)]
        line = lambda c: f"{c[0]:<{w[0]}}   {c[1]:<{w[1]}}   {c[2]:>{w[2]}}   {c[3]:>{w[3]}}"  # noqa: E731
        rule = "-" * len(line(header))
        out = [line(header), rule] + [line(c) for c in cells] + [rule]
        unknown = f" (+ ? for {len(self.unknown)} layer(s) without a rule)" if self.unknown else ""
        out.append(f"total: {self.total_params:,} parameters ({_bytes(self.param_bytes)} {self.dtype}); "
                   f"{_flops_text(self.flops)} per image forward{unknown}")
        out.append(f"input {_shape_text(self.input_shape)}: {_bytes(self.input_bytes)}; layer outputs:"
                   f" {_bytes(self.activation_bytes)} for a batch of {self.batch}")
        if self.unlisted_params:
            out.append(f"{self.unlisted_params:,} of the parameters are in no row (a container's own, or a layer"
                       f" the forward did not call)")
        if self.not_called:
            out.append(f"not called by the forward: {', '.join(self.not_called)}")
        zero = {r.type: r.note for r in self.rows if r.flops == 0}
        if zero:
            out.append("0 FLOPs by rule: " + "; ".join(f"{t} ({n.removeprefix('0: ')})" for t, n in zero.items()))
        if self.unknown:
            types = sorted({r.type for r in self.rows if r.flops is None})
            out.append(f"?: no FLOPs rule for {', '.join(types)} (counted as 0; add an entry to"
                       f" minignn.summary.FLOP_RULES)")
        return "\n".join(out)

    def __repr__(self) -> str:
        return (f"Summary({len(self.rows)} rows, input {self.input_shape}, {self.total_params:,} parameters,"
                f" {_flops_text(self.flops)} per sample)")


# ================================================================================================
# the pass
# ================================================================================================
def _check_input_shape(input_shape, where: str) -> tuple:
    ok = isinstance(input_shape, (tuple, list)) and len(input_shape) in (3, 4) and all(
        isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) and v >= 1 for v in input_shape)
    if not ok:
        raise ValueError(f"{where}: input_shape: expected (C, H, W) or (N, C, H, W), integers >= 1, got"
                         f" {input_shape!r}")
    shape = tuple(int(v) for v in input_shape)
    return shape if len(shape) == 4 else (1,) + shape


def _shape_of(y):
    if hasattr(y, "shape"):
        return tuple(int(s) for s in y.shape)
    if isinstance(y, (tuple, list)):
        return [_shape_of(v) for v in y if v is not None]
    return None


def _leaves(model: Module) -> list[tuple[str, Module]]:
    """(first qualified name, module) of each leaf, in registration order, each instance once."""
    out, seen, covered = [], set(), set()
    for name, m in model.named_modules():
        if id(m) in covered:
            continue
        rule = FLOP_RULES.get(type(m))
        whole = rule is not None and rule.covers_children
        if whole:
            covered.update(id(c) for c in m.modules())
        if (whole or not m._modules) and id(m) not in seen:
            seen.add(id(m))
            out.append((name, m))
    return out


def _unique_params(module: Module) -> list:
    seen, out = set(), []
    for p in module.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


def _snapshot(modules):
    """Each module's attribute bindings and registries (restored by :func:`_restore`)."""
    return [(m, dict(m.__dict__), dict(m._params), dict(m._modules), dict(m._buffers)) for m in modules]


def _restore(snapshot):
    for m, attrs, params, mods, bufs in snapshot:
        d = m.__dict__
        for key in [k for k in d if k not in attrs]:   # the forward wrappers, attributes a forward added
            del d[key]
        for key, value in attrs.items():
            if d.get(key, _MISSING) is not value:
                object.__setattr__(m, key, value)
        for registry, saved in ((m._params, params), (m._modules, mods), (m._buffers, bufs)):
            if [(k, id(v)) for k, v in registry.items()] != [(k, id(v)) for k, v in saved.items()]:
                registry.clear()
                registry.update(saved)


_MISSING = object()


def summarize(model: Module, input_shape, dtype=np.float32) -> Summary:
    """Run one forward pass of ``model`` and list its leaf layers (see the module docstring).

    Parameters
    ----------
    model : Module
    input_shape : (C, H, W) or (N, C, H, W)
        One image's shape (the batch is then N = 1) or a batch's. The input is standard normal.
    dtype : float32 or float64
        The input's dtype (it must be the model's parameters' dtype) and the one memory is
        counted in.

    Returns
    -------
    Summary
        Rows in forward order; FLOPs per sample (one multiply-add = 2 FLOPs).

    The model is left as it was (train/eval flags, parameters, buffers, caches, forward methods).
    """
    where = "summarize"
    if not isinstance(model, Module):
        raise TypeError(f"{where}: model: expected a minignn Module, got {type(model).__name__}")
    shape = _check_input_shape(input_shape, where)
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt not in FLOAT_DTYPES:
        raise TypeError(f"{where}: dtype: expected float32 or float64, got {dtype!r}")
    params = _unique_params(model)
    if params and np.dtype(params[0].dtype) != dt:
        raise TypeError(f"{where}: dtype: expected the model's parameter dtype {np.dtype(params[0].dtype)}, got {dt}"
                        f" (or call model.to(dtype={str(dt)!r}) first)")
    device = backend.device_of(params[0].data) if params else "cpu"
    x = np.random.default_rng(0).standard_normal(shape).astype(dt)
    x = backend.to_device(x, device) if device != "cpu" else x

    leaves = _leaves(model)
    modules = list({id(m): m for m in model.modules()}.values())
    flags = [(m, m.training) for m in modules]
    snapshot = _snapshot(modules)
    rows: list[LayerRow] = []
    called: set[int] = set()
    failed: list = []

    def wrap(name, m, original):
        rule = FLOP_RULES.get(type(m))

        def forward(*args, **kw):
            x_shape = _shape_of(args[0]) if args else None
            try:
                y = original(*args, **kw)
            except Exception:
                if not failed:
                    failed.append((name or "<model>", type(m).__name__, x_shape))
                raise
            y_shape = _shape_of(y)
            repeat = id(m) in called
            called.add(id(m))
            if rule is None:
                flops, note = None, "no FLOPs rule for this type (counted as 0)"
            else:
                batch_flops = int(rule.count(m, x_shape, y_shape))
                q, r = divmod(batch_flops, shape[0])
                flops, note = (q if r == 0 else batch_flops / shape[0]), rule.note
            n_params = 0 if repeat else sum(_size(p.shape) for p in _unique_params(m))
            rows.append(LayerRow(name, type(m).__name__, x_shape, y_shape, n_params, flops, note, repeat))
            return y

        return forward

    try:
        model.eval()
        for m in modules:
            for attr in SCRATCH_ATTRS:
                if isinstance(m.__dict__.get(attr), dict):
                    object.__setattr__(m, attr, {})
        for name, m in leaves:
            object.__setattr__(m, "forward", wrap(name, m, m.forward))
        try:
            y = model.forward(x)
        except (ValueError, TypeError) as e:
            at = (f" at {failed[0][0]} ({failed[0][1]}) with input shape {_shape_text(failed[0][2])}"
                  if failed else "")
            cls = TypeError if isinstance(e, TypeError) else ValueError
            raise cls(f"{where}: the forward pass on input shape {shape} failed{at}: {e}") from e
    finally:
        _restore(snapshot)          # unwraps every forward, puts back caches and scratch buffers
        for m, flag in flags:
            object.__setattr__(m, "training", flag)

    listed = {id(p) for _, m in leaves if id(m) in called for p in m.parameters()}
    unlisted = sum(_size(p.shape) for p in params if id(p) not in listed)
    not_called = [name or "<model>" for name, m in leaves if id(m) not in called]
    return Summary(rows=rows, input_shape=shape, output_shape=_shape_of(y), dtype=dt,
                   total_params=sum(_size(p.shape) for p in params), unlisted_params=unlisted,
                   not_called=not_called)


# ================================================================================================
# the command
# ================================================================================================
def parse_input_shape(text: str) -> tuple:
    """``"3,32,32"`` -> ``(3, 32, 32)`` (C,H,W, or N,C,H,W): an argparse type, so a bad value is
    argparse's error naming ``--input-shape``."""
    try:
        vals = tuple(int(t) for t in str(text).split(","))
    except ValueError:
        vals = ()
    if len(vals) not in (3, 4) or any(v < 1 for v in vals):
        raise argparse.ArgumentTypeError(f"expected C,H,W (or N,C,H,W): integers >= 1, got {text!r}")
    return vals


parse_input_shape.__name__ = "C,H,W"


def add_parser(sub):
    """Add the ``summary`` command to ``sub`` (an argparse subparsers object); returns its parser."""
    from .cli import _kv, _pool_options_help, _pos_float, _pos_int
    from .layers.registry import POOLINGS
    from .models import MODELS
    p = sub.add_parser(
        "summary", help="print a model's layers, output shapes, parameters and FLOPs",
        description="Build a model and run one forward pass on a random batch: every layer's output shape,"
                    " parameters and forward FLOPs per image (one multiply-add = 2 FLOPs), and the totals.")
    p.add_argument("--model", choices=tuple(MODELS), default="tiny", help="architecture (default tiny)")
    p.add_argument("--pool", choices=tuple(POOLINGS), default="gfgp",
                   help="every local pooling layer (default gfgp; 'minignn pools' describes them)")
    p.add_argument("--pool-opt", type=_kv, action="append", default=[], metavar="KEY=VALUE",
                   help=f"an option of the chosen pool, repeatable: {_pool_options_help()}")
    p.add_argument("--width", type=_pos_float, default=1.0, help="channel-width multiplier (default 1.0)")
    p.add_argument("--num-classes", type=_pos_int, default=10, help="(default 10)")
    p.add_argument("--input-shape", type=parse_input_shape, default=(3, 32, 32), metavar="C,H,W",
                   help="one image's shape, or N,C,H,W for a batch (default 3,32,32)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.set_defaults(func=cmd_summary)
    return p


def cmd_summary(args) -> int:
    """Print the summary of the model ``args`` describe (the table, or JSON with ``--json``)."""
    from . import init
    from .checkpoint import dumps_json
    from .cli import UsageError, _check_pool_opts
    from .models import build_model
    shape = args.input_shape
    if isinstance(shape, str):
        try:
            shape = parse_input_shape(shape)
        except argparse.ArgumentTypeError as e:
            raise UsageError(f"--input-shape: {e}") from None
    pool_kw = _check_pool_opts(args.pool, dict(args.pool_opt or []))
    state = init.get_rng_state()
    try:
        model = build_model(args.model, pool=args.pool, num_classes=args.num_classes, width=args.width, **pool_kw)
    except (ValueError, TypeError) as e:
        given = " ".join(f"{k}={v!r}" for k, v in pool_kw.items())
        raise UsageError(f"--pool-opt {given}: {e}" if pool_kw else str(e)) from None
    finally:
        init.set_rng_state(state)
    try:
        summary = summarize(model, shape)
    except (ValueError, TypeError) as e:
        raise UsageError(f"--input-shape {','.join(map(str, shape))}: {e}") from None
    if args.json:
        print(dumps_json({"model": args.model, "pool": args.pool, "pool_kw": pool_kw, "width": args.width,
                          "num_classes": args.num_classes, **summary.to_dict()}, indent=2))
    else:
        opts = "".join(f", {k}={v!r}" for k, v in pool_kw.items())
        print(f"{args.model} (pool={args.pool}{opts}, width={args.width:g}, {args.num_classes} classes)")
        print(summary)
    return 0
