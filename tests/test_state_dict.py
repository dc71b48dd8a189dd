"""Module.load_state_dict: every entry is checked (key, dtype, shape, finite values) before any is
written, errors name the key; and `minignn eval` of a checkpoint with a NaN weight says so."""
import os
import subprocess
import sys

import numpy as np
import pytest

from minignn import Sequential
from minignn.layers import BatchNorm2d, Conv2d, Flatten, GlobalAvgPool2d, Linear


def _model(seed):
    rng = np.random.default_rng(seed)
    return Sequential(Conv2d(3, 4, 3, padding=1, rng=rng), BatchNorm2d(4), GlobalAvgPool2d(), Flatten(),
                      Linear(4, 2, rng=rng))


def _snapshot(m):
    return {k: v.copy() for k, v in m.state_dict().items()}


def _assert_unchanged(m, before):
    after = m.state_dict()
    for k, v in before.items():
        np.testing.assert_array_equal(after[k], v, err_msg=f"{k} was written by a load that raised")


def test_roundtrip_and_cast_to_the_targets_dtype():
    a, b = _model(1), _model(2)
    state = {k: v.astype(np.float64) for k, v in a.state_dict().items()}  # a float64 state into float32
    state["1.running_var"] = np.arange(1, 5)  # integers load into a float buffer
    b.load_state_dict(state)
    for k, v in b.state_dict().items():
        assert v.dtype == np.float32
        np.testing.assert_array_equal(v, state[k].astype(np.float32))


def _last_key(state):
    return list(state)[-1]


@pytest.mark.parametrize("kind", ["shape", "string", "bool", "complex", "object", "ragged", "nan", "inf", "-inf",
                                  "overflow"])
def test_bad_entry_is_rejected_by_name_before_anything_is_written(kind):
    """The bad entry is the *last* key, so a loader that assigns as it validates has already
    overwritten every other tensor when it raises."""
    src, dst = _model(1), _model(2)
    state = src.state_dict()
    key = _last_key(state)  # a buffer: 1.running_var (4,)
    good = state[key]
    before = _snapshot(dst)
    if kind == "shape":
        state[key], msg = np.ones(5, np.float32), r"expected shape \(4,\), got \(5,\)"
    elif kind == "string":
        state[key] = np.array(["a", "b", "c", "d"])
        msg = r"expected an integer or float array \(to load as float32\), got dtype <U1"
    elif kind == "bool":
        state[key], msg = np.ones(4, bool), "got dtype bool"
    elif kind == "complex":
        state[key], msg = good + 1j, "got dtype complex"
    elif kind == "object":
        state[key], msg = None, "got dtype object"
    elif kind == "ragged":
        state[key], msg = [[1.0], [1.0, 2.0]], "not an array"
    elif kind in ("nan", "inf", "-inf"):
        bad = good.copy()
        bad[2] = float(kind)
        state[key] = bad
        counts = "1 NaN and 0 inf" if kind == "nan" else "0 NaN and 1 inf"
        msg = rf"expected finite values, got non-finite values: {counts} of 4"
    else:  # finite float64 beyond float32's range
        state[key] = good.astype(np.float64)
        state[key][0] = 1e300
        msg = r"non-finite values after casting from float64 .*: 0 NaN and 1 inf"
    with pytest.raises(ValueError, match=rf"load_state_dict: {key.replace('.', '[.]')}: (.*)?{msg}"):
        dst.load_state_dict(state)
    _assert_unchanged(dst, before)


def test_non_finite_parameter_names_the_parameter():
    src, dst = _model(1), _model(2)
    state = src.state_dict()
    state["0.weight"][1, 2, 0, 1] = np.nan
    with pytest.raises(ValueError, match=r"load_state_dict: 0\.weight: expected finite values"):
        dst.load_state_dict(state)


def test_strict_false_still_checks_every_entry():
    src, dst = _model(1), _model(2)
    state = src.state_dict()
    state["extra"] = np.ones(3)
    state["4.bias"] = np.full(2, np.inf, np.float32)
    before = _snapshot(dst)
    with pytest.raises(ValueError, match=r"4\.bias: expected finite"):
        dst.load_state_dict(state, strict=False)
    _assert_unchanged(dst, before)
    state["4.bias"] = np.zeros(2, np.float32)
    dst.load_state_dict(state, strict=False)  # the unexpected key is ignored
    np.testing.assert_array_equal(dst[4].bias.data, 0)


def test_state_must_be_a_mapping():
    with pytest.raises(TypeError, match="state: expected a mapping"):
        _model(0).load_state_dict([np.ones(3)])


def eval_checkpoint(tmp_path, pool, edit):
    """`minignn eval` (in a subprocess, as a user runs it) of a best.npz-style checkpoint of a tiny
    model on the synthetic set whose state ``edit(state)`` has changed; returns (path, result)."""
    from minignn.checkpoint import save_checkpoint
    from minignn.train import TrainConfig, model_from_config
    config = TrainConfig(model="tiny", pool=pool, dataset="synthetic", width=0.25, limit_test=16, download=False)
    state = model_from_config(config, 10).state_dict()
    edit(state)
    path = str(tmp_path / "best.npz")
    save_checkpoint(path, {"kind": "weights", "config": config.to_dict(), "model": state, "num_classes": 10})
    env = {k: v for k, v in os.environ.items() if k != "MINIGNN_DEBUG"}
    out = subprocess.run([sys.executable, "-c", "import sys; from minignn.cli import main; sys.exit(main())",
                          "eval", path, "--no-progress", "--batch-size", "16"],
                         env=env, capture_output=True, text=True, timeout=300)
    return path, out


def test_cli_eval_of_a_checkpoint_with_a_nan_weight_names_the_tensor(tmp_path):
    """`minignn eval` used to run the forward and blame maxent's lam; it must say which weight is
    non-finite (a GFGP model, whose pooling would otherwise meet the NaN first)."""
    _, out = eval_checkpoint(tmp_path, "gfgp", lambda state: state["conv2.weight"].__setitem__((3, 1, 0, 2), np.nan))
    assert out.returncode == 2, out.stdout + out.stderr
    assert "minignn eval: error: load_state_dict: conv2.weight: expected finite values, got non-finite" in out.stderr, \
        out.stderr
    assert "lam" not in out.stderr, out.stderr


def test_cli_eval_of_a_checkpoint_with_a_missing_tensor_is_a_one_line_error(tmp_path):
    """A checkpoint that lacks a tensor its config's model has: `minignn eval` names the file and
    the key in one error line (status 2), not a KeyError traceback."""
    path, out = eval_checkpoint(tmp_path, "max", lambda state: state.pop("conv2.weight"))
    assert out.returncode == 2, out.stdout + out.stderr
    assert f"minignn eval: error: {path!r}: load_state_dict: missing keys ['conv2.weight']" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
