"""Run folders as a user meets them: the ``minignn train`` command in a subprocess (a second run
on a locked folder, a killed run's stale lock, refusing to overwrite a run, SIGTERM, temporaries
left by kill -9, a diverging run), and a full disk while metrics.jsonl is written (simulated)."""
import errno
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import pytest

from minignn.checkpoint import load_checkpoint

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and run-folder locks")

CLI = [sys.executable, "-c", "import sys; from minignn.cli import main; sys.exit(main())"]
# tiny runs: 16x16 synthetic images would change nothing here, so the defaults (32x32) with a
# quarter-width net and the cheapest pooling
TINY = ["--dataset", "synthetic", "--pool", "skip", "--width", "0.25", "--batch-size", "16", "--limit-test", "16",
        "--no-progress", "--no-plots"]
TIMEOUT = 300  # seconds: generous, since a cold Numba cache compiles every kernel on the first step
LOCK = ".minignn.lock"


def _env():
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in [env.get("PYTHONPATH")] if p])
    return env


def _cli(args, cwd):
    """Run ``minignn ARGS`` to the end; returns the CompletedProcess (text stdout/stderr)."""
    return subprocess.run(CLI + [str(a) for a in args], cwd=cwd, env=_env(), capture_output=True, text=True,
                          timeout=TIMEOUT)


class Background:
    """``minignn ARGS`` in the background; its output (stdout and stderr) collected line by line."""

    def __init__(self, args, cwd):
        self.proc = subprocess.Popen(CLI + [str(a) for a in args], cwd=cwd, env=_env(), stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self.lines, self.eof = [], False
        self._cv = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:
            with self._cv:
                self.lines.append(line)
                self._cv.notify_all()
        with self._cv:
            self.eof = True
            self._cv.notify_all()

    @property
    def output(self) -> str:
        with self._cv:
            return "".join(self.lines)

    def wait_for(self, text: str):
        """Block until a line holding ``text`` is printed (fails if the run ends first)."""
        deadline = time.monotonic() + TIMEOUT
        with self._cv:
            while not any(text in line for line in self.lines):
                left = deadline - time.monotonic()
                assert not self.eof, f"the run ended before printing {text!r}:\n{''.join(self.lines)}"
                assert left > 0, f"no {text!r} within {TIMEOUT} s:\n{''.join(self.lines)}"
                self._cv.wait(left)

    def finish(self) -> int:
        rc = self.proc.wait(TIMEOUT)
        self._reader.join(TIMEOUT)
        return rc

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(TIMEOUT)


@pytest.fixture
def background(tmp_path):
    started = []

    def start(args):
        b = Background(args, tmp_path)
        started.append(b)
        return b
    yield start
    for b in started:  # never leave a training process behind, whatever the test did
        b.stop()


def _strict_json(text):
    def refuse(name):
        raise ValueError(f"not standard JSON: {name}")
    return json.loads(text, parse_constant=refuse)


def _assert_standard_json_files(folder):
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        if name.endswith(".json"):
            _strict_json(open(path).read())
        elif name.endswith(".jsonl"):
            for line in open(path).read().splitlines():
                _strict_json(line)


def _temporaries(folder):
    return sorted(n for n in os.listdir(folder) if n.startswith(".tmp-"))


# --- the run-folder lock ------------------------------------------------------------------------
def test_a_second_run_on_a_busy_folder_is_refused_and_a_killed_runs_lock_is_taken_over(tmp_path, background):
    out = tmp_path / "run"
    owner = background(["train", *TINY, "--limit-train", "64", "--epochs", "100000", "--out", out])
    owner.wait_for("run folder:")  # it owns the folder and is training
    for extra in ([], ["--overwrite"]):  # --overwrite does not take a folder from a live run
        r = _cli(["train", *TINY, "--limit-train", "32", "--epochs", "1", "--out", out, *extra], tmp_path)
        assert r.returncode == 2, r.stdout + r.stderr
        assert str(out) in r.stderr and f"process {owner.proc.pid}" in r.stderr, r.stderr
        assert r.stderr.startswith("minignn train: error: ")
    assert owner.proc.poll() is None  # the owner was left alone

    owner.proc.kill()  # kill -9: no clean-up at all
    owner.finish()
    assert (out / LOCK).exists()  # a stale lock: its process is gone
    r = _cli(["train", *TINY, "--limit-train", "32", "--epochs", "1", "--out", out, "--overwrite"], tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert not (out / LOCK).exists() and _temporaries(out) == []
    assert load_checkpoint(str(out / "checkpoint.npz"))["config"]["epochs"] == 1


def test_out_holding_a_run_is_refused_unless_overwrite(tmp_path):
    out = tmp_path / "run"
    args = ["train", *TINY, "--limit-train", "32", "--epochs", "1", "--out", out]
    assert _cli(args, tmp_path).returncode == 0
    before = {n: (out / n).read_bytes() for n in ("checkpoint.npz", "best.npz", "metrics.jsonl", "config.json")}
    r = _cli(args + ["--seed", "1"], tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert str(out) in r.stderr and f"--resume {out}" in r.stderr and "--overwrite" in r.stderr, r.stderr
    assert {n: (out / n).read_bytes() for n in before} == before  # nothing was touched
    r = _cli(args + ["--seed", "1", "--overwrite"], tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads((out / "config.json").read_text())["seed"] == 1
    assert load_checkpoint(str(out / "checkpoint.npz"))["config"]["seed"] == 1


# --- SIGTERM, and temporaries left by kill -9 ----------------------------------------------------
def test_sigterm_saves_a_checkpoint_exits_143_and_the_resume_cleans_temporaries(tmp_path, background):
    out = tmp_path / "run"
    run = background(["train", *TINY, "--limit-train", "1024", "--epochs", "2", "--checkpoint-every", "0",
                      "--out", out])
    run.wait_for("epoch 1/2")  # the first epoch is done; the second is training
    run.proc.send_signal(signal.SIGTERM)
    rc = run.finish()
    assert rc == 143, run.output
    assert "SIGTERM" in run.output and f"minignn train --resume {out}" in run.output, run.output
    epoch1 = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    pos = load_checkpoint(str(out / "checkpoint.npz"))["position"]
    # saved where the signal stopped it, in epoch 2 (not the epoch-1 checkpoint)
    assert pos["epoch"] == 1 and 0 < pos["step_in_epoch"] < pos["steps_per_epoch"]
    assert pos["global_step"] == epoch1["step"] + pos["step_in_epoch"]
    assert not (out / LOCK).exists()

    # a kill -9 in the middle of a write leaves its temporary file behind: the next run removes it
    stale = out / ".tmp-checkpoint.npz-k9x3q1.part"
    stale.write_bytes(b"half a checkpoint")
    r = _cli(["train", "--resume", out, "--no-progress", "--no-plots"], tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert _temporaries(out) == [] and not (out / LOCK).exists()
    assert [json.loads(x)["epoch"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert load_checkpoint(str(out / "checkpoint.npz"))["position"]["global_step"] == 2 * epoch1["step"]


# --- divergence ---------------------------------------------------------------------------------
@pytest.mark.parametrize("argv", [["--pool", "avg", "--lr", "1e30"], ["--pool", "max", "--weight-decay", "1e30"]],
                         ids=["lr", "weight-decay"])
def test_a_diverging_run_stops_with_the_reason_and_keeps_the_last_good_checkpoint(tmp_path, argv):
    out = tmp_path / "run"
    r = _cli(["train", *TINY, "--limit-train", "256", "--epochs", "2", "--checkpoint-every", "1", *argv,
              "--out", out], tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr  # the reason alone: no NumPy overflow warnings
    err = r.stderr.strip()
    assert err.startswith("minignn train: error: training diverged at epoch 1, step "), err
    assert "lower --lr" in err and "loss" in err, err
    assert "epoch 1/2" not in r.stdout  # it stopped inside the first epoch
    state = load_checkpoint(str(out / "checkpoint.npz"))  # the last good one, kept
    step = int(err.split("step ", 1)[1].split("/", 1)[0])
    assert 0 < state["position"]["global_step"] < step
    assert all(np.isfinite(v).all() for v in state["model"].values())
    assert f"{out / 'checkpoint.npz'}" in err
    assert not (out / "summary.json").exists()
    _assert_standard_json_files(out)


# --- a full disk while metrics.jsonl is written (simulated) --------------------------------------
def test_full_disk_while_writing_metrics_names_the_file_and_keeps_the_earlier_lines(tmp_path, monkeypatch, capsys):
    from minignn.cli import main
    out = tmp_path / "run"
    names = {}
    real_mkstemp, real_fsync = tempfile.mkstemp, os.fsync

    def mkstemp(*a, **kw):
        fd, name = real_mkstemp(*a, **kw)
        names[fd] = name
        return fd, name

    def fsync(fd):  # the disk fills up while the second epoch's metrics line is flushed
        name = names.get(fd, "")
        if "metrics.jsonl" in os.path.basename(name) and '"epoch": 2' in open(name).read():
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(os, "fsync", fsync)
    args = ["train", *TINY, "--limit-train", "32", "--epochs", "2", "--out", str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert os.strerror(errno.ENOSPC) in err and str(out / "metrics.jsonl") in err, err
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1]  # the earlier content survived
    assert _temporaries(out) == [] and not (out / LOCK).exists()
    monkeypatch.undo()
    # the checkpoint holds both epochs: resuming rewrites the file in full
    assert main(["train", "--resume", str(out), "--no-progress", "--no-plots"]) == 0
    assert [json.loads(x)["epoch"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]
