"""Every tutorial notebook runs top to bottom, in fast mode, without an error.

Each notebook is executed with nbclient in a fresh ``python3`` kernel, from a copy in a temporary
folder (the committed file is only read), with ``tutorials/`` as the working directory and
``MINIGNN_TUTORIAL_FAST=1`` (small data, few steps). A notebook ends with its own assertions, so a
wrong result fails here as well as an exception. Notebooks that use CIFAR-10 find it through the
data root (``MINIGNN_DATA``) and fall back to the synthetic dataset when it is absent.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="the notebook tests need nbformat (pip install -e '.[test]')")
nbclient = pytest.importorskip("nbclient", reason="the notebook tests need nbclient (pip install -e '.[test]')")

TUTORIALS = Path(__file__).resolve().parent.parent / "tutorials"
NOTEBOOKS = sorted(TUTORIALS.glob("[0-9][0-9]_*.ipynb"))
EXPECTED = ["01_from_max_to_maxent", "02_backward_by_hand", "03_global_feature_guidance", "04_numpy_numba_cupy",
            "05_train_on_cifar10"]


def test_all_tutorials_present():
    assert [p.stem for p in NOTEBOOKS] == EXPECTED


def _error_summary(nb) -> str:
    """The first error output of an executed notebook, for the failure message."""
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                return f"cell {i}: {out.get('ename')}: {out.get('evalue')}\n{cell.source[:800]}"
    return "(no error output recorded)"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_tutorial_runs_in_fast_mode(path, tmp_path, monkeypatch):
    copy = tmp_path / path.name
    shutil.copyfile(path, copy)
    before = path.read_bytes()
    nb = nbformat.read(str(copy), as_version=4)
    assert any(c.cell_type == "code" and "assert" in c.source for c in nb.cells[-2:]), \
        f"{path.name}: expected the notebook to end with a check (an assert)"
    monkeypatch.setenv("MINIGNN_TUTORIAL_FAST", "1")
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(TUTORIALS)}})
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as e:
        pytest.fail(f"{path.name} failed in fast mode:\n{_error_summary(nb)}\n\n{e}", pytrace=False)
    assert "FAST" in "".join(o.get("text", "") for o in nb.cells[1].get("outputs", [])), \
        f"{path.name}: the notebook did not pick up MINIGNN_TUTORIAL_FAST=1"
    assert path.read_bytes() == before, f"{path.name}: the committed notebook was modified"
