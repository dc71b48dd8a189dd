"""The tutorial notebooks and their runner, ``tutorials/run_all.py``.

* Every notebook runs top to bottom, in fast mode, without an error: each is executed with
  nbclient in a fresh ``python3`` kernel, from a copy in a temporary folder (the committed file is
  only read), with ``tutorials/`` as the working directory and ``MINIGNN_TUTORIAL_FAST=1`` (small
  data, few steps). A notebook ends with its own assertions, so a wrong result fails here as well
  as an exception. Notebooks that use CIFAR-10 find it through the data root (``MINIGNN_DATA``)
  and fall back to the synthetic dataset when it is absent.
* The runner resolves a relative ``MINIGNN_DATA`` / ``--data-dir`` against the caller's folder and
  hands the absolute path to the kernels; a full run without the data stops before executing
  anything (exit 2, one line naming the folder); without the test extra it says which to install.
* The committed notebooks carry no machine paths and no links outside the repository.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import write_cifar10

REPO = Path(__file__).resolve().parent.parent
TUTORIALS = REPO / "tutorials"
RUN_ALL = TUTORIALS / "run_all.py"
NOTEBOOKS = sorted(TUTORIALS.glob("[0-9][0-9]_*.ipynb"))
EXPECTED = ["01_from_max_to_maxent", "02_backward_by_hand", "03_global_feature_guidance", "04_numpy_numba_cupy",
            "05_train_on_cifar10"]
CIFAR_NOTEBOOKS = ["01_from_max_to_maxent", "03_global_feature_guidance", "05_train_on_cifar10"]
EXTRA = "pip install -e '.[test]'"


def _need_runner():
    """The notebook packages, or a visible skip naming the extra (only for tests that execute kernels)."""
    for name in ("nbformat", "nbclient", "ipykernel"):
        pytest.importorskip(name, reason=f"executing notebooks needs {name} ({EXTRA})")
    import nbclient
    import nbformat
    return nbformat, nbclient


def _load_run_all():
    spec = importlib.util.spec_from_file_location("tutorials_run_all", RUN_ALL)
    mod = importlib.util.module_from_spec(spec)
    old, sys.dont_write_bytecode = sys.dont_write_bytecode, True   # no __pycache__ left in tutorials/
    try:
        spec.loader.exec_module(mod)
    finally:
        sys.dont_write_bytecode = old
    return mod


def _run_script(args, cwd, env_update=None, drop=()):
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(env_update or {})
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _snapshot(folder: Path) -> dict:
    """Every file of ``folder`` with its bytes and mtime."""
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir()) if p.is_file()}


# ---------------------------------------------------------------- the notebooks, in fast mode
def test_all_tutorials_present():
    assert [p.stem for p in NOTEBOOKS] == EXPECTED


def test_runner_finds_the_cifar_notebooks():
    run_all = _load_run_all()
    assert [p.stem for p in NOTEBOOKS if run_all.reads_cifar(p)] == CIFAR_NOTEBOOKS


def _error_summary(nb) -> str:
    """The first error output of an executed notebook, for the failure message."""
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                return f"cell {i}: {out.get('ename')}: {out.get('evalue')}\n{cell.source[:800]}"
    return "(no error output recorded)"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_tutorial_runs_in_fast_mode(path, tmp_path, monkeypatch):
    nbformat, nbclient = _need_runner()
    copy = tmp_path / path.name
    copy.write_bytes(path.read_bytes())
    before = path.read_bytes()
    nb = nbformat.read(str(copy), as_version=4)
    assert any(c.cell_type == "code" and "assert" in c.source for c in nb.cells[-2:]), \
        f"{path.name}: expected the notebook to end with a check (an assert)"
    monkeypatch.setenv("MINIGNN_TUTORIAL_FAST", "1")
    if os.environ.get("MINIGNN_DATA"):  # as run_all.py does: a relative root is the caller's, not tutorials/'s
        monkeypatch.setenv("MINIGNN_DATA", os.path.abspath(os.path.expanduser(os.environ["MINIGNN_DATA"])))
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(TUTORIALS)}})
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as e:
        pytest.fail(f"{path.name} failed in fast mode:\n{_error_summary(nb)}\n\n{e}", pytrace=False)
    assert "FAST" in "".join(o.get("text", "") for o in nb.cells[1].get("outputs", [])), \
        f"{path.name}: the notebook did not pick up MINIGNN_TUTORIAL_FAST=1"
    assert path.read_bytes() == before, f"{path.name}: the committed notebook was modified"


# ---------------------------------------------------------------- run_all.py: the data root
def test_resolve_data_root_uses_the_callers_folder(tmp_path, monkeypatch):
    run_all = _load_run_all()
    caller = tmp_path / "caller"
    root, setting = run_all.resolve_data_root(None, {"MINIGNN_DATA": "../shared/data"}, cwd=caller)
    assert root == tmp_path / "shared" / "data" and root.is_absolute()      # normalised: no ".." left
    assert "MINIGNN_DATA='../shared/data'" in setting and f"relative, taken from {caller}" in setting
    # --data-dir wins over the variable, and is relative to the caller too
    root, setting = run_all.resolve_data_root("d", {"MINIGNN_DATA": "/elsewhere"}, cwd=caller)
    assert root == caller / "d" and setting.startswith("--data-dir 'd'")
    # an absolute setting is kept as it is; an empty --data-dir counts as not given
    root, setting = run_all.resolve_data_root("", {"MINIGNN_DATA": str(tmp_path / "abs")}, cwd=caller)
    assert root == tmp_path / "abs" and "relative" not in setting
    # "~" is the user's home, not a folder named "~"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    root, _ = run_all.resolve_data_root("~/cifar", {}, cwd=caller)
    assert root == tmp_path / "home" / "cifar"
    # neither setting: the per-user cache
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    root, setting = run_all.resolve_data_root(None, {}, cwd=caller)
    assert root == tmp_path / "cache" / "minignn" / "data" and "per-user cache" in setting


PROBE = '''import os
from minignn.data import DatasetNotFoundError, load_dataset, resolve_data_root
try:
    ds = load_dataset("cifar10", download=False, progress=False, check_counts=False)
    print("loaded", ds.name, len(ds.y_train), len(ds.y_test))
except DatasetNotFoundError:
    print("loaded synthetic")
print("MINIGNN_DATA=" + os.environ.get("MINIGNN_DATA", "(unset)"))
print("ROOT=" + str(resolve_data_root()))
print("CWD=" + os.getcwd())
'''


def _probe_folder(tmp_path, monkeypatch, run_all) -> Path:
    """A notebook folder holding one CIFAR-reading probe notebook, made the runner's ``HERE``."""
    nbformat, _ = _need_runner()
    folder = tmp_path / "notebooks"
    folder.mkdir()
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(PROBE)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(folder / "01_probe.ipynb"))
    monkeypatch.setattr(run_all, "HERE", folder)
    return folder


def _probe_output(path: Path) -> str:
    nb = json.loads(path.read_text(encoding="utf-8"))
    return "".join("".join(o.get("text", "")) for c in nb["cells"] for o in c.get("outputs", []))


@pytest.mark.parametrize("how", ["env", "data-dir"])
def test_relative_data_root_reaches_the_kernel_as_an_absolute_path(how, tmp_path, monkeypatch, capsys):
    run_all = _load_run_all()
    folder = _probe_folder(tmp_path, monkeypatch, run_all)
    caller = tmp_path / "caller"
    write_cifar10(caller / "data")               # a small CIFAR-10 in the canonical layout: 25 + 9 images
    monkeypatch.chdir(caller)
    if how == "env":
        monkeypatch.setenv("MINIGNN_DATA", "data")
        extra = []
    else:
        monkeypatch.setenv("MINIGNN_DATA", str(tmp_path / "not-this-one"))
        extra = ["--data-dir", "data"]
    out = tmp_path / "executed"
    assert run_all.main(["--fast", "--out", str(out), *extra]) == 0
    text = _probe_output(out / "01_probe.ipynb")
    assert f"CWD={folder}" in text                                   # the kernel runs elsewhere...
    assert f"MINIGNN_DATA={caller / 'data'}" in text                 # ...and gets the caller's folder, absolute
    assert f"ROOT={caller / 'data'}" in text and "loaded cifar10 25 9" in text
    assert f"CIFAR-10 data root: {caller / 'data'}" in capsys.readouterr().out
    assert os.environ["MINIGNN_DATA"] == ("data" if how == "env" else str(tmp_path / "not-this-one"))  # restored


def test_full_run_with_data_saves_in_place(tmp_path, monkeypatch):
    run_all = _load_run_all()
    folder = _probe_folder(tmp_path, monkeypatch, run_all)
    write_cifar10(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MINIGNN_DATA", "data")
    before = (folder / "01_probe.ipynb").read_bytes()
    assert run_all.main([]) == 0
    text = _probe_output(folder / "01_probe.ipynb")
    assert (folder / "01_probe.ipynb").read_bytes() != before and "loaded cifar10 25 9" in text
    assert sorted(p.name for p in folder.iterdir()) == ["01_probe.ipynb"]   # no temporary file left behind


def test_fast_run_without_data_says_it_uses_synthetic(tmp_path, monkeypatch, capsys):
    run_all = _load_run_all()
    _probe_folder(tmp_path, monkeypatch, run_all)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MINIGNN_DATA", "missing")
    out = tmp_path / "executed"
    assert run_all.main(["--fast", "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert f"CIFAR-10 not found in the data root {tmp_path / 'missing'}" in said
    assert "01_probe.ipynb will use the SYNTHETIC dataset" in said
    assert "loaded synthetic" in _probe_output(out / "01_probe.ipynb")


@pytest.mark.parametrize("how", ["env", "data-dir"])
def test_full_run_without_data_fails_before_running_anything(how, tmp_path):
    relative = f"no/such/data-{tmp_path.name}"
    if how == "env":   # the documented form: from the repository root, a relative MINIGNN_DATA
        cwd, args, env, setting = REPO, [str(RUN_ALL.relative_to(REPO))], {"MINIGNN_DATA": relative}, "MINIGNN_DATA="
    else:              # from another folder, a relative --data-dir (MINIGNN_DATA is ignored then)
        cwd, args, env, setting = tmp_path, [str(RUN_ALL), "--data-dir", relative], {"MINIGNN_DATA": str(REPO)}, \
            "--data-dir "
    looked = Path(os.path.abspath(cwd / relative))
    before = _snapshot(TUTORIALS)
    r = _run_script(args, cwd=cwd, env_update=env)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert f"CIFAR-10 not found in the data root {looked} " in lines[0] and setting in lines[0], lines[0]
    assert "MINIGNN_DATA=DIR or --data-dir DIR" in lines[0] and "--fast" in lines[0]
    assert "running" not in r.stdout, r.stdout                 # no notebook was started
    assert _snapshot(TUTORIALS) == before                     # same files, same bytes, same mtimes
    assert not (cwd / "no").exists()                          # and nothing created where it looked


def test_runner_without_nbformat_names_the_extra():
    wrapper = ("import runpy, sys; sys.modules['nbformat'] = None; "
               f"sys.argv = [{str(RUN_ALL)!r}, '--fast']; runpy.run_path({str(RUN_ALL)!r}, run_name='__main__')")
    before = _snapshot(TUTORIALS)
    r = _run_script(["-c", wrapper], cwd=REPO)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "nbformat" in lines[0] and EXTRA in lines[0], lines[0]
    assert r.stdout == ""
    assert _snapshot(TUTORIALS) == before


# ---------------------------------------------------------------- no machine paths, no outside links
#: a link out of the repository, or an absolute path of some machine (POSIX top-level folders that hold
#: user or system files, a Windows drive, an installed package's folder)
MACHINE_PATH = re.compile(r"\.\./shared|(?<![\w.~-])/(?:work|home|tmp|Users|root|usr|opt|var|mnt|media|private|srv"
                          r"|scratch|data|proc|etc|lib|nix)/|\b[A-Za-z]:\\|site-packages|dist-packages")


def test_machine_path_pattern():
    for bad in ["CIFAR-10 from /work/shared/data/cifar-10-batches-py", "source='/work/shared/data/x'",
                "run folder: /tmp/tmpjl89qeic/max", "restated in `../../shared/docs/MATH.md`", "/home/me/x",
                "(/Users/me/data)", r"C:\Users\me", "/usr/lib/python3/site-packages/numba/x.py", '"/var/folders/x"']:
        assert MACHINE_PATH.search(bad), bad
    for fine in ["https://www.cs.toronto.edu/~kriz/cifar.html", "1/HW", "15000 train / 5000 test images",
                 "x[:, :, ::2, ::2]", "run folder: <run_root>/max", "layers/maxent/", "~/.cache/minignn/data",
                 "tutorials/05_train_on_cifar10.ipynb", "a/tmp/b"]:
        assert not MACHINE_PATH.search(fine), fine


def _texts(nb: dict):
    """(where, text) for every text of a notebook: cell sources, outputs (binary images excepted:
    their base64 can spell anything) and metadata."""
    yield "notebook metadata", json.dumps(nb.get("metadata", {}))
    for i, cell in enumerate(nb["cells"]):
        src = cell.get("source", "")
        yield f"cell {i} source", src if isinstance(src, str) else "".join(src)
        yield f"cell {i} metadata", json.dumps(cell.get("metadata", {}))
        for j, out in enumerate(cell.get("outputs", [])):
            for key in ("text", "traceback", "ename", "evalue"):
                if key in out:
                    v = out[key]
                    yield f"cell {i} output {j} {key}", v if isinstance(v, str) else "\n".join(v)
            for mime, v in out.get("data", {}).items():
                if mime.startswith("image/") and mime != "image/svg+xml":
                    continue
                yield f"cell {i} output {j} {mime}", v if isinstance(v, str) else "".join(v) if isinstance(v, list) \
                    else json.dumps(v)
            yield f"cell {i} output {j} metadata", json.dumps(out.get("metadata", {}))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_has_no_machine_paths(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    found = [f"{where}: ...{text[max(0, m.start() - 60):m.end() + 60]}..."
             for where, text in _texts(nb) for m in MACHINE_PATH.finditer(text)]
    assert not found, f"{path.name} holds machine paths or outside links:\n" + "\n".join(found)


def test_tutorials_readme_links_stay_in_the_repository():
    text = (TUTORIALS / "README.md").read_text(encoding="utf-8")
    assert not MACHINE_PATH.search(text), MACHINE_PATH.search(text).group(0)
    for target in re.findall(r"\]\(([^)]+)\)", text):
        if not re.match(r"[a-z]+://", target):
            resolved = (TUTORIALS / target.split("#")[0]).resolve()
            assert resolved.is_relative_to(REPO) and resolved.exists(), f"README.md links to {target}"
