"""minignn study: the studies' variants, the results arithmetic on hand-made runs, and whole studies
end to end (two jobs, interrupted and re-run, and on a Dask LocalCluster)."""
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest

from minignn import study
from minignn.layers.registry import POOLINGS
from minignn.train import TrainConfig

SMALL = ["--dataset", "synthetic", "--limit-train", "256", "--limit-test", "128", "--epochs", "2",
         "--width", "0.25", "--no-augment"]
SMALL_CONFIG = TrainConfig(dataset="synthetic", limit_train=256, limit_test=128, epochs=2, width=0.25, augment=False)


def _labels(name, model="tiny"):
    (st,) = study.get_studies(name, model)
    return [v.label for v in st.variants]


def test_the_studies_hold_the_papers_variants():
    assert _labels("table1a") == ["max", "maxent (lam = 1)", "maxent-param", "gfgp"]
    assert [v.settings()["pool_kw"] for v in study.get_studies("table1c")[0].variants] == [
        {}, {"prior": "param"}, {"prior": "predicted"}]
    assert [v.run_id for v in study.get_studies("table2b")[0].variants] == [
        "gfgp", "gfgp.mlp=slp", "gfgp.hidden=0.25", "gfgp.hidden=1.0"]
    assert [v.settings()["pool_kw"].get("activation") for v in study.get_studies("table2c")[0].variants] == [
        None, "softplus", "tanh", "identity"]
    assert [v.settings()["pool_kw"].get("stat") for v in study.get_studies("table2a")[0].variants] == [
        None, "avg+std", "max"]
    assert _labels("table6") == ["max"] + [n for n in POOLINGS if n != "max"]
    for name in study.STUDIES:   # every baseline is one of its study's variants
        (st,) = study.get_studies(name)
        assert st.baseline == st.variants[0].label


def test_table4_follows_the_models_pooling_layers():
    assert _labels("table4", "tiny") == ["max everywhere", "gfgp at 1", "gfgp at 2", "gfgp at 3", "gfgp at 2-3",
                                         "gfgp at all (3)"]
    assert [v.pool_at for v in study.get_studies("table4", "vgg11")[0].variants] == [
        None, (1,), (2,), (3,), (4,), (5,), (4, 5), (3, 4, 5), (2, 3, 4, 5), None]
    assert _labels("table4", "resnet20") == ["max everywhere", "gfgp at 1", "gfgp at 2", "gfgp at all (2)"]


def test_all_trains_a_run_that_studies_share_once():
    studies = study.get_studies("all")
    assert [s.name for s in studies] == list(study.STUDIES)
    runs, configs = study._plan(studies, [0, 1], SMALL_CONFIG)
    ids = [v.run_id for v, s in runs if s == 0]
    assert len(ids) == len(set(ids)) and ids.count("gfgp") == 1
    total = sum(len(s.variants) for s in studies)
    assert len(set(ids)) < total  # gfgp with its defaults is in table1a, 1b, 1c, 2a, 2b, 2c, 4 and 6
    assert configs[("gfgp.stat=max", 1)]["pool_kw"] == {"stat": "max"} and configs[("gfgp.stat=max", 1)]["seed"] == 1


def test_unknown_study_and_bad_seeds_are_named(tmp_path):
    with pytest.raises(ValueError, match="study: expected one of .*table1a"):
        study.get_studies("table9")
    with pytest.raises(ValueError, match="seeds: expected distinct"):
        study.run_study("table1b", SMALL_CONFIG, seeds=[0, 0], out=str(tmp_path))


def _fake_run(out, variant, seed, config, accs):
    """A finished run folder as the trainer leaves it: config.json, metrics.jsonl, summary.json."""
    path = study.run_dir(out, variant, seed)
    os.makedirs(path)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)
    with open(os.path.join(path, "metrics.jsonl"), "w") as f:
        for e, a in enumerate(accs, start=1):
            f.write(json.dumps({"epoch": e, "test_acc": a, "epoch_time": 10.0}) + "\n")
    with open(os.path.join(path, "summary.json"), "w") as f:
        json.dump({"final_test_acc": accs[-1]}, f)


def test_results_by_hand_on_hand_made_runs(tmp_path):
    out = str(tmp_path)
    (st,) = study.get_studies("table1b")
    cfg = dataclasses_replace(SMALL_CONFIG, epochs=2)
    runs, configs = study._plan([st], [0, 1, 2], cfg)
    final = {("gfgp", 0): 0.70, ("gfgp", 1): 0.72, ("gfgp", 2): 0.71,
             ("gfgp-local", 0): 0.73, ("gfgp-local", 1): 0.76}   # seed 2 of gfgp-local unfinished
    for (v, s) in runs:
        if (v.run_id, s) in final:
            _fake_run(out, v, s, configs[(v.run_id, s)], [0.5, final[(v.run_id, s)]])
    tables = study.results_of([st], [0, 1, 2], out, configs)
    base, local = tables[0]["variants"]
    t2 = 0.95 / math.sqrt(2 * 0.975 * 0.025)        # t(0.975, 2)
    assert base["n"] == 3 and base["mean"] == pytest.approx(71.0)
    # sd of 70, 72, 71 is 1: 71 +- t2 / sqrt(3)
    assert (base["low"], base["high"]) == pytest.approx((71 - t2 / math.sqrt(3), 71 + t2 / math.sqrt(3)), abs=1e-4)
    assert [r["test_acc"] for r in local["runs"]] == [73.0, 76.0, None] and local["n"] == 2
    t1 = math.tan(math.pi * 0.475)                   # t(0.975, 1); sd of 73, 76 is 3/sqrt(2)
    assert (local["low"], local["high"]) == pytest.approx((74.5 - t1 * 1.5, 74.5 + t1 * 1.5), abs=1e-4)
    # paired over seeds 0 and 1: differences 3 and 4
    assert local["diff"]["method"] == "paired" and local["diff"]["mean"] == pytest.approx(3.5)
    assert (local["diff"]["low"], local["diff"]["high"]) == pytest.approx((3.5 - t1 * 0.5, 3.5 + t1 * 0.5), abs=1e-4)
    assert base["diff"] is None
    doc = {"study": "table1b", "complete": False, "tables": tables,
           "header": {"model": "tiny", "epochs": 2, "batch_size": 128, "optimizer": "sgd", "lr": 0.1,
                      "schedule": "onecycle", "weight_decay": 5e-4, "dataset": "synthetic", "limit_train": 384,
                      "limit_test": 128, "augment": False, "width": 0.25, "seeds": [0, 1, 2], "commit": "abc",
                      "machine": "m", "runs_done": 5, "run_time_s": 100.0, "wall_time_s": 5.0}}
    md = study.markdown(doc)
    assert "(incomplete)" in md and "| gfgp-local (local avg) | 2/3 | 74.50 [" in md and "73.00, 76.00, -" in md
    assert "+3.50 [" in md


def dataclasses_replace(c, **kw):
    import dataclasses
    return dataclasses.replace(c, **kw)


def test_a_run_folder_with_other_settings_is_refused(tmp_path):
    out = str(tmp_path)
    (st,) = study.get_studies("table1b")
    runs, configs = study._plan([st], [0], SMALL_CONFIG)
    v, s = runs[0]
    other = dict(configs[(v.run_id, s)], epochs=7)
    _fake_run(out, v, s, other, [0.5] * 7)
    with pytest.raises(study.StudyError, match=r"holds a run with other settings \(epochs: 7 there, 2 in this study\)"):
        study.run_study("table1b", SMALL_CONFIG, seeds=[0], out=out)


def _cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "minignn", "study", *args], capture_output=True, text=True,
                          timeout=900, **kw)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("study") / "a")
    r = _cli("table1b", "--seeds", "2", "--jobs", "2", "--out", out, *SMALL)
    assert r.returncode == 0, r.stderr + r.stdout
    return out, r


def _tables(out):
    with open(os.path.join(out, "results.json")) as f:
        return json.load(f)["tables"]


def test_a_study_runs_end_to_end_on_two_jobs(uninterrupted):
    out, r = uninterrupted
    assert "4 runs (2 variants x 2 seeds)" in r.stdout and r.stdout.count(" finished: ") == 4
    doc = json.load(open(os.path.join(out, "results.json")))
    assert doc["complete"] and doc["header"]["seeds"] == [0, 1] and doc["header"]["runs_done"] == 4
    for v in doc["tables"][0]["variants"]:
        assert v["n"] == 2 and all(0 <= run["test_acc"] <= 100 for run in v["runs"])
        for run in v["runs"]:   # each run is an ordinary run folder, with the study's settings
            cfg = json.load(open(os.path.join(out, run["run"], "config.json")))
            assert cfg["pool"] == v["pool"] and cfg["epochs"] == 2 and cfg["seed"] == run["seed"]
    md = open(os.path.join(out, "results.md")).read()
    assert "minignn study table1b" in md and "seeds: 0, 1" in md and "commit:" in md
    assert os.path.getsize(os.path.join(out, "results.png")) > 1000
    again = _cli("table1b", "--seeds", "2", "--out", out, *SMALL)   # nothing left to do
    assert again.returncode == 0 and "4 finished, 0 to resume, 0 to start" in again.stdout
    assert _tables(out) == doc["tables"]


def test_an_interrupted_study_resumes_without_redoing_finished_runs(uninterrupted, tmp_path):
    out = str(tmp_path / "b")
    cmd = [sys.executable, "-m", "minignn", "study", "table1b", "--seeds", "2", "--jobs", "2", "--out", out, *SMALL]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    runs = os.path.join(out, "runs")
    deadline = time.time() + 600
    while time.time() < deadline and p.poll() is None:
        if os.path.isdir(runs) and any(os.path.exists(os.path.join(runs, d, "summary.json")) for d in os.listdir(runs)):
            break
        time.sleep(0.05)
    os.killpg(p.pid, signal.SIGINT)           # Ctrl-C: the study's process group (its runs have their own)
    text = p.communicate(timeout=600)[0]
    finished = {d: os.stat(os.path.join(runs, d, "summary.json")).st_mtime_ns for d in os.listdir(runs)
                if os.path.exists(os.path.join(runs, d, "summary.json"))}
    if p.returncode == 130:   # (a study that finished before the signal came has nothing to resume)
        doc = json.load(open(os.path.join(out, "results.json")))   # the results so far are written
        assert doc["complete"] is (len(finished) == 4)
    else:
        assert p.returncode == 0, text
    assert finished, text
    r = _cli("table1b", "--seeds", "2", "--jobs", "2", "--out", out, *SMALL)
    assert r.returncode == 0, r.stderr + r.stdout
    assert f"{len(finished)} finished" in r.stdout
    for d, mtime in finished.items():   # not run again
        assert os.stat(os.path.join(runs, d, "summary.json")).st_mtime_ns == mtime
        assert open(os.path.join(runs, d, "train.log")).read().count("$ ") == 1
    assert _tables(out) == _tables(uninterrupted[0])


def test_a_study_on_a_dask_local_cluster_gives_the_same_numbers(uninterrupted, tmp_path):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cl:
        doc = study.run_study("table1b", SMALL_CONFIG, seeds=[0, 1], out=str(tmp_path / "c"),
                              scheduler=cl.scheduler_address, log=lambda s: None)
    assert doc["complete"] and doc["tables"] == _tables(uninterrupted[0])


def test_a_run_another_worker_holds_is_skipped_not_trained_twice(tmp_path):
    from minignn.runlock import RunLock
    out = str(tmp_path / "d")
    (st,) = study.get_studies("table1b")
    held = study.run_dir(out, st.variants[0], 0)
    os.makedirs(held)
    lock = RunLock(held).acquire()           # as a second study's worker training this run would
    try:
        lines = []
        doc = study.run_study("table1b", SMALL_CONFIG, seeds=[0], out=out, log=lines.append)
    finally:
        lock.release()
    assert not doc["complete"] and doc["header"]["runs_done"] == 1
    assert not os.path.exists(os.path.join(held, "config.json"))     # nothing was written into it
    assert [r["test_acc"] is None for v in doc["tables"][0]["variants"] for r in v["runs"]] == [True, False]
    assert "incomplete: 1 of 2 runs finished" in lines[-1]


def test_a_run_that_cannot_start_fails_alone_and_the_study_goes_on(tmp_path, monkeypatch):
    calls = []

    def broken(config, path, config_file, threads=None):
        calls.append(path)
        raise OSError(f"[Errno 28] No space left on device: {path!r}")

    monkeypatch.setattr(study, "run_one", broken)
    with pytest.raises(study.StudyError, match=r"2 run\(s\) failed: .*exit status error \(OSError: \[Errno 28\]"):
        study.run_study("table1b", SMALL_CONFIG, seeds=[0], out=str(tmp_path), log=lambda s: None)
    assert len(calls) == 2                                    # the second run was still tried
    assert json.load(open(tmp_path / "results.json"))["complete"] is False   # and the results written
