"""Pooling diagnostics (lam, rho, a, gate, p, gamma, alpha, logit): found in a model, recorded over
an evaluation (mean, std, a sample), written by a training run (metrics, <name>.npz, <name>.png)
and printed by ``minignn eval``."""
import csv
import io
import json
import math
import os

import numpy as np
import pytest

from minignn.cli import main
from minignn.layers import POOLINGS
from minignn.models import build_model, diagnostic_layers, diagnostic_names
from minignn.module import Module
from minignn.train import Trainer, TrainConfig, _DiagnosticRecorder, run_files

PNG = b"\x89PNG\r\n\x1a\n"


def test_diagnostic_names_are_the_registry_union():
    names = diagnostic_names()
    assert names == ("lam", "rho", "a", "gate", "p", "gamma", "alpha", "logit", "eta")
    assert set(names) == {d for spec in POOLINGS.values() for d in spec.diagnostics}
    assert {"gate.npz", "gate.png", "logit.npz", "lam.png"} <= set(run_files())


@pytest.mark.parametrize("pool", list(POOLINGS))
def test_each_pooling_layer_is_found_with_its_diagnostics(pool):
    found = diagnostic_layers(build_model("tiny", pool=pool, width=0.25))
    diagnostics = POOLINGS[pool].diagnostics
    if diagnostics:
        assert [(n, d) for n, _, d in found] == [(f"pool{i}", diagnostics) for i in (1, 2, 3)]
    else:
        assert found == []


class _Fake(Module):
    def __init__(self):
        super().__init__()
        self.last_gate = None
        self.last_rho = None  # stays None: never recorded


def test_recorder_mean_std_and_sample():
    rng = np.random.default_rng(0)
    m = _Fake()
    batches = [rng.standard_normal((n, 3, 4)) for n in (5, 5, 2)]
    rec = _DiagnosticRecorder([("pool1", m, ("gate", "rho"))], num_batches=3, cap=30)
    for i, v in enumerate(batches):
        m.last_gate = v.astype(np.float32)
        rec.record(i)
    every = np.concatenate([b.astype(np.float32).astype(np.float64).ravel() for b in batches])
    st = rec.summary()
    assert list(st) == ["gate"] and list(st["gate"]) == ["pool1"]
    assert st["gate"]["pool1"]["mean"] == pytest.approx(every.mean(), rel=1e-12)
    assert st["gate"]["pool1"]["std"] == pytest.approx(every.std(), rel=1e-9)
    sample = rec.values()["gate"]["pool1"]
    assert sample.dtype == np.float32 and 0 < sample.size <= 30
    assert np.all(np.isin(sample, every.astype(np.float32)))  # drawn from the values, not made up


def _cfg(pool, **kw):
    return TrainConfig(**{"dataset": "synthetic", "limit_train": 32, "limit_test": 32, "batch_size": 16,
                          "width": 0.25, "epochs": 1, "pool": pool, **kw})


def _per_channel(pool, model):
    """The diagnostics that are per-channel parameters in eval: their exact values per layer."""
    out = {}
    for name, m, _ in diagnostic_layers(model):
        if pool == "mixed":
            out.setdefault("a", {})[name] = 1.0 / (1.0 + np.exp(-m.theta.data.astype(np.float64)))
        elif pool == "lppool":
            out.setdefault("p", {})[name] = np.asarray(m.current_p(), dtype=np.float64)
    return out


@pytest.mark.parametrize("pool", ["mixed", "gated", "gfgp-gated", "lppool", "dpp", "gfgp-dpp", "lip",
                                  "gaussian"])
def test_training_records_the_pooling_diagnostics(pool, tmp_path):
    out = tmp_path / "run"
    t = Trainer(_cfg(pool), out=str(out), progress=False, plots=True, log=lambda m: None)
    t.run()
    rec = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    rows = list(csv.DictReader(io.StringIO((out / "metrics.csv").read_text())))
    for d in POOLINGS[pool].diagnostics:
        assert list(rec[d]) == ["pool1", "pool2", "pool3"], d
        for layer, st in rec[d].items():
            assert math.isfinite(st["mean"]) and st["std"] >= 0
            assert float(rows[0][f"{d}/{layer}/mean"]) == st["mean"]
        with np.load(out / f"{d}.npz") as z:
            assert list(z.files) == ["pool1", "pool2", "pool3"]
            assert all(z[k].ndim == 1 and z[k].size and np.all(np.isfinite(z[k])) for k in z.files)
        assert (out / f"{d}.png").read_bytes()[:8] == PNG
    assert not (out / "lam.npz").exists() and "lam" not in rec
    for d, layers in _per_channel(pool, t.model).items():  # a parameter: the stats are its own over channels
        for layer, v in layers.items():
            assert rec[d][layer]["mean"] == pytest.approx(v.mean(), rel=1e-6)
            assert rec[d][layer]["std"] == pytest.approx(v.std(), rel=1e-4, abs=1e-7)
    if pool == "gated":  # a gate per window in [0, 1]
        with np.load(out / "gate.npz") as z:
            assert all(np.all((z[k] >= 0) & (z[k] <= 1)) for k in z.files)


def test_eval_prints_the_diagnostics_and_overwrite_clears_them(tmp_path, capsys):
    out = tmp_path / "run"
    Trainer(_cfg("gated"), out=str(out), progress=False, plots=False, log=lambda m: None).run()
    rec = json.loads((out / "metrics.jsonl").read_text())
    capsys.readouterr()
    assert main(["eval", str(out / "checkpoint.npz"), "--json", "--no-progress", "--batch-size", "16"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["gate"] == rec["gate"]  # the same test set, the same weights
    assert main(["eval", str(out), "--no-progress", "--batch-size", "16"]) == 0
    text = capsys.readouterr().out
    assert f"gate pool2: mean {rec['gate']['pool2']['mean']:.4g}" in text
    Trainer(_cfg("max"), out=str(out), overwrite=True, progress=False, plots=False, log=lambda m: None).run()
    assert not (out / "gate.npz").exists(), "an overwritten run's diagnostics must not stay behind"


def test_diagnostic_figure_labels_each_panel():
    from minignn import plots
    values = {"pool1": np.linspace(0, 1, 50), "pool2": np.full(10, 0.5)}
    fig = plots.diagnostic_figure(values, "gate", title="t")
    axes = [a for a in fig.axes if a.axison]
    assert len(axes) == 2 and all(a.get_xlabel() == "gate" for a in axes)
    assert "max (1) against average (0)" in fig._suptitle.get_text()
    with pytest.raises(ValueError, match="values: expected at least one pooling layer of p"):
        plots.diagnostic_figure({}, "p")
