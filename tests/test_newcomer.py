"""The newcomer's path, run as a user would: ``python -m minignn``, one-line errors naming the flag
for bad values to every subcommand, relative data roots, nothing created for a mistyped one,
``--config`` / ``--print-config``, progress bars only on a terminal, the kernel-compiling notice,
metrics.csv and the learning-rate panel."""
import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import write_cifar10

from minignn import train as train_mod
from minignn.cli import main
from minignn.train import Trainer, TrainConfig

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["--dataset", "synthetic", "--limit-train", "48", "--limit-test", "32", "--batch-size", "16",
         "--width", "0.25", "--no-plots"]
TIMEOUT = 300


def _env(**extra):
    env = dict(os.environ, PYTHONUNBUFFERED="1", **extra)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    return env


def run_cli(args, cwd, **env):
    """``python -m minignn ARGS`` in a subprocess (stderr a pipe, not a terminal)."""
    return subprocess.run([sys.executable, "-m", "minignn", *map(str, args)], cwd=cwd, env=_env(**env),
                          capture_output=True, text=True, timeout=TIMEOUT)


def test_python_dash_m_minignn(tmp_path):
    r = run_cli(["--version"], tmp_path)
    assert r.returncode == 0 and r.stdout.startswith("minignn "), r.stdout + r.stderr
    r = run_cli(["pools"], tmp_path)
    assert r.returncode == 0 and "maxent-param" in r.stdout, r.stderr


# every subcommand fed bad values: exit status 2, one line on stderr naming the flag, no traceback
BAD = [
    (["train", "--lr", "-1"], "--lr: expected a finite number > 0, got '-1'"),
    (["train", "--epochs", "abc"], "--epochs: expected an integer >= 1, got 'abc'"),
    (["train", "--batch-size", "0"], "--batch-size: expected an integer >= 1"),
    (["train", "--weight-decay", "nan"], "--weight-decay"),
    (["train", "--pool", "maxx"], "--pool: invalid choice: 'maxx'"),
    (["train", "--pool-opt", "foo=bar"], "--pool-opt foo: unknown option for pool 'gfgp'; valid: stat"),
    (["train", "--pool-opt", "kernel_size=0"], "--pool-opt kernel_size: unknown option"),
    (["train", "--pool", "maxent", "--pool-opt", "lam=param"], "maxent-param (lam='param')"),
    (["train", "--pool-opt", "hidden=-1"], "--pool-opt hidden=-1"),
    (["train", "--pool-opt", "stat=3"], "--pool-opt stat=3"),
    (["train", "--pool-opt", "novalue"], "--pool-opt: expected key=value"),
    (["train", "--optimizer", "adam", "--momentum", "0.5"], "--momentum: applies to --optimizer sgd only"),
    (["train", "--betas", "0.9,0.999"], "--betas: applies to --optimizer adam and adamw only"),
    (["train", "--optimizer", "adamw", "--betas", "2,3"], "--betas: expected two numbers in [0, 1)"),
    (["train", "--config", "no-such-config.json"], "--config: no file at 'no-such-config.json'"),
    (["train", "--resume", "no-such-run"], "no-such-run"),
    (["train", "--device", "tpu"], "--device: invalid choice: 'tpu'"),
    (["eval", "README.md"], "is not a minignn checkpoint: it is not an .npz archive"),
    (["eval", "no-such.npz"], "no file at 'no-such.npz'"),
    (["eval", "x.npz", "--batch-size", "0"], "--batch-size: expected an integer >= 1"),
    (["summary", "--input-shape", "3,x,32"], "--input-shape"),
    (["summary", "--model", "resnet"], "--model: invalid choice: 'resnet'"),
    (["pools", "--bogus"], "unrecognized arguments: --bogus"),
    (["nonsense"], "invalid choice: 'nonsense'"),
]


@pytest.mark.parametrize("argv,expect", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_values_are_one_line_naming_the_flag(argv, expect, tmp_path):
    (tmp_path / "README.md").write_text("# not a checkpoint\n")
    r = run_cli(argv, tmp_path)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("minignn"), lines[0]
    assert "error: " in lines[0] and expect in lines[0], lines[0]
    assert "Traceback" not in r.stderr and "allow_pickle" not in r.stderr
    assert not os.path.exists(tmp_path / "runs"), "a failed command created a run folder"


def test_relative_data_dir_is_stored_absolute_and_eval_works_from_another_folder(tmp_path):
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir(), elsewhere.mkdir()
    write_cifar10(work / "data")
    r = run_cli(["train", "--dataset", "cifar10", "--data-dir", "data", "--allow-partial-data", "--pool", "max",
                 "--epochs", "1", "--batch-size", "16", "--width", "0.25", "--no-plots", "--out", "run"], work)
    assert r.returncode == 0, r.stderr
    saved = json.loads((work / "run" / "config.json").read_text())["data_dir"]
    assert saved == str(work / "data"), saved
    r = run_cli(["eval", work / "run", "--json"], elsewhere)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["images"] == 9
    assert os.listdir(elsewhere) == []


def test_a_mistyped_data_dir_is_not_created(tmp_path, monkeypatch, capsys):
    from urllib.error import URLError

    from minignn.data import cifar

    def no_network(*a, **kw):
        raise URLError("no network in this test")
    monkeypatch.setattr(cifar, "urlopen", no_network)
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--data-dir", "dta/typo", "--no-plots", "--no-progress", "--out", "run"]) == 2
    err = capsys.readouterr().err
    assert "CIFAR-10 was not found" in err and str(tmp_path / "dta" / "typo") in err
    assert not (tmp_path / "dta").exists()
    # nor by an eval whose checkpoint names a data root that is gone
    monkeypatch.delenv("MINIGNN_DATA", raising=False)
    run = tmp_path / "r2"
    assert main(["train", *QUICK, "--epochs", "1", "--no-progress", "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "--dataset", "cifar10", "--data-dir", str(tmp_path / "gone"), "--no-progress"]) == 2
    assert not (tmp_path / "gone").exists()


def test_print_config_and_config_repeat_a_run(tmp_path, capsys):
    assert main(["train", *QUICK, "--pool", "max", "--lr", "0.05", "--print-config"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["pool"] == "max" and printed["lr"] == 0.05 and printed["limit_train"] == 48
    assert not (tmp_path / "runs").exists() and not os.path.exists("runs")
    (tmp_path / "c.json").write_text(json.dumps(printed))
    assert main(["train", "--config", str(tmp_path / "c.json"), "--seed", "3", "--print-config"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again == {**printed, "seed": 3}
    # a run's folder as --config: the same settings, so the same results
    run1, run2 = tmp_path / "run1", tmp_path / "run2"
    assert main(["train", "--config", str(tmp_path / "c.json"), "--epochs", "1", "--no-progress", "--out",
                 str(run1)]) == 0
    assert main(["train", "--config", str(run1), "--no-progress", "--out", str(run2)]) == 0
    capsys.readouterr()
    m1, m2 = ((r / "metrics.jsonl").read_text().splitlines() for r in (run1, run2))
    drop = ("train_time", "eval_time", "epoch_time", "train_images_per_s")
    strip = lambda line: {k: v for k, v in json.loads(line).items() if k not in drop}
    assert [strip(x) for x in m1] == [strip(x) for x in m2]
    # an option of another pool in the file is dropped when --pool changes it
    (tmp_path / "g.json").write_text(json.dumps({**printed, "pool": "gfgp", "pool_kw": {"stat": "max"}}))
    assert main(["train", "--config", str(tmp_path / "g.json"), "--pool", "max", "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out)["pool_kw"] == {}
    (tmp_path / "bad.json").write_text(json.dumps({**printed, "lr": -1}))
    assert main(["train", "--config", str(tmp_path / "bad.json")]) == 2
    assert f"--config {tmp_path / 'bad.json'}: lr:" in capsys.readouterr().err


def test_progress_bars_only_on_a_terminal(tmp_path):
    r = run_cli(["train", *QUICK, "--epochs", "1", "--pool", "skip", "--out", "a"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "\r" not in r.stderr and "img/s]" not in r.stderr, r.stderr
    r = run_cli(["train", *QUICK, "--epochs", "1", "--pool", "skip", "--out", "b", "--progress"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "epoch 1/1 train" in r.stderr and "img/s]" in r.stderr, r.stderr


def _quick_config(**kw):
    return TrainConfig(**{"dataset": "synthetic", "limit_train": 48, "limit_test": 32, "batch_size": 16, "width": 0.25,
                          "epochs": 2, "pool": "gfgp", **kw})


def test_compiling_notice_and_warm_up_changes_no_result(tmp_path, monkeypatch):
    logs = []
    monkeypatch.setattr(train_mod, "_COMPILE_NOTICE_S", 0.0)  # as if compiling took long
    t = Trainer(_quick_config(), out=str(tmp_path / "a"), progress=False, plots=False, log=logs.append)
    t.run()
    i = next(k for k, m in enumerate(logs) if m.startswith("compiling kernels (first run only"))
    assert logs[i + 1].startswith("kernels ready in ") and logs[i + 2].startswith("epoch 1/2")
    u = Trainer(_quick_config(), out=str(tmp_path / "b"), progress=False, plots=False, log=logs.append,
                warm_up=False)
    u.run()
    for (name, a), (_, b) in zip(t.model.state_dict().items(), u.model.state_dict().items()):
        assert np.array_equal(a, b), name
    assert [r["train_loss"] for r in t.history] == [r["train_loss"] for r in u.history]


def test_bar_shows_the_steps_figures_before_it_advances(tmp_path, monkeypatch):
    calls = []

    class Bar:
        def __init__(self, *a, **kw):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def update(self, n):
            calls.append(("update", n))

        def set_postfix(self, **kw):
            calls.append(("postfix", kw))
    monkeypatch.setattr(train_mod, "_progress", lambda *a, **kw: Bar())
    t = Trainer(_quick_config(epochs=1, pool="max"), out=str(tmp_path / "r"), progress=True, plots=False,
                log=lambda m: None)
    t.run()
    train_calls = calls[1:1 + 2 * t.steps_per_epoch]  # after the initial update(0): postfix, update per step
    assert calls[0] == ("update", 0)
    assert [c[0] for c in train_calls] == ["postfix", "update"] * t.steps_per_epoch
    last = train_calls[-2][1]
    rec = t.history[0]
    assert last["loss"] == f"{rec['train_loss']:.3f}" and last["acc"] == f"{100 * rec['train_acc']:.1f}%"


def test_metrics_csv_matches_metrics_jsonl(tmp_path):
    t = Trainer(_quick_config(), out=str(tmp_path / "r"), progress=False, plots=False, log=lambda m: None)
    t.run()
    rows = list(csv.DictReader(io.StringIO((tmp_path / "r" / "metrics.csv").read_text())))
    recs = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == len(recs) == 2
    for row, rec in zip(rows, recs):
        for k in ("epoch", "step"):
            assert int(row[k]) == rec[k]
        for k in ("lr", "train_loss", "train_acc", "test_loss", "test_acc", "train_time"):
            assert float(row[k]) == rec[k], k
        for layer, st in rec["lam"].items():
            assert float(row[f"lam/{layer}/mean"]) == st["mean"] and float(row[f"lam/{layer}/std"]) == st["std"]
    assert train_mod.metrics_csv([{"epoch": 1, "lr": float("nan"), "train_images_per_s": None}]).splitlines()[1] \
        .startswith("1,,"), "a non-finite or missing value is an empty cell"


def test_curves_have_a_learning_rate_panel_and_the_best_mark_clears_the_title():
    from minignn.plots import curves_figure
    hist = [{"epoch": e, "train_loss": 2.0 / e, "test_loss": 2.2 / e, "train_acc": 0.2 * e, "test_acc": 0.19 * e,
             "lr": 0.1 / e} for e in range(1, 5)]  # the best accuracy is the highest point of its panel
    fig = curves_figure(hist, title="t", lr_curve=([0.5, 1, 2, 3, 4], [0.05, 0.1, 0.05, 0.03, 0.02]))
    axes = fig.axes
    assert [a.get_title() for a in axes] == ["loss", "accuracy", "learning rate"]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    acc = axes[1]
    note = next(t for t in acc.texts if t.get_text().startswith("best "))
    box, title = note.get_window_extent(renderer), acc.title.get_window_extent(renderer)
    assert not box.overlaps(title), (box, title)
    assert acc.get_window_extent(renderer).contains(box.x0, box.y0), "the mark stays inside its panel"
    lr_line = axes[2].get_lines()[0]
    assert list(lr_line.get_ydata()) == [0.05, 0.1, 0.05, 0.03, 0.02]


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_adam_runs_stop_and_resume_exactly(optimizer, tmp_path, capsys):
    import signal
    assert main(["train", *QUICK, "--optimizer", optimizer, "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out)["lr"] == 1e-3  # Adam's default rate

    class CtrlC(Trainer):
        def train_step(self, x, y):
            if self.global_step + 1 == 4:
                signal.raise_signal(signal.SIGINT)
            return super().train_step(x, y)
    cfg = _quick_config(pool="max", optimizer=optimizer)
    full = Trainer(cfg, out=str(tmp_path / "full"), progress=False, plots=False, log=lambda m: None)
    full.run()
    with pytest.raises(KeyboardInterrupt):
        CtrlC(_quick_config(pool="max", optimizer=optimizer), out=str(tmp_path / "part"), progress=False,
              plots=False, log=lambda m: None).run()
    resumed = Trainer.from_checkpoint(str(tmp_path / "part"), progress=False, plots=False, log=lambda m: None)
    assert resumed.global_step == 4 and type(resumed.optimizer).__name__.lower() == optimizer
    resumed.run()
    for (name, a), (_, b) in zip(full.model.state_dict().items(), resumed.model.state_dict().items()):
        assert np.array_equal(a, b), name
