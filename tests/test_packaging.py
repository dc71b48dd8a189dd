"""The wheel ships every package folder of the tree, under its import name.

``setup.py`` discovers the packages: every folder under ``minignn/`` (as ``minignn.<...>``) and
under the top-level ``layers/`` (as ``minignn.layers.<...>``) that holds an ``__init__.py``. The
test builds a wheel from a copy of the sources in a temporary folder (so no ``build/`` or stale
files of the working tree get in) and checks it against a walk of the same tree. The copy gets
one extra package folder and one ``.cu`` file, neither of them in any list, to show that a new
folder and a CUDA source beside a kernel ship without an edit.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: source folder -> the import name it installs as
ROOTS = {"minignn": "minignn", "layers": "minignn.layers"}
#: what the build needs from the repository (README.md is the long description)
SOURCES = ["pyproject.toml", "setup.py", "README.md", "MANIFEST.in", *ROOTS]
SCRATCH_PKG = ("layers", "_scratch_pkg")          # a folder no list names
SCRATCH_CU = ("layers", "_scratch_pkg", "kernel.cu")


def _tree_packages(root: Path) -> dict[str, str]:
    """Import name -> folder (relative to ``root``, '/'-separated) of every package folder."""
    found = {}
    for folder, name in ROOTS.items():
        for dirpath, dirnames, filenames in os.walk(root / folder):
            dirnames[:] = [d for d in dirnames if d != "__pycache__" and not d.startswith(".")]
            if "__init__.py" in filenames:
                rel = Path(dirpath).relative_to(root / folder).parts
                found[".".join((name, *rel))] = "/".join((folder, *rel))
    return found


def _pyproject() -> dict | None:
    """pyproject.toml, parsed; None without a TOML reader (Python 3.10 without tomli)."""
    try:
        import tomllib
    except ImportError:
        try:
            import tomli as tomllib
        except ImportError:
            return None
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def _build_deps_present() -> bool:
    """Whether the installed packages satisfy ``[build-system] requires`` (then the wheel can be
    built without an isolated build environment: offline and faster). If not, or if that cannot
    be told, pip builds with isolation, installing the requirements in a throwaway environment."""
    try:
        from importlib.metadata import PackageNotFoundError, version

        from packaging.requirements import Requirement
    except ImportError:
        return False
    config = _pyproject()
    if config is None:
        return False
    requires = config["build-system"]["requires"]
    for spec in requires:
        req = Requirement(spec)
        try:
            if not req.specifier.contains(version(req.name), prereleases=True):
                return False
        except PackageNotFoundError:
            return False
    return True


def _pip_available() -> bool:
    return subprocess.run([sys.executable, "-m", "pip", "--version"],
                          capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(copied source tree, names in the wheel built from it)."""
    if not _pip_available():
        pytest.skip("pip is not available to this interpreter: cannot build a wheel")
    tmp = tmp_path_factory.mktemp("packaging")
    src = tmp / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=ignore)
        elif (ROOT / name).exists():
            shutil.copy2(ROOT / name, src / name)
    (src.joinpath(*SCRATCH_PKG)).mkdir()
    (src.joinpath(*SCRATCH_PKG) / "__init__.py").write_text('"""scratch package of the test"""\n')
    (src.joinpath(*SCRATCH_CU)).write_text("// scratch CUDA source of the test\n")

    out = tmp / "wheel"
    cmd = [sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "-q", "-w", str(out)]
    if _build_deps_present():
        cmd.append("--no-build-isolation")
    proc = subprocess.run(cmd, cwd=src, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"
    wheels = list(out.glob("minignn-*.whl"))
    assert len(wheels) == 1, wheels
    with zipfile.ZipFile(wheels[0]) as zf:
        names = set(zf.namelist())
    return src, names


def test_every_package_folder_is_in_the_wheel(built):
    src, names = built
    packages = _tree_packages(src)
    # the tree's own packages and the scratch one, found by the walk, not listed
    assert {"minignn", "minignn.layers", "minignn.layers.maxent"} <= packages.keys()
    assert "minignn.layers._scratch_pkg" in packages
    missing = {}
    for name, folder in packages.items():
        target = name.replace(".", "/")
        modules = sorted(p.name for p in (src / folder).glob("*.py"))
        assert "__init__.py" in modules
        absent = [m for m in modules if f"{target}/{m}" not in names]
        if absent:
            missing[f"{name} ({folder}/)"] = absent
    assert not missing, f"package modules missing from the wheel: {missing}"


def test_wheel_holds_nothing_outside_minignn(built):
    _, names = built
    outside = sorted(n for n in names
                     if not n.startswith("minignn/") and ".dist-info/" not in n)
    assert not outside, f"entries outside minignn/ (layers/ installs as minignn.layers): {outside}"


def test_cuda_sources_are_package_data(built):
    """``*.cu`` beside the kernels ships; checked with the scratch file, so the tree itself needs
    no CUDA source."""
    src, names = built
    config = _pyproject()
    if config is not None:          # the rule as configured (the wheel below shows it works)
        package_data = config["tool"]["setuptools"]["package-data"]
        assert "*.cu" in package_data.get("*", []), package_data
    cu_files = sorted(p.relative_to(src) for folder in ROOTS for p in (src / folder).rglob("*.cu"))
    assert Path(*SCRATCH_CU) in cu_files
    for rel in cu_files:
        folder, *rest = rel.parts
        target = "/".join((ROOTS[folder].replace(".", "/"), *rest))
        assert target in names, f"{rel} is not in the wheel as {target}"


SOURCE_ROOT_RUN = r"""
import sys
# forget the editable install: only the source folder on sys.path, as after a plain
# 'pip install .' followed by 'python -m minignn' in the repository root
sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
sys.path[:] = [sys.argv[1]] + [p for p in sys.path if p and "__editable__" not in p]
sys.path_importer_cache.clear()
import minignn, minignn.layers, minignn.layers.maxent
from minignn.cli import main
print(minignn.__file__)
print(minignn.layers.__file__)
sys.exit(main(["pools"]))
"""


def test_the_command_runs_from_the_source_root_without_an_editable_install(tmp_path):
    """In the repository root the source folder minignn/ shadows any installed copy, and layers/
    sits beside it: ``python -m minignn`` there must still find minignn.layers."""
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-c", SOURCE_ROOT_RUN, str(root)], cwd=root, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == str(root / "minignn" / "__init__.py")
    assert lines[1] == str(root / "layers" / "__init__.py")
    assert lines[2].startswith("pool ") and any(line.startswith("gfgp ") for line in lines)
