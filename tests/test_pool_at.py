"""--pool-at: a pooling at some local pooling layers only, max pooling (or --other-pool) elsewhere."""
import json
import subprocess
import sys

import numpy as np
import pytest

import minignn
from minignn import init
from minignn.layers import MaxEntPool2d, MaxPool2d
from minignn.layers.pooling import AvgPool2d
from minignn.models import build_model, local_pools
from minignn.train import TrainConfig, train


def _kinds(model):
    return [type(m).__name__ for _, m in local_pools(model)]


@pytest.mark.parametrize("name, at, kinds", [
    ("tiny", [2, 3], ["MaxPool2d", "MaxEntPool2d", "MaxEntPool2d"]),
    ("vgg11", [1, 5], ["MaxEntPool2d", "MaxPool2d", "MaxPool2d", "MaxPool2d", "MaxEntPool2d"]),
    ("resnet20", [1], ["MaxEntPool2d", "MaxPool2d"]),
])
def test_pool_at_puts_the_pool_at_those_layers_only(name, at, kinds):
    init.manual_seed(0)
    model = build_model(name, "gfgp", width=0.25, pool_at=at)
    assert _kinds(model) == kinds
    assert model.build_spec["pool_at"] == at and model.build_spec["other_pool"] == "max"
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    y = model.forward(x)
    assert y.shape == (2, 10) and np.isfinite(model.backward(np.ones_like(y))).all()


def test_the_other_layers_keep_the_all_pool_models_weights_and_order():
    init.manual_seed(3)
    full = build_model("tiny", "gfgp", width=0.5)
    init.manual_seed(3)
    part = build_model("tiny", "gfgp", width=0.5, pool_at=[2], other_pool="avg")
    assert list(part._modules) == list(full._modules)  # the children keep their order
    assert isinstance(part.pool1, AvgPool2d) and isinstance(part.pool2, MaxEntPool2d)
    fs, ps = full.state_dict(), part.state_dict()
    assert set(ps) < set(fs)                    # the other layers' GFGP weights are gone
    for k in ps:
        np.testing.assert_array_equal(ps[k], fs[k])


def test_a_saved_model_with_pool_at_loads_as_it_was(tmp_path):
    init.manual_seed(1)
    model = build_model("tiny", "gfgp", width=0.25, pool_at=[3]).eval()
    path = minignn.save(model, str(tmp_path / "m.npz"))
    back = minignn.load(path)
    assert _kinds(back) == ["MaxPool2d", "MaxPool2d", "MaxEntPool2d"]
    x = np.random.default_rng(1).standard_normal((3, 3, 32, 32)).astype(np.float32)
    np.testing.assert_array_equal(back.forward(x), model.forward(x))


@pytest.mark.parametrize("kw, match", [
    (dict(pool_at=[0]), r"pool_at: expected a non-empty list of pooling-layer numbers >= 1, got \[0\]"),
    (dict(pool_at="2"), "pool_at: expected a list of pooling-layer numbers"),
    (dict(pool_at=[2, 2]), "pool_at: expected distinct layer numbers"),
    (dict(pool_at=[]), "pool_at: expected a non-empty list"),
    (dict(pool_at=[4]), r"pool_at: expected layer numbers in 1..3 \(tiny has 3 local pooling layers\), got \[4\]"),
    (dict(pool_at=[1], other_pool="nope"), "other_pool: expected one of"),
])
def test_bad_pool_at_is_named(kw, match):
    with pytest.raises(ValueError, match=match):
        build_model("tiny", "gfgp", width=0.25, **kw)


def test_train_config_checks_and_old_configs_load():
    with pytest.raises(ValueError, match="pool_at: expected distinct"):
        TrainConfig(pool_at=[1, 1]).validate()
    with pytest.raises(ValueError, match="other_pool: expected one of"):
        TrainConfig(other_pool="median").validate()
    old = TrainConfig().to_dict()
    del old["pool_at"], old["other_pool"]   # a config.json written before these settings
    c = TrainConfig.from_dict(old).validate()
    assert c.pool_at is None and c.other_pool == "max"


def test_a_run_with_pool_at_trains_resumes_and_records_it(tmp_path):
    out = str(tmp_path / "run")
    cfg = TrainConfig(dataset="synthetic", limit_train=64, limit_test=32, epochs=2, batch_size=32, width=0.25,
                      pool="gfgp", pool_at=[3])
    train(cfg, out=out, progress=False, plots=False, log=lambda s: None)
    saved = json.load(open(f"{out}/config.json"))
    assert saved["pool_at"] == [3] and saved["other_pool"] == "max"
    lam = json.loads(open(f"{out}/metrics.jsonl").readline())["lam"]
    assert list(lam) == ["pool3"]                # the only max-entropy layer records lam
    assert _kinds(minignn.load(out)) == ["MaxPool2d", "MaxPool2d", "MaxEntPool2d"]


def test_the_cli_flags(tmp_path):
    run = lambda *a: subprocess.run([sys.executable, "-m", "minignn", "train", *a], capture_output=True, text=True)
    r = run("--pool", "gfgp", "--pool-at", "3,1", "--other-pool", "avg", "--print-config")
    assert r.returncode == 0, r.stderr
    cfg = json.loads(r.stdout)
    assert cfg["pool_at"] == [1, 3] and cfg["other_pool"] == "avg"
    r = run("--model", "resnet20", "--pool", "gfgp", "--pool-at", "3", "--print-config")
    assert r.returncode == 2 and "--pool-at: pool_at: expected layer numbers in 1..2 (resnet20 has 2" in r.stderr
    r = run("--pool-at", "0,x")
    assert r.returncode == 2 and "expected distinct layer numbers >= 1 as I,J,..., got '0,x'" in r.stderr
