"""Model summary (minignn.summary): output shapes against an independent layer-by-layer forward,
parameter totals, FLOPs against the formulas worked out here, the model left as it was, '?' for
a layer without a rule, and the ``summary`` command through a parser of the test's own."""
from __future__ import annotations

import argparse
import importlib
import inspect
import json
import pkgutil

import numpy as np
import pytest

import minignn.layers
from minignn import Module, Sequential, init
from minignn.layers import (AvgPool2d, BatchNorm2d, Conv2d, Dropout, Flatten, GlobalAvgPool2d, Linear, MaxEntPool2d,
                            MaxPool2d, ReLU)
from minignn.layers.gfgp import GFGPMapping
from minignn.models import BasicBlock, build_model, count_parameters
from minignn.summary import FLOP_RULES, Summary, add_parser, summarize


# ------------------------------------------------------------------------------------------ helpers
def _reference_shapes(model, x):
    """(name, output shape) of every leaf, by running the model's pieces one by one here (no
    wrapping): Sequentials child by child, BasicBlocks as main path, shortcut, final ReLU."""
    out = []

    def run(name, m, x):
        if isinstance(m, Sequential):
            for child_name, child in m._modules.items():
                x = run(f"{name}.{child_name}" if name else child_name, child, x)
            return x
        if isinstance(m, BasicBlock):
            h = x
            for child in m._main():
                child_name = next(k for k, v in m._modules.items() if v is child)
                h = run(f"{name}.{child_name}", child, h)
            s = run(f"{name}.shortcut", m.shortcut, x)
            return run(f"{name}.relu2", m.relu2, h + s)
        y = m.forward(x)
        out.append((name, tuple(y.shape)))
        return y

    y = run("", model, x)
    return out, tuple(y.shape)


def _x(shape, seed=1):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


MODEL_CASES = [(name, pool) for name in ("tiny", "vgg11", "resnet20") for pool in ("max", "gfgp")]


# --------------------------------------------------------------------------------- shapes and params
@pytest.mark.parametrize("name,pool", MODEL_CASES)
def test_shapes_and_parameters_match_an_independent_forward(name, pool):
    init.manual_seed(0)
    model = build_model(name, pool=pool, num_classes=7, width=0.25).eval()
    s = summarize(model, (2, 3, 32, 32))
    expected, out_shape = _reference_shapes(model, _x((2, 3, 32, 32)))
    assert [(r.name, tuple(r.output_shape)) for r in s.rows] == expected
    assert s.output_shape == out_shape == (2, 7)
    assert s.total_params == count_parameters(model)
    assert s.unlisted_params == 0 and s.not_called == []
    assert sum(r.params for r in s.rows) == s.total_params
    modules = dict(model.named_modules())
    for r in s.rows:
        assert r.type == type(modules[r.name]).__name__
        assert r.params == count_parameters(modules[r.name])
    itemsize = np.dtype(np.float32).itemsize
    assert s.param_bytes == count_parameters(model) * itemsize
    assert s.activation_bytes == sum(int(np.prod(shp)) for _, shp in expected) * itemsize
    assert s.input_bytes == 2 * 3 * 32 * 32 * itemsize


def test_tiny_shapes_by_hand():
    """tiny at width 0.25 on one 3x32x32 image (a (C, H, W) shape means a batch of 1)."""
    init.manual_seed(0)
    model = build_model("tiny", pool="gfgp", width=0.25)
    s = summarize(model, (3, 32, 32))
    got = {r.name: tuple(r.output_shape) for r in s.rows}
    c1, c2, c3 = 8, 16, 32
    assert got == {"conv1": (1, c1, 32, 32), "bn1": (1, c1, 32, 32), "relu1": (1, c1, 32, 32),
                   "pool1": (1, c1, 16, 16),
                   "conv2": (1, c2, 16, 16), "bn2": (1, c2, 16, 16), "relu2": (1, c2, 16, 16),
                   "pool2": (1, c2, 8, 8),
                   "conv3": (1, c3, 8, 8), "bn3": (1, c3, 8, 8), "relu3": (1, c3, 8, 8), "pool3": (1, c3, 4, 4),
                   "gap": (1, c3), "flatten": (1, c3), "fc": (1, 10)}
    # the GFGP pool's row holds its mapping's parameters: U (C/2, C) and V_lam (C, C/2)
    rows = {r.name: r for r in s.rows}
    assert rows["pool1"].params == 2 * (c1 // 2) * c1
    assert rows["pool1"].type == "MaxEntPool2d"


def test_full_width_tiny_totals():
    init.manual_seed(0)
    model = build_model("tiny", pool="gfgp")
    s = summarize(model, (3, 32, 32))
    assert s.total_params == count_parameters(model)
    text = str(s)
    assert f"total: {count_parameters(model):,} parameters" in text
    assert "KiB float32" in text and "FLOPs per image forward" in text


# ------------------------------------------------------------------------------------------- FLOPs
def test_conv_and_linear_flops_by_formula():
    n, cin, h, w = 2, 3, 6, 7
    cout, hidden, classes = 8, 16, 5
    init.manual_seed(0)
    model = Sequential(Conv2d(cin, cout, 3, padding=1), ReLU(), Flatten(), Linear(cout * h * w, hidden),
                       Linear(hidden, classes, bias=False))
    s = summarize(model, (n, cin, h, w))
    conv = 2 * cin * 3 * 3 * cout * h * w + cout * h * w   # stride 1, padding 1: Ho, Wo = H, W
    relu = cout * h * w
    fc1 = 2 * (cout * h * w) * hidden + hidden
    fc2 = 2 * hidden * classes
    assert [r.flops for r in s.rows] == [conv, relu, 0, fc1, fc2]   # per sample (the batch is 2)
    assert s.flops == conv + relu + fc1 + fc2
    assert s.total_params == (cin * 9 * cout + cout) + (cout * h * w * hidden + hidden) + hidden * classes


def test_strided_conv_flops():
    cin, cout, kh, kw, h, w = 3, 4, 3, 2, 7, 9
    m = Conv2d(cin, cout, (kh, kw), stride=2, padding=(0, 1), bias=False)
    s = summarize(Sequential(m), (cin, h, w))
    ho, wo = (h - kh) // 2 + 1, (w + 2 - kw) // 2 + 1
    assert tuple(s.rows[0].output_shape) == (1, cout, ho, wo)
    assert s.rows[0].flops == 2 * cin * kh * kw * cout * ho * wo


def test_grouped_conv_rule():
    """Conv2d has no groups yet; the rule divides Cin by a ``groups`` attribute when a layer has one."""
    class Grouped:
        in_channels, kernel_size, bias, groups = 8, (3, 3), None, 4
    y = (2, 6, 5, 5)
    assert FLOP_RULES[Conv2d].count(Grouped(), (2, 8, 5, 5), y) == 2 * (2 * (8 // 4) * 9 * 6 * 5 * 5)


def test_normalisation_and_pooling_flops_by_formula():
    n, c, h, w = 2, 4, 8, 6
    model = Sequential(BatchNorm2d(c), MaxPool2d(2, 2), AvgPool2d(3, stride=1, padding=1), Dropout(0.5),
                       GlobalAvgPool2d())
    s = summarize(model, (n, c, h, w))
    ho, wo = h // 2, w // 2
    assert [r.flops for r in s.rows] == [2 * c * h * w, 4 * c * ho * wo, 9 * c * ho * wo, 0, c * ho * wo]


@pytest.mark.parametrize("prior", [None, "param"])
def test_maxent_const_flops(prior):
    c, h, w = 3, 6, 4
    s = summarize(Sequential(MaxEntPool2d(c, 2, 2, lam="const", prior=prior)), (c, h, w))
    k, outs = 4, c * (h // 2) * (w // 2)
    per_cell = 6 if prior else 5
    assert s.rows[0].flops == outs * (per_cell * k + 1)
    assert s.rows[0].params == (c * k if prior else 0)


def test_gfgp_flops_by_formula():
    c, h, w = 8, 6, 4
    d = c // 2
    pool = MaxEntPool2d(c, 2, 2, lam="gfgp", stat="avg+std", hidden=0.5, activation="softplus", bias=True)
    s = summarize(Sequential(pool), (2, c, h, w))
    outs, k = c * (h // 2) * (w // 2), 4
    pooling = outs * (5 * k + 1)
    stats = 4 * c * h * w                                    # avg+std: 4 per input cell
    mapping = (2 * (2 * c) * d + d) + d + (2 * d * c + c) + 3 * c   # U (+bias), ReLU, V_lam (+bias), softplus
    assert s.rows[0].flops == pooling + stats + mapping
    assert len(s.rows) == 1 and s.rows[0].params == count_parameters(pool)


def test_local_gfgp_flops_by_formula():
    c, h, w = 4, 4, 6
    d = c // 2
    pool = MaxEntPool2d(c, 2, 2, lam="local", stat="max", batchnorm=True)
    s = summarize(Sequential(pool), (c, h, w))
    positions, k = (h // 2) * (w // 2), 4
    pooling = c * positions * (5 * k + 1)
    stats = k * c * positions                                       # max over each window
    mapping = positions * ((2 * c * d + 2 * d) + d + (2 * d * c + 2 * c) + 4 * c)  # batch norms, sigmoid
    assert s.rows[0].flops == pooling + stats + mapping
    # the mapping's batch norms are inside the pool's row, not rows of their own
    assert [r.name for r in s.rows] == ["0"]


def test_gfgp_mapping_alone_and_predicted_prior():
    """A GFGPMapping called by a container of its own is one row (its rule covers it)."""
    c, d, k = 6, 3, 4
    mapping = GFGPMapping(c, stat="avg", hidden=0.5, prior="predicted", kernel_size=2)

    class Holder(Module):
        def __init__(self):
            super().__init__()
            self.mapping = mapping

        def forward(self, x):
            lam, rho = self.mapping.forward(x.mean(axis=(2, 3)))
            return lam

    s = summarize(Holder(), (5, c, 3, 3))
    assert [(r.name, r.input_shape, r.output_shape) for r in s.rows] == [("mapping", (5, c), [(5, c), (5, c, k)])]
    # U, ReLU, V_lam, sigmoid, V_rho (no bias, no batch norm)
    assert s.rows[0].flops == (2 * c * d) + d + (2 * d * c) + 4 * c + (2 * d * c * k)
    assert s.total_params == count_parameters(mapping) == s.rows[0].params


def test_every_layer_class_has_a_rule():
    classes = set()
    for info in pkgutil.walk_packages(minignn.layers.__path__, "minignn.layers."):
        mod = importlib.import_module(info.name)
        for _, obj in inspect.getmembers(mod, inspect.isclass):
            if (issubclass(obj, Module) and obj.__module__ == mod.__name__ and not obj.__name__.startswith("_")):
                classes.add(obj)
    assert {Conv2d, Linear, MaxEntPool2d, GFGPMapping} <= classes
    missing = sorted(c.__name__ for c in classes if c not in FLOP_RULES)
    assert missing == []


class _Scale(Module):
    """A layer type the summary has no rule for."""

    def forward(self, x):
        return 2 * x


def test_a_layer_without_a_rule_shows_a_question_mark():
    s = summarize(Sequential(Conv2d(3, 2, 1), _Scale(), ReLU()), (3, 4, 4))
    rows = {r.name: r for r in s.rows}
    assert rows["1"].flops is None and rows["1"].type == "_Scale"
    assert s.unknown == ["1"]
    assert s.flops == rows["0"].flops + rows["2"].flops
    line = next(t for t in str(s).splitlines() if t.startswith("1 (_Scale)"))
    assert line.split()[-1] == "?"
    assert "no FLOPs rule for _Scale" in str(s)
    d = s.to_dict()
    assert d["layers"][1]["flops"] is None and d["totals"]["unknown_flops_layers"] == ["1"]


# ------------------------------------------------------------------------- the model stays the same
def _state_equal(a, b):
    return list(a) == list(b) and all(np.array_equal(a[k], b[k]) for k in a)


def test_model_is_unchanged():
    init.manual_seed(0)
    model = build_model("resnet20", pool="gfgp", width=0.25, batchnorm=True)
    model.train()
    model.stage2.eval()                      # mixed flags must come back as they were
    flags = {name: m.training for name, m in model.named_modules()}
    # moved running statistics, so "unchanged" is not "still the initial values"
    model.forward(_x((4, 3, 16, 16), seed=3))
    state = model.state_dict()
    bn = {name: (m.running_mean.copy(), m.running_var.copy()) for name, m in model.named_modules()
          if isinstance(m, BatchNorm2d)}
    assert bn, "the model has batch norms"
    rng_state = init.get_rng_state()
    model.eval()
    x = _x((2, 3, 16, 16), seed=4)
    y_before = model.forward(x).copy()
    for name, m in model.named_modules():
        object.__setattr__(m, "training", flags[name])

    s = summarize(model, (3, 16, 16))
    assert len(s.rows) > 0

    assert {name: m.training for name, m in model.named_modules()} == flags
    assert _state_equal(model.state_dict(), state)
    for name, m in model.named_modules():
        if isinstance(m, BatchNorm2d):
            assert np.array_equal(m.running_mean, bn[name][0]) and np.array_equal(m.running_var, bn[name][1])
        assert "forward" not in m.__dict__, name
    assert init.get_rng_state() == rng_state
    model.eval()
    np.testing.assert_array_equal(model.forward(x), y_before)


def test_a_pending_backward_still_works():
    """forward, then summary, then backward: the same gradients as without the summary."""
    x = _x((3, 3, 16, 16), seed=5)
    results = []
    for with_summary in (False, True):
        init.manual_seed(0)
        model = build_model("tiny", pool="gfgp", width=0.25)
        y = model.forward(x)
        if with_summary:
            summarize(model, (2, 3, 8, 8))
        model.zero_grad()
        gx = model.backward(np.ones_like(y))
        results.append((y, gx, [p.grad.copy() for p in model.parameters()]))
    (y0, gx0, g0), (y1, gx1, g1) = results
    np.testing.assert_array_equal(y0, y1)
    np.testing.assert_array_equal(gx0, gx1)
    for a, b in zip(g0, g1):
        np.testing.assert_array_equal(a, b)


def test_a_failing_forward_restores_and_names_the_layer():
    init.manual_seed(0)
    model = build_model("tiny", pool="max", width=0.25)
    state = model.state_dict()
    with pytest.raises(ValueError, match=r"summarize: .*conv1 \(Conv2d\).*3 channels"):
        summarize(model, (1, 8, 8))
    assert all(m.training for m in model.modules())
    assert all("forward" not in m.__dict__ for m in model.modules())
    assert _state_equal(model.state_dict(), state)


def test_shared_layer_counts_its_parameters_once():
    init.manual_seed(0)
    shared = Linear(4, 4)
    model = Sequential(Flatten(), shared, ReLU(), shared)
    s = summarize(model, (4, 1, 1))
    assert [r.name for r in s.rows] == ["0", "1", "2", "1"]
    assert [r.repeat for r in s.rows] == [False, False, False, True]
    assert s.total_params == 4 * 4 + 4 == sum(r.params for r in s.rows)
    assert s.rows[3].flops == s.rows[1].flops == 2 * 4 * 4 + 4


def test_unlisted_and_uncalled():
    class Skips(Module):
        def __init__(self):
            super().__init__()
            self.used = Linear(3, 2)
            self.unused = Linear(3, 5)

        def forward(self, x):
            return self.used.forward(x.reshape(x.shape[0], -1))

    m = Skips()
    s = summarize(m, (3, 1, 1))
    assert s.not_called == ["unused"]
    assert s.unlisted_params == 3 * 5 + 5
    assert s.total_params == count_parameters(m)
    assert "not called by the forward: unused" in str(s)


# ----------------------------------------------------------------------------------------- the API
def test_module_summary_prints_and_returns(capsys):
    init.manual_seed(0)
    model = build_model("tiny", pool="max", width=0.25)
    s = model.summary((3, 16, 16))
    assert isinstance(s, Summary)
    out = capsys.readouterr().out
    assert out.strip() == str(s).strip()
    header = out.splitlines()[0].split()
    assert header == ["layer", "(type)", "output", "shape", "params", "FLOPs"]
    assert any(line.startswith("conv1 (Conv2d)") for line in out.splitlines())


def test_to_dict_is_json():
    init.manual_seed(0)
    model = build_model("resnet20", pool="gfgp-local", width=0.25)
    s = summarize(model, (3, 16, 16))
    d = json.loads(json.dumps(s.to_dict(), allow_nan=False))
    assert d["totals"]["params"] == count_parameters(model)
    assert d["totals"]["flops_per_sample"] == s.flops
    assert len(d["layers"]) == len(s.rows) and d["input_shape"] == [1, 3, 16, 16]


def test_bad_arguments():
    init.manual_seed(0)
    model = build_model("tiny", pool="max", width=0.25)
    for bad in [(3, 32), (0, 32, 32), (3, 32.0, 32), "3,32,32", (True, 3, 8, 8)]:
        with pytest.raises(ValueError, match="input_shape"):
            summarize(model, bad)
    with pytest.raises(TypeError, match="dtype: expected the model's parameter dtype float32, got float64"):
        summarize(model, (3, 8, 8), dtype=np.float64)
    with pytest.raises(TypeError, match="dtype"):
        summarize(model, (3, 8, 8), dtype=np.int32)
    with pytest.raises(TypeError, match="model"):
        summarize("tiny", (3, 8, 8))
    s = summarize(model.to(dtype=np.float64), (3, 8, 8), dtype=np.float64)
    assert s.param_bytes == 8 * count_parameters(model)


# ---------------------------------------------------------------------------------------- the CLI
def _parser():
    p = argparse.ArgumentParser(prog="minignn")
    add_parser(p.add_subparsers(dest="command"))
    return p


def test_cli_table(capsys):
    args = _parser().parse_args(["summary", "--width", "0.25", "--pool", "max"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "layer (type)" in out and "conv1 (Conv2d)" in out and "fc (Linear)" in out
    init.manual_seed(0)
    n = count_parameters(build_model("tiny", pool="max", width=0.25))
    assert f"total: {n:,} parameters" in out


def test_cli_json(capsys):
    args = _parser().parse_args(["summary", "--model", "resnet20", "--width", "0.25", "--pool", "gfgp",
                                 "--pool-opt", "stat=max", "--num-classes", "5", "--input-shape", "3,16,16",
                                 "--json"])
    assert args.func(args) == 0
    d = json.loads(capsys.readouterr().out)
    init.manual_seed(0)
    model = build_model("resnet20", pool="gfgp", width=0.25, num_classes=5, stat="max")
    assert d["totals"]["params"] == count_parameters(model)
    assert d["output_shape"] == [1, 5] and d["input_shape"] == [1, 3, 16, 16]
    assert d["pool_kw"] == {"stat": "max"} and d["totals"]["flops_per_sample"] > 0


@pytest.mark.parametrize("bad", ["3,x,32", "0,32,32", "3,32", "3,32,32,32,1", ""])
def test_cli_bad_input_shape(bad, capsys):
    with pytest.raises(SystemExit) as e:
        _parser().parse_args(["summary", "--input-shape", bad])
    assert e.value.code == 2
    assert "--input-shape" in capsys.readouterr().err


def test_cli_errors_name_the_flag():
    from minignn.cli import UsageError
    p = _parser()
    args = p.parse_args(["summary", "--input-shape", "1,32,32"])     # tiny wants 3 channels
    with pytest.raises(UsageError, match="--input-shape 1,32,32: .*conv1"):
        args.func(args)
    args = p.parse_args(["summary", "--model", "vgg11", "--width", "0.0625", "--input-shape", "3,8,8"])
    with pytest.raises(UsageError, match="--input-shape 3,8,8"):      # five 2x2 pools need 32 pixels
        args.func(args)
    args = p.parse_args(["summary", "--pool-opt", "nope=1"])
    with pytest.raises(UsageError, match="--pool-opt nope"):
        args.func(args)
    args = p.parse_args(["summary", "--pool-opt", "stat=median"])
    with pytest.raises(UsageError, match="--pool-opt stat='median'"):
        args.func(args)
    args.input_shape, args.pool_opt = "3,y,3", []                     # a Namespace built by hand
    with pytest.raises(UsageError, match="--input-shape"):
        args.func(args)
