"""minignn analyze: Fisher score and CCA against hand-computed cases, the histograms against
np.histogram of the model's own lam, and the command end to end."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from minignn import analyze as an
from minignn.checkpoint import load_checkpoint, save_checkpoint
from minignn.data import BatchLoader, load_dataset
from minignn.train import TrainConfig, model_from_config, train


def test_fisher_score_by_hand():
    # class 0 at (+-1, +-1) around (0, 0), class 1 the same around (4, 0): S_W = diag(8, 8),
    # S_B = 4 (2, 0)(2, 0)^T * 2 = diag(32, 0): the top eigenvalue of S_W^-1 S_B is 4
    sq = np.array([[1, 1], [1, -1], [-1, 1], [-1, -1]], float)
    x = np.vstack([sq, sq + [4, 0]])
    h = np.column_stack([x, 1 - x.sum(axis=1)])     # a third, redundant bin, dropped
    y = np.array([0] * 4 + [1] * 4)
    assert an.fisher_score(h, y) == pytest.approx(4.0)
    # one direction carries no class information: rotating the features changes nothing
    c, s = math.cos(0.3), math.sin(0.3)
    xr = x @ np.array([[c, -s], [s, c]])
    assert an.fisher_score(np.column_stack([xr, np.zeros(8)]), y) == pytest.approx(4.0)
    # the same points labelled so that the class means coincide: no discrimination
    assert an.fisher_score(h, np.array([0, 1, 1, 0, 0, 1, 1, 0])) == pytest.approx(0.0, abs=1e-12)
    assert an.fisher_score(h, np.zeros(8)) is None                      # one class
    assert an.fisher_score(np.tile([0.2, 0.3, 0.5], (8, 1)), y) is None   # no variation at all


def test_first_canonical_correlation_by_hand():
    hadamard = np.array([[1, 1, 1, 1, 1, 1, 1, 1], [1, -1, 1, -1, 1, -1, 1, -1], [1, 1, -1, -1, 1, 1, -1, -1],
                         [1, -1, -1, 1, 1, -1, -1, 1], [1, 1, 1, 1, -1, -1, -1, -1]], float).T
    e1, e2, e3, e4 = hadamard[:, 1], hadamard[:, 2], hadamard[:, 3], hadamard[:, 4]  # orthogonal, mean 0
    theta = 0.7
    x = np.column_stack([e1, e2, np.zeros(8)])
    y = np.column_stack([math.cos(theta) * e1 + math.sin(theta) * e3, e4, np.zeros(8)])
    # span{e1, e2} and span{cos e1 + sin e3, e4}: the smallest principal angle is theta
    assert an.first_canonical_correlation(x, y) == pytest.approx(math.cos(theta), abs=1e-12)
    assert an.first_canonical_correlation(x, x) == pytest.approx(1.0)
    assert an.first_canonical_correlation(x, 3 * x[:, [1, 0, 2]] + 5) == pytest.approx(1.0)  # affine invariant
    assert an.first_canonical_correlation(x, np.column_stack([e3, e4, np.zeros(8)])) == pytest.approx(0, abs=1e-12)
    assert an.first_canonical_correlation(x, np.ones((8, 3))) is None


def test_simplex_histograms_by_hand():
    v = np.array([[0.0, 0.2, 0.5, 0.9, 1.0, 1.2, -3.0]])
    np.testing.assert_allclose(an.simplex_histograms(v, 0.0, 1.0), [[3 / 7, 1 / 7, 3 / 7]])
    np.testing.assert_allclose(an.simplex_histograms(np.ones((2, 4)), 1.0, 1.0), [[0, 1, 0], [0, 1, 0]])


@pytest.fixture(scope="module")
def gfgp_run(tmp_path_factory):
    """A short GFGP run on synthetic data whose mapping weights are then scaled up, so that lam
    spreads over [0, 1] as in a trained network."""
    out = str(tmp_path_factory.mktemp("analyze") / "run")
    cfg = TrainConfig(dataset="synthetic", limit_train=128, limit_test=64, epochs=1, batch_size=32, width=0.25,
                      pool="gfgp", augment=False)
    train(cfg, out=out, progress=False, plots=False, log=lambda s: None)
    s = load_checkpoint(os.path.join(out, "best.npz"))
    for k in s["model"]:
        if k.endswith("V_lam"):
            s["model"][k] = s["model"][k] * 80
    save_checkpoint(os.path.join(out, "best.npz"), s)
    return out, cfg


def test_the_histograms_are_those_of_the_models_own_lam(gfgp_run, tmp_path):
    run, cfg = gfgp_run
    doc = an.analyze(run, out=str(tmp_path), limit=90, batch_size=32, log=lambda s: None)
    assert doc["images"] == 90 and set(doc["diagnostics"]) == {"lam"}
    h = np.load(tmp_path / "histograms.npz")
    # recompute: the model's lam per image, binned by np.histogram over [0, 1]
    state = load_checkpoint(os.path.join(run, "best.npz"))
    model = model_from_config(TrainConfig.from_dict(state["config"]), 10)
    model.load_state_dict(state["model"])
    model.eval()
    ds = load_dataset("synthetic").limit(None, 90)
    loader = BatchLoader(ds.x_test, ds.y_test, 90, train=False, augment=False, mean=ds.mean, std=ds.std)
    (xb, yb), = list(loader.batches(0))
    model.forward(xb)
    e = doc["diagnostics"]["lam"]
    assert [la["name"] for la in e["layers"]] == ["pool1", "pool2", "pool3"]
    for la in e["layers"]:
        lam = np.asarray(getattr(model, la["name"]).last_lam)
        ref = np.stack([np.histogram(row, bins=3, range=(0.0, 1.0))[0] / row.size for row in lam])
        np.testing.assert_allclose(h[f"lam/{la['name']}"], ref, atol=1e-7)
        assert la["range"] == [0.0, 1.0] and la["range_from"] == "activation"
        assert la["fisher"] == pytest.approx(an.fisher_score(ref, yb), rel=1e-9)
        assert 0 < la["fisher"]                            # lam varies per image here
    np.testing.assert_array_equal(h["labels"], yb)
    cca = np.array(e["cca"], dtype=float)
    np.testing.assert_allclose(cca, cca.T)
    np.testing.assert_allclose(np.diag(cca), 1.0)
    assert cca[0, 1] == pytest.approx(an.first_canonical_correlation(h["lam/pool1"], h["lam/pool2"]))
    md = (tmp_path / "analysis.md").read_text()
    assert "Fisher score (Table 5a)" in md and "0.1395" in md and "(0.4400)" in md
    for f in ("analysis.json", "fig2-lam.png", "fig3-lam.png"):
        assert (tmp_path / f).stat().st_size > 500
    i, j = doc["diagnostics"]["lam"]["fig3_images"]
    assert i != j and yb[i] == yb[j]


def test_the_command(gfgp_run, tmp_path):
    run, _ = gfgp_run
    r = subprocess.run([sys.executable, "-m", "minignn", "analyze", run, "--limit", "40", "--no-plots", "--out",
                        str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "lam: Fisher score per layer: pool1 " in r.stdout and "pool1-pool2 " in r.stdout
    assert json.load(open(tmp_path / "analysis.json"))["images"] == 40
    assert not (tmp_path / "fig2-lam.png").exists()


@pytest.mark.parametrize("pool, match", [("max", "keeps no parameter to analyze"),
                                         ("maxent-param", "no pooling parameter of this model .* varies per image")])
def test_a_run_without_per_image_parameters_is_refused(pool, match, tmp_path):
    cfg = TrainConfig(dataset="synthetic", limit_train=32, limit_test=16, epochs=1, batch_size=16, width=0.25,
                      pool=pool)
    train(cfg, out=str(tmp_path / "r"), progress=False, plots=False, log=lambda s: None)
    with pytest.raises(ValueError, match=match):
        an.analyze(str(tmp_path / "r"), limit=16, log=lambda s: None)
