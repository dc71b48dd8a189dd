"""The ``minignn`` command: --help everywhere, a 1-epoch run on a synthetic subset, eval of its
checkpoint, resume, and clear errors."""
import json
import os

import numpy as np
import pytest
from helpers import write_cifar10

from minignn import backend
from minignn.cli import main

QUICK = ["--dataset", "synthetic", "--limit-train", "48", "--limit-test", "32", "--batch-size", "16",
         "--width", "0.25", "--no-progress"]


@pytest.mark.parametrize("argv,expect", [
    ([], ["train", "eval", "bench"]),
    (["train"], ["--model", "--pool", "--dataset", "--data-dir", "--epochs", "--batch-size", "--lr", "--schedule",
                 "--label-smoothing", "--weight-decay", "--seed", "--device", "--out", "--resume", "--limit-train",
                 "--limit-test", "gfgp-local", "onecycle", "--overwrite", "--allow-partial-data"]),
    (["eval"], ["CHECKPOINT", "--device", "--batch-size", "--json", "--allow-partial-data"]),
    (["bench"], ["layers", "maxent", "vgg", "--repeats"]),
])
def test_help(argv, expect, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv + ["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for word in expect:
        assert word in out, f"{word!r} missing from `minignn {' '.join(argv)} --help`"


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("cli") / "run")
    rc = main(["train", *QUICK, "--epochs", "1", "--pool", "gfgp", "--out", out])
    return rc, out


def test_train_one_epoch_writes_results(trained_run):
    rc, out = trained_run
    assert rc == 0
    files = set(os.listdir(out))
    assert {"config.json", "metrics.jsonl", "checkpoint.npz", "best.npz", "summary.json", "curves.png", "lam.png",
            "lam.npz"} <= files
    for png in ("curves.png", "lam.png"):
        with open(os.path.join(out, png), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    lines = open(os.path.join(out, "metrics.jsonl")).read().splitlines()
    assert len(lines) == 1
    rec = json.loads(lines[0])
    assert rec["epoch"] == 1 and rec["step"] == 3  # 48 images / 16
    assert 0.0 <= rec["test_acc"] <= 1.0 and np.isfinite(rec["train_loss"])
    assert set(rec["lam"]) == {"pool1", "pool2", "pool3"}
    cfg = json.load(open(os.path.join(out, "config.json")))
    assert cfg["pool"] == "gfgp" and cfg["dataset"] == "synthetic" and cfg["epochs"] == 1
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert summary["final_test_acc"] == rec["test_acc"] and summary["epochs"] == 1


def test_eval_checkpoint_matches_training_metrics(trained_run, capsys):
    rc, out = trained_run
    capsys.readouterr()
    for name in ("checkpoint.npz", "best.npz"):
        assert main(["eval", os.path.join(out, name), "--json", "--no-progress", "--batch-size", "16"]) == 0
        res = json.loads(capsys.readouterr().out)
        rec = json.loads(open(os.path.join(out, "metrics.jsonl")).readline())
        assert res["images"] == 32 and res["dataset"] == "synthetic"
        assert res["test_acc"] == rec["test_acc"]
        assert res["test_loss"] == pytest.approx(rec["test_loss"], rel=1e-6)
        assert set(res["lam"]) == {"pool1", "pool2", "pool3"}
    # a run folder works too, and the plain output names the accuracy
    assert main(["eval", out, "--no-progress", "--batch-size", "16"]) == 0
    assert f"accuracy {100 * rec['test_acc']:.2f}%" in capsys.readouterr().out


def test_resume_of_finished_run_and_more_epochs(trained_run, tmp_path, capsys):
    rc, out = trained_run
    capsys.readouterr()
    assert main(["train", "--resume", out, "--no-progress", "--no-plots"]) == 0
    assert "already finished" in capsys.readouterr().out
    assert len(open(os.path.join(out, "metrics.jsonl")).read().splitlines()) == 1


def test_cli_errors(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "missing.npz")]) == 2
    err = capsys.readouterr().err
    assert "no file at" in err and "missing.npz" in err
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip file at all")
    assert main(["eval", str(bad)]) == 2
    assert "is not a minignn checkpoint: it is not an .npz archive" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--pool", "median"])
    assert "invalid choice: 'median'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--epochs", "0"])
    assert "expected an integer >= 1" in capsys.readouterr().err
    assert main(["train", *QUICK, "--pool", "max", "--pool-opt", "stat=max", "--out", str(tmp_path / "x")]) == 2
    assert "--pool-opt stat: unknown option for pool 'max', which takes no options" in capsys.readouterr().err


@pytest.mark.skipif(backend.gpu_available(), reason="a GPU is present: --device gpu is valid here")
def test_device_gpu_without_gpu_is_a_clear_error(tmp_path, capsys):
    assert main(["train", *QUICK, "--device", "gpu", "--out", str(tmp_path / "g")]) == 2
    err = capsys.readouterr().err
    assert "device='gpu'" in err and ("CuPy" in err or "CUDA" in err)


@pytest.mark.parametrize("flag,value,expect", [
    ("--lr", "inf", "expected a finite number > 0, got 'inf'"),
    ("--lr", "nan", "expected a finite number > 0, got 'nan'"),
    ("--lr", "0", "expected a finite number > 0, got '0'"),
    ("--lr", "fast", "expected a finite number > 0, got 'fast'"),
    ("--weight-decay", "nan", "expected a finite number >= 0, got 'nan'"),
    ("--weight-decay", "Infinity", "expected a finite number >= 0, got 'Infinity'"),
    ("--momentum", "inf", "expected a finite number in [0, 1), got 'inf'"),
    ("--momentum", "1", "expected a finite number in [0, 1), got '1'"),
    ("--label-smoothing", "nan", "expected a finite number in [0, 1), got 'nan'"),
    ("--width", "inf", "expected a finite number > 0, got 'inf'"),
    ("--checkpoint-every", "-1", "expected an integer >= 0, got '-1'"),
    ("--pool-opt", "lam_init=1e999", "lam_init: expected a finite number, got '1e999'"),
])
def test_non_finite_numbers_are_rejected_naming_the_flag(flag, value, expect, capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        main(["train", *QUICK, "--pool", "maxent", flag, value, "--out", str(tmp_path / "run")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"minignn train: error: {flag}: {expect}" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


def test_allow_partial_data_trains_and_evaluates_on_a_smaller_cifar_copy(tmp_path, capsys):
    write_cifar10(tmp_path / "data")
    base = ["train", "--dataset", "cifar10", "--data-dir", str(tmp_path / "data"), "--no-download", "--pool", "max",
            "--epochs", "1", "--batch-size", "16", "--width", "0.25", "--no-progress", "--no-plots"]
    assert main([*base, "--out", str(tmp_path / "strict")]) == 2
    assert "50000 training and 10000 test images, got 25 and 9" in capsys.readouterr().err
    assert main([*base, "--allow-partial-data", "--out", str(tmp_path / "run")]) == 0
    assert "(25 train / 9 test images)" in capsys.readouterr().out
    assert json.load(open(tmp_path / "run" / "config.json"))["allow_partial_data"] is True
    # eval reads the saved setting, and takes the flag too
    for extra in ([], ["--allow-partial-data"]):
        assert main(["eval", str(tmp_path / "run"), "--json", "--no-progress", *extra]) == 0
        assert json.loads(capsys.readouterr().out)["images"] == 9
