"""Every command of the README runs, as a user would type it, in a fast mode: each ``minignn``
command line of its code blocks is run in a subprocess with small-run flags added (one epoch of a
quarter-width net on a small CIFAR-10 copy, benchmarks with ``--tiny``), and each Python block is
executed. A README command that stops working fails here."""
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import write_cifar10, write_cifar100

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
TIMEOUT = 300
FAST_TRAIN = ["--epochs", "1", "--batch-size", "16", "--width", "0.25", "--no-plots", "--no-progress"]


def readme_commands() -> list[str]:
    """The ``minignn ...`` / ``python -m minignn ...`` command lines of the README's code blocks
    (indented, or the ``$ `` lines of a fenced transcript; a trailing ``# comment`` removed; ``a && b``
    split)."""
    cmds = []
    in_fence = False
    for line in README.splitlines():
        if line.startswith("```"):
            in_fence = not in_fence
            continue
        if not (in_fence or line.startswith("    ")):
            continue
        text = line.strip()
        if in_fence:  # a transcript: only its prompt lines are commands
            if not text.startswith("$ "):
                continue
            text = text[2:]
        for part in text.split("&&"):
            part = part.split("  #", 1)[0].strip()
            if re.match(r"(minignn|python3? -m minignn)( |$)", part):
                cmds.append(part)
    return list(dict.fromkeys(cmds))


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README, flags=re.S)


def _expand(cmd: str) -> list[list[str]]:
    """``minignn bench [layers|maxent]`` -> one argv per alternative; else the argv alone."""
    m = re.search(r"\[([\w|-]+)\]", cmd)
    if not m:
        return [shlex.split(cmd)]
    return [shlex.split(cmd[:m.start()] + alt + cmd[m.end():]) for alt in m.group(1).split("|")]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A working folder with a small CIFAR-10 copy (``data/``), a finished run under ``runs/`` (the
    README's ``runs/<run>``) and two image files, as the README's commands expect."""
    from PIL import Image
    cwd = tmp_path_factory.mktemp("readme")
    _, _, xt, _ = write_cifar10(cwd / "data")
    write_cifar100(cwd / "data", n_train=40, n_test=20)
    for i, name in enumerate(("cat.png", "dog.jpg")):
        Image.fromarray(np.ascontiguousarray(xt[i].reshape(3, 32, 32).transpose(1, 2, 0))).save(cwd / name)
    r = _run(["minignn", "train", "--data-dir", "data", "--allow-partial-data", "--out", "runs/first", *FAST_TRAIN],
             cwd)
    assert r.returncode == 0, r.stderr
    return cwd


def _env():
    env = dict(os.environ, PYTHONUNBUFFERED="1", MINIGNN_DATA="data")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    return env


def _run(argv, cwd):
    if argv[0] == "minignn":
        argv = [sys.executable, "-m", "minignn", *argv[1:]]
    elif argv[:3] in (["python", "-m", "minignn"], ["python3", "-m", "minignn"]):
        argv = [sys.executable, *argv[1:]]
    return subprocess.run(argv, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=TIMEOUT)


def fast(argv: list[str], i: int) -> list[str]:
    """The README's command with its placeholders filled in and the small-run flags added."""
    subst = {"runs/<run>": "runs/first", "DIR": "data", "../shared/data": "data"}
    out = []
    for a in argv:
        for k, v in subst.items():
            a = a.replace(k, v)
        out.append(a)
    start = 3 if out[:1] != ["minignn"] else 1
    sub = out[start] if len(out) > start else None
    if sub == "train" and "--print-config" not in out:
        if "--dataset" not in out or out[out.index("--dataset") + 1] != "synthetic":
            out += ["--allow-partial-data"]
        else:
            out += ["--limit-train", "48", "--limit-test", "32"]
        out += FAST_TRAIN
        if "--out" not in out:
            out += ["--out", f"runs/cmd{i}"]
    if sub == "study":
        if "--scheduler" in out:   # no cluster here: the plan only (test_study.py runs one on a LocalCluster)
            j = out.index("--scheduler")
            out = out[:j] + out[j + 2:] + ["--dry-run"]
        out += ["--allow-partial-data", "--seeds", "1", "--limit-train", "48", "--limit-test", "32", *FAST_TRAIN]
    if sub == "bench" and "--help" not in out:
        out += ["--tiny"]
    return out


CASES = [(argv, i) for i, cmd in enumerate(readme_commands()) for argv in _expand(cmd)]


def test_the_readme_has_commands_to_test():
    subs = {a[1] if a[0] == "minignn" else a[3] for a, _ in CASES if len(a) > 1}
    assert {"train", "eval", "summary", "predict", "pools", "bench"} <= subs, subs
    assert python_blocks()


@pytest.mark.parametrize("argv,i", CASES, ids=[" ".join(a) for a, _ in CASES])
def test_readme_command_runs(argv, i, world):
    cmd = fast(argv, i)
    if "--out" in cmd and "--overwrite" in cmd:  # fill the folder it overwrites, in the world's folder
        target = cmd[cmd.index("--out") + 1]
        r = _run(["minignn", "train", "--dataset", "synthetic", "--limit-train", "48", "--limit-test", "32",
                  *FAST_TRAIN, "--out", target, "--overwrite"], world)
        assert r.returncode == 0, r.stderr
    r = _run(cmd, world)
    assert r.returncode == 0, f"{' '.join(cmd)}\n{r.stdout}\n{r.stderr}"
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("k", range(len(python_blocks())))
def test_readme_python_block_runs(k, world):
    code = python_blocks()[k].replace("runs/<run>", "runs/first")
    # the world's CIFAR-10 copy is small: accept it, as the commands do with --allow-partial-data
    code = code.replace('load_dataset("cifar10")', 'load_dataset("cifar10", check_counts=False)')
    r = subprocess.run([sys.executable, "-c", code], cwd=world, env=_env(), capture_output=True, text=True,
                       timeout=TIMEOUT)
    assert r.returncode == 0, f"{code}\n{r.stdout}\n{r.stderr}"


def test_the_ci_script_runs_the_readmes_test_command():
    test_cmd = "python3 -m pip install -e '.[test]' && python3 -m pytest"
    assert f"    {test_cmd}\n" in README
    assert test_cmd in (ROOT / ".ci" / "run").read_text().splitlines()


def test_the_readme_links_only_inside_the_repository():
    for target in re.findall(r"\]\(([^)]+)\)", README):
        if re.match(r"https?://", target):
            continue
        assert not target.startswith(".."), target
        assert (ROOT / target.split("#", 1)[0]).exists(), target
