"""The registry of local poolings: every ``--pool`` name and how it becomes a layer.

:data:`POOLINGS` maps a pooling's name to its :class:`PoolingSpec`, in this order:

================  ==========================================================  =====================================================
name              layer (2x2 window, stride 2)                                options (``--pool-opt``)
================  ==========================================================  =====================================================
``skip``          :class:`~minignn.layers.shape.Subsample2d`                  none
``avg``           :class:`~minignn.layers.AvgPool2d`                          none
``max``           :class:`~minignn.layers.MaxPool2d`                          none
``maxent``        MaxEntPool2d, ``lam="const"``                               lam_init, prior
``maxent-param``  MaxEntPool2d, ``lam="param"`` (C,)                          lam_init, prior
``gfgp``          MaxEntPool2d, ``lam="gfgp"`` (N, C)                         stat, hidden, mlp, activation, prior, bias, batchnorm
``gfgp-local``    MaxEntPool2d, ``lam="local"`` (N, C, Ho, Wo)                the same as gfgp
``softpool``      :class:`~minignn.layers.SoftPool2d` (maxent at lam = 1)     none
``mixed``         :class:`~minignn.layers.MixedPool2d`, a per channel         mix, a_init
``gated``         :class:`~minignn.layers.GatedPool2d`, omega of k*k weights  none
``gfgp-gated``    MixedPool2d, ``mix="gfgp"``: a (N, C) from GFGP             stat, hidden, mlp, bias, batchnorm
``lppool``        :class:`~minignn.layers.LPPool2d`, p per channel            p_init
``stochastic``    :class:`~minignn.layers.StochasticPool2d` (draws in train)  none
``s3``            :class:`~minignn.layers.S3Pool2d` (draws in train)          grid
``dpp``           :class:`~minignn.layers.DPPool2d`, gamma, alpha per channel  variant, theta_l_init, theta_a_init
``gfgp-dpp``      DPPool2d, ``params="gfgp"``: gamma, alpha (N, C) from GFGP  variant, stat, hidden, mlp, bias, batchnorm
``lip``           :class:`~minignn.layers.LIPPool2d`, 3x3 stride 2 pad 1      none
``gaussian``      GaussianPool2d: mean + eta std, eta (N, C) from GFGP        stochasticity, stat, hidden, mlp, bias, batchnorm
================  ==========================================================  =====================================================

The options' defaults are read from each layer's constructor (:class:`~minignn.layers.MaxEntPool2d`,
:class:`~minignn.layers.MixedPool2d`, ...), so they cannot drift from it. The registry checks
option *names* (:func:`validate_options`); the layer constructors check the *values*.

The models (:mod:`minignn.models`), the ``minignn`` command (``--pool``, ``--pool-opt``,
``minignn pools``), the trainer and the benchmarks all read this registry;
:func:`register_pooling` adds a pooling to all of them.
"""
from __future__ import annotations

import dataclasses
import inspect
import types
from typing import Any, Callable, Mapping

from minignn.checks import check_positive_int
from minignn.module import Module

from .gfgp.layer import MaxEntPool2d
from .lppool import LPPool2d
from .mixpool.layer import GatedPool2d, MixedPool2d
from .pooling import AvgPool2d, MaxPool2d
from .shape import Subsample2d
from .softpool import SoftPool2d
from .stochastic.layer import S3Pool2d, StochasticPool2d
from .lip.layer import LIPPool2d
from .dpp.layer import DPPool2d
from .gaussian.layer import GaussianPool2d

__all__ = ["PoolingSpec", "POOLINGS", "register_pooling", "validate_options", "format_options"]


@dataclasses.dataclass(frozen=True)
class PoolingSpec:
    """How one ``--pool`` name becomes a layer.

    Parameters
    ----------
    name : str
        The pooling's name (``--pool NAME``, ``build_model(..., pool=NAME)``).
    build : callable
        ``build(channels, **options) -> Module``: one 2x2, stride-2 pooling layer over
        ``channels`` channels, (N, C, H, W) -> (N, C, H // 2, W // 2) for even H, W.
    options : mapping
        ``{option name: default}``: what ``--pool-opt`` may set (stored read-only).
    description : str
        One line for ``minignn pools`` and ``--help``.
    diagnostics : tuple of str
        The attributes the layer exposes for analysis after a forward (``("lam", "rho")`` for
        the max-entropy family: ``last_lam`` and ``last_rho``); ``()`` when none.
    ops : tuple of str
        The ops of :data:`minignn.ops.OPS` the layer runs on (so a device supports the pooling
        when it supports these: ``OPS[name].supports(device)``).
    subsampling : bool
        True when the layer is plain strided subsampling, ``x[:, :, ::2, ::2]``: a model may
        fold it into the stride of the convolution before it instead of adding a layer
        (``resnet20`` does, as He et al.'s original).
    """

    name: str
    build: Callable[..., Module]
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    description: str = ""
    diagnostics: tuple = ()
    ops: tuple = ()
    subsampling: bool = False

    def __post_init__(self):
        where = "PoolingSpec"
        if not isinstance(self.name, str) or not self.name or self.name != self.name.strip():
            raise ValueError(f"{where}: name: expected a non-empty string without surrounding spaces,"
                             f" got {self.name!r}")
        if not callable(self.build):
            raise TypeError(f"{where}: build: expected a callable build(channels, **options) -> Module,"
                            f" got {type(self.build).__name__}")
        if not isinstance(self.options, Mapping):
            raise TypeError(f"{where}: options: expected a mapping of option name to default,"
                            f" got {type(self.options).__name__}")
        bad = [k for k in self.options if not (isinstance(k, str) and k.isidentifier())]
        if bad:
            raise ValueError(f"{where}: options: expected option names that are Python identifiers, got {bad!r}")
        if not isinstance(self.description, str) or "\n" in self.description:
            raise ValueError(f"{where}: description: expected one line of text, got {self.description!r}")
        diagnostics = self.diagnostics
        if isinstance(diagnostics, str) or not all(isinstance(d, str) for d in diagnostics):
            raise ValueError(f"{where}: diagnostics: expected a tuple of attribute names, got {diagnostics!r}")
        if not isinstance(self.subsampling, bool):
            raise ValueError(f"{where}: subsampling: expected True or False, got {self.subsampling!r}")
        object.__setattr__(self, "options", types.MappingProxyType(dict(self.options)))
        object.__setattr__(self, "diagnostics", tuple(diagnostics))
        object.__setattr__(self, "ops", tuple(self.ops))


POOLINGS: dict[str, PoolingSpec] = {}
"""Every registered pooling by name, in registration order (the order of ``--pool``'s choices)."""


def register_pooling(spec: PoolingSpec) -> PoolingSpec:
    """Add ``spec`` to :data:`POOLINGS` (a name can be registered once); returns it."""
    if not isinstance(spec, PoolingSpec):
        raise TypeError(f"register_pooling: spec: expected a PoolingSpec, got {type(spec).__name__}")
    if spec.name in POOLINGS:
        raise ValueError(f"register_pooling: spec: a pooling named {spec.name!r} is already registered")
    POOLINGS[spec.name] = spec
    return spec


def format_options(name: str) -> str:
    """The options of pooling ``name`` with their defaults, ``"stat='avg', hidden=0.5, ..."``
    (``"-"`` when it takes none)."""
    spec = _spec(name)
    return ", ".join(f"{k}={v!r}" for k, v in spec.options.items()) or "-"


def _spec(name) -> PoolingSpec:
    if not isinstance(name, str) or name not in POOLINGS:
        raise ValueError(f"pool: expected one of {tuple(POOLINGS)}, got {name!r}")
    return POOLINGS[name]


def validate_options(name: str, options: Mapping[str, Any] | None = None, *, where: str = "--pool-opt") -> dict:
    """Check the option names of pooling ``name``; returns the options as a new dict.

    Only the names are checked (the layer's constructor checks the values). The result holds
    the given options only, in the given order (the defaults are the layer's own).

    Parameters
    ----------
    name : str
        A key of :data:`POOLINGS`.
    options : mapping or None
        ``{option name: value}``.
    where : str
        How the caller names the options in the message (``--pool-opt`` for the command line).

    Raises
    ------
    ValueError
        One line: for an unknown pool name, the valid names; for an unknown option, the valid
        options of that pool with their defaults, e.g. ``"--pool-opt foo: unknown option for
        pool 'gfgp'; valid: stat (default 'avg'), hidden (0.5), ..."``.
    """
    spec = _spec(name)
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise TypeError(f"{where}: expected a mapping of option name to value for pool {name!r},"
                        f" got {type(options).__name__}")
    for key in options:
        if key not in spec.options:
            raise ValueError(_unknown_option(spec, key, where))
    return dict(options)


def _unknown_option(spec: PoolingSpec, key, where: str) -> str:
    label = key if isinstance(key, str) else repr(key)
    msg = f"{where} {label}: unknown option for pool {spec.name!r}"
    if spec.options:
        items = list(spec.options.items())
        first, rest = items[0], items[1:]
        valid = ", ".join([f"{first[0]} (default {first[1]!r})"] + [f"{k} ({v!r})" for k, v in rest])
        msg += f"; valid: {valid}"
    else:
        msg += ", which takes no options"
    if key == "lam":
        forms = ", ".join(f"{p} (lam={lam!r})" for p, lam in _MAXENT_LAM.items())
        msg += f"; lam is chosen by the pool name: {forms}"
    else:
        others = [s.name for s in POOLINGS.values() if s is not spec and key in s.options]
        if others:
            msg += f"; {label} is an option of {', '.join(others)}"
    return msg


# --- the built-in poolings -------------------------------------------------------------------------
def _constructor_defaults(cls, names) -> dict:
    """``{name: default}`` of ``cls``'s constructor for the given parameter names."""
    params = inspect.signature(cls.__init__).parameters
    return {n: params[n].default for n in names}


def _check_channels(channels, pool):
    check_positive_int(channels, "channels", f"POOLINGS[{pool!r}].build")


def _build_skip(channels) -> Module:
    """Strided subsampling, ``x[:, :, ::2, ::2]`` (no parameters; ``channels`` is only checked)."""
    _check_channels(channels, "skip")
    return Subsample2d(2)


def _build_avg(channels) -> Module:
    """2x2 average pooling, stride 2."""
    _check_channels(channels, "avg")
    return AvgPool2d(2, 2)


def _build_max(channels) -> Module:
    """2x2 max pooling, stride 2."""
    _check_channels(channels, "max")
    return MaxPool2d(2, 2)


_MAXENT_LAM = {"maxent": "const", "maxent-param": "param", "gfgp": "gfgp", "gfgp-local": "local"}


def _maxent_builder(pool: str):
    lam = _MAXENT_LAM[pool]

    def build(channels, **options) -> Module:
        return MaxEntPool2d(channels, kernel_size=2, stride=2, lam=lam, **options)

    build.__name__ = build.__qualname__ = f"build_{pool.replace('-', '_')}"
    build.__doc__ = (f"MaxEntPool2d(channels, kernel_size=2, stride=2, lam={lam!r}, **options): the {pool!r}"
                     f" pooling.")
    return build


def _build_softpool(channels) -> Module:
    """SoftPool: max-entropy pooling with lam = 1 and no prior (2x2, stride 2)."""
    _check_channels(channels, "softpool")
    return SoftPool2d(2, 2)


def _build_mixed(channels, **options) -> Module:
    """MixedPool2d(channels, 2, 2, **options); mix is "channel" or "layer" (the GFGP-guided form
    is the "gfgp-gated" pooling)."""
    if options.get("mix", "channel") == "gfgp":
        raise ValueError("pool option mix: expected 'channel' or 'layer' for pool 'mixed', got 'gfgp'; the"
                         " GFGP-guided gate is --pool gfgp-gated")
    return MixedPool2d(channels, 2, 2, **options)


def _build_gated(channels) -> Module:
    """GatedPool2d(channels, 2, 2): one omega of 4 weights for the layer, zero init."""
    return GatedPool2d(channels, 2, 2)


def _build_gfgp_gated(channels, **options) -> Module:
    """MixedPool2d(channels, 2, 2, mix="gfgp", **options): the gate per sample and channel from GFGP."""
    return MixedPool2d(channels, 2, 2, mix="gfgp", **options)


def _build_stochastic(channels) -> Module:
    """StochasticPool2d(2, 2): a cell drawn with probability a / sum a (train), sum a^2 / sum a (eval)."""
    _check_channels(channels, "stochastic")
    return StochasticPool2d(2, 2)


def _build_s3(channels, **options) -> Module:
    """S3Pool2d(**options): 2x2 stride-1 max pooling, then stochastic spatial sampling by 2."""
    _check_channels(channels, "s3")
    return S3Pool2d(**options)


def _build_dpp(channels, **options) -> Module:
    """DPPool2d(channels, 2, **options): detail-preserving pooling, theta_l and theta_a per channel."""
    if "params" in options:
        raise ValueError("pool option params: not an option of pool 'dpp'; the GFGP-guided form is --pool gfgp-dpp")
    return DPPool2d(channels, 2, **options)


def _build_gfgp_dpp(channels, **options) -> Module:
    """DPPool2d(channels, 2, params="gfgp", **options): gamma and alpha per sample and channel from GFGP."""
    return DPPool2d(channels, 2, params="gfgp", **options)


def _build_lip(channels) -> Module:
    """LIPPool2d(channels, 3, 2, 1): the paper's 3x3 windows, stride 2, padding 1 (H -> H // 2 for
    even H), the logit conv at zero (LIP starts as average pooling)."""
    return LIPPool2d(channels, 3, 2, 1)


def _build_gaussian(channels, **options) -> Module:
    """GaussianPool2d(channels, 2, 2, **options): mean + eta std per window, eta from the GFGP-style
    mapping (noisy in train unless stochasticity=None)."""
    return GaussianPool2d(channels, 2, 2, **options)


def _build_lppool(channels, **options) -> Module:
    """LPPool2d(channels, 2, 2, **options): p per channel, p = 1 + softplus(theta)."""
    return LPPool2d(channels, 2, 2, **options)


_LAM_OPTIONS = _constructor_defaults(MaxEntPool2d, ("lam_init", "prior"))
_GFGP_OPTIONS = _constructor_defaults(MaxEntPool2d, ("stat", "hidden", "mlp", "activation", "prior", "bias",
                                                     "batchnorm"))
_MAXENT_DIAGNOSTICS = ("lam", "rho")

for _spec_ in (
    PoolingSpec("skip", _build_skip, {}, "strided subsampling x[:, :, ::2, ::2] (resnet20: a stride-2 conv)",
                (), ops=("subsample2d",), subsampling=True),
    PoolingSpec("avg", _build_avg, {}, "2x2 average pooling", ops=("avg_pool2d",)),
    PoolingSpec("max", _build_max, {}, "2x2 max pooling", ops=("max_pool2d",)),
    PoolingSpec("maxent", _maxent_builder("maxent"), _LAM_OPTIONS,
                "max-entropy pooling, a constant lam = lam_init", _MAXENT_DIAGNOSTICS, ops=("maxent_pool2d",)),
    PoolingSpec("maxent-param", _maxent_builder("maxent-param"), _LAM_OPTIONS,
                "max-entropy pooling, a trained lam per channel (from lam_init)", _MAXENT_DIAGNOSTICS,
                ops=("maxent_pool2d",)),
    PoolingSpec("gfgp", _maxent_builder("gfgp"), _GFGP_OPTIONS,
                "GFGP: lam per sample and channel from global statistics",
                _MAXENT_DIAGNOSTICS, ops=("maxent_pool2d", "gfgp_stats", "linear")),
    PoolingSpec("gfgp-local", _maxent_builder("gfgp-local"), _GFGP_OPTIONS,
                "local GFGP: lam per window from its own statistics (Table 1b)",
                _MAXENT_DIAGNOSTICS, ops=("maxent_pool2d", "gfgp_local_stats", "linear")),
    PoolingSpec("softpool", _build_softpool, {}, "SoftPool: softmax(x)-weighted mean, max-entropy pooling at lam = 1",
                ops=("maxent_pool2d",)),
    PoolingSpec("mixed", _build_mixed, _constructor_defaults(MixedPool2d, ("mix", "a_init")),
                "mixed pooling a max + (1 - a) avg, a trained per channel (or per layer)", ("a",),
                ops=("mixed_pool2d",)),
    PoolingSpec("gated", _build_gated, {}, "gated pooling g max + (1 - g) avg, g = sigmoid(omega . window)",
                ("gate",), ops=("gated_pool2d",)),
    PoolingSpec("gfgp-gated", _build_gfgp_gated,
                _constructor_defaults(MixedPool2d, ("stat", "hidden", "mlp", "bias", "batchnorm")),
                "GFGP-gated: a max + (1 - a) avg, a per sample and channel from global statistics", ("a",),
                ops=("mixed_pool2d", "gfgp_stats", "linear")),
    PoolingSpec("lppool", _build_lppool, _constructor_defaults(LPPool2d, ("p_init",)),
                "power-average pooling (mean x^p)^(1/p) on x >= 0, p >= 1 trained per channel", ("p",),
                ops=("lp_pool2d",)),
    PoolingSpec("stochastic", _build_stochastic, {},
                "stochastic pooling on x >= 0: a cell drawn with p = x / sum x (train), sum x^2 / sum x (eval)",
                ops=("stochastic_pool2d",)),
    PoolingSpec("s3", _build_s3, _constructor_defaults(S3Pool2d, ("grid",)),
                "S3: 2x2 stride-1 max, then half the rows and columns of each grid block drawn (train), 2x2 avg (eval)",
                ops=("s3_pool2d",)),
    PoolingSpec("dpp", _build_dpp, _constructor_defaults(DPPool2d, ("variant", "theta_l_init", "theta_a_init")),
                "detail-preserving pooling: weights (v / mean v)^gamma + alpha, v = (x - window mean)^2 + 1e-3",
                ("gamma", "alpha"), ops=("dpp_pool2d",)),
    PoolingSpec("gfgp-dpp", _build_gfgp_dpp,
                _constructor_defaults(DPPool2d, ("variant", "stat", "hidden", "mlp", "bias", "batchnorm")),
                "GFGP-DPP: DPP's gamma and alpha per sample and channel from global statistics",
                ("gamma", "alpha"), ops=("dpp_pool2d", "gfgp_stats", "linear")),
    PoolingSpec("lip", _build_lip, {},
                "LIP: softmax(L)-weighted 3x3 stride-2 mean, L = 12 sigmoid(IN(conv3x3(x))), starts as avg",
                ("logit",), ops=("lip_pool2d", "instance_norm2d", "conv2d")),
    PoolingSpec("gaussian", _build_gaussian,
                _constructor_defaults(GaussianPool2d, ("stochasticity", "stat", "hidden", "mlp", "bias", "batchnorm")),
                "Gaussian pooling mean + eta std per window, eta = softplus(mu_eta + sigma_eta eps) from global"
                " statistics (eps = 0 in eval)", ("eta",), ops=("gaussian_pool2d", "gfgp_stats", "linear")),
):
    register_pooling(_spec_)
del _spec_
