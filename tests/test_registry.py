"""The pooling registry (minignn.layers.POOLINGS): every name builds a 2x2 / stride-2 layer, its
options are the layer's own with their defaults, unknown names and options are one clear error,
and the command line (``--pool``, ``--pool-opt``, ``minignn pools``) reads it."""
import dataclasses
import inspect
import json

import numpy as np
import pytest

from minignn import init
from minignn.cli import main
from minignn.layers import POOLINGS, MaxEntPool2d, PoolingSpec, register_pooling, validate_options
from minignn.models import build_model, make_pool, pooling_layers
from minignn.train import TrainConfig

NAMES = ("skip", "avg", "max", "maxent", "maxent-param", "gfgp", "gfgp-local", "softpool", "mixed", "gated",
         "gfgp-gated", "lppool", "stochastic", "s3", "dpp", "gfgp-dpp", "lip", "gaussian")
#: the poolings that take x >= 0 only (they follow a ReLU in the models)
NONNEGATIVE = ("lppool", "stochastic")
MAXENT = ("maxent", "maxent-param", "gfgp", "gfgp-local")
#: the diagnostics (``last_<name>`` attributes) each pooling records
DIAGNOSTICS = {**{n: ("lam", "rho") for n in MAXENT}, "mixed": ("a",), "gated": ("gate",), "gfgp-gated": ("a",), "lppool": ("p",),
               "dpp": ("gamma", "alpha"), "gfgp-dpp": ("gamma", "alpha"), "lip": ("logit",),
               "gaussian": ("eta",)}


def test_registry_names_order_and_specs():
    assert tuple(POOLINGS) == NAMES
    for name, spec in POOLINGS.items():
        assert isinstance(spec, PoolingSpec) and spec.name == name
        assert spec.description and "\n" not in spec.description
        assert spec.diagnostics == DIAGNOSTICS.get(name, ())
        assert spec.subsampling == (name == "skip")
        ctor = inspect.signature(type(spec.build(4)).__init__).parameters
        for key, default in spec.options.items():  # the defaults are the layer constructor's
            assert ctor[key].default == default, (name, key)
    assert set(POOLINGS["maxent"].options) == set(POOLINGS["maxent-param"].options) == {"lam_init", "prior"}
    assert (list(POOLINGS["gfgp"].options) == list(POOLINGS["gfgp-local"].options)
            == ["stat", "hidden", "mlp", "activation", "prior", "bias", "batchnorm"])
    assert not any(POOLINGS[n].options for n in ("skip", "avg", "max"))


def test_specs_are_read_only():
    spec = POOLINGS["gfgp"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.name = "other"
    with pytest.raises(TypeError):
        spec.options["stat"] = "max"


@pytest.mark.parametrize("channels", [1, 3, 8])
@pytest.mark.parametrize("name", NAMES)
def test_every_pooling_halves_8x8_forward_and_backward(name, channels):
    layer = POOLINGS[name].build(channels)
    x = np.random.default_rng(channels).standard_normal((2, channels, 8, 8)).astype(np.float32)
    if name in NONNEGATIVE:
        x = np.abs(x)
    y = layer.forward(x)
    assert y.shape == (2, channels, 4, 4) and y.dtype == np.float32 and np.all(np.isfinite(y))
    layer.zero_grad()
    gx = layer.backward(np.ones_like(y))
    assert gx.shape == x.shape and gx.dtype == np.float32 and np.all(np.isfinite(gx))
    assert float(np.abs(gx).sum()) > 0
    for attr in POOLINGS[name].diagnostics:  # what the spec says the layer exposes after a forward
        assert hasattr(layer, f"last_{attr}")
    assert all(getattr(layer, f"last_{attr}") is not None for attr in POOLINGS[name].diagnostics[:1])


@pytest.mark.parametrize("name", NAMES)
def test_listed_options_are_accepted_with_their_defaults(name):
    spec = POOLINGS[name]
    init.manual_seed(1)
    plain = make_pool(name, 6).state_dict()
    init.manual_seed(1)
    explicit = make_pool(name, 6, **spec.options).state_dict()  # every default, spelled out
    assert list(plain) == list(explicit) and all(np.array_equal(plain[k], explicit[k]) for k in plain)
    assert validate_options(name, dict(spec.options)) == dict(spec.options)
    assert spec.build(6, **spec.options).forward(np.ones((1, 6, 4, 4), np.float32)).shape == (1, 6, 2, 2)


@pytest.mark.parametrize("name", NAMES)
def test_unknown_option_is_one_line_listing_the_valid_ones(name):
    with pytest.raises(ValueError) as e:
        validate_options(name, {"foo": 1})
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"--pool-opt foo: unknown option for pool {name!r}")
    opts = POOLINGS[name].options
    for key, default in opts.items():
        assert f"{key} (" in msg and repr(default) in msg
    if not opts:
        assert "takes no options" in msg
    with pytest.raises(ValueError, match=f"pool option foo: unknown option for pool '{name}'"):
        make_pool(name, 4, foo=1)


def test_option_error_examples():
    with pytest.raises(ValueError, match=r"^--pool-opt foo: unknown option for pool 'gfgp'; valid: stat \(default"
                                         r" 'avg'\), hidden \(0.5\), mlp \('mlp'\), activation \('sigmoid'\),"
                                         r" prior \(None\), bias \(False\), batchnorm \(False\)$"):
        validate_options("gfgp", {"foo": "bar"})
    with pytest.raises(ValueError, match=r"pool: expected one of \('skip', 'avg', .*'gfgp-local'.*\), got 'median'"):
        validate_options("median", {})
    with pytest.raises(ValueError, match="stat is an option of gfgp, gfgp-local"):
        validate_options("maxent", {"stat": "max"})
    with pytest.raises(ValueError, match=r"lam is chosen by the pool name: maxent \(lam='const'\), maxent-param"):
        validate_options("maxent", {"lam": "param"})
    with pytest.raises(ValueError, match="pool_kw stat: unknown option for pool 'max', which takes no options"):
        TrainConfig(pool="max", pool_kw={"stat": "max"}).validate()
    assert validate_options("max", None) == {} and validate_options("gfgp", {"stat": "max"}) == {"stat": "max"}
    # the values are the layer's to check
    with pytest.raises(ValueError, match="MaxEntPool2d: stat: expected one of"):
        make_pool("gfgp", 4, stat="median")


def test_register_pooling():
    with pytest.raises(ValueError, match="register_pooling: spec: a pooling named 'max' is already registered"):
        register_pooling(PoolingSpec("max", POOLINGS["max"].build, {}, "again"))
    with pytest.raises(TypeError, match="register_pooling: spec: expected a PoolingSpec, got str"):
        register_pooling("max")
    with pytest.raises(ValueError, match="PoolingSpec: description: expected one line"):
        PoolingSpec("x", POOLINGS["max"].build, {}, "two\nlines")
    spec = PoolingSpec("test-avg-lam", lambda channels, lam_init=1.0: make_pool("maxent", channels, lam_init=lam_init),
                       {"lam_init": 1.0}, "a test pooling", ("lam", "rho"))
    register_pooling(spec)
    try:
        model = build_model("tiny", pool="test-avg-lam", width=0.25, lam_init=0.0)
        assert [p.lam_init for _, p in pooling_layers(model)] == [0.0, 0.0, 0.0]
        with pytest.raises(ValueError, match="unknown option for pool 'test-avg-lam'; valid: lam_init"):
            build_model("resnet20", pool="test-avg-lam", width=0.25, stat="max")
    finally:
        del POOLINGS["test-avg-lam"]


def test_pools_command_lists_every_pooling(capsys):
    assert main(["pools"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for name, spec in POOLINGS.items():
        line = next(ln for ln in lines if ln.split()[0] == name)
        assert spec.description in line
        for key, default in spec.options.items():
            assert f"{key}={default!r}" in line
    assert main(["pools", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert list(data) == list(POOLINGS)
    assert data["gfgp"]["options"]["stat"] == "avg" and data["maxent"]["diagnostics"] == ["lam", "rho"]


def test_train_help_lists_the_registry(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "{" + ",".join(POOLINGS) + "}" in out
    assert "gfgp, gfgp-local: stat, hidden, mlp, activation, prior, bias, batchnorm" in out


@pytest.mark.parametrize("argv,expect", [
    (["--pool-opt", "foo=bar"], "--pool-opt foo: unknown option for pool 'gfgp'; valid: stat (default 'avg')"),
    (["--pool-opt", "kernel_size=0"], "--pool-opt kernel_size: unknown option for pool 'gfgp'"),
    (["--pool", "max", "--pool-opt", "stat=max"], "--pool-opt stat: unknown option for pool 'max'"),
])
def test_train_bad_pool_opt_is_one_line(argv, expect, tmp_path, capsys):
    assert main(["train", "--dataset", "synthetic", *argv, "--out", str(tmp_path / "run")]) == 2
    cap = capsys.readouterr()
    err = cap.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("minignn train: error: ") and expect in err[0]
    assert "Traceback" not in cap.err + cap.out
    assert not (tmp_path / "run").exists()  # nothing was started


@pytest.mark.parametrize("name", NAMES)
def test_train_one_epoch_with_every_pooling(name, tmp_path):
    out = str(tmp_path / name)
    assert main(["train", "--pool", name, "--dataset", "synthetic", "--limit-train", "64", "--limit-test", "32",
                 "--epochs", "1", "--batch-size", "32", "--width", "0.25", "--no-progress", "--no-plots",
                 "--out", out]) == 0
    cfg = json.load(open(f"{out}/config.json"))
    assert cfg["pool"] == name
