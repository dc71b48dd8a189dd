"""The package list, discovered from the tree (everything else is in pyproject.toml).

Two folders are installed: ``minignn/`` as the package ``minignn`` and the top-level ``layers/``
as its subpackage ``minignn.layers``. Every folder below either that holds an ``__init__.py`` is
a package, named after its path (``layers/maxent`` -> ``minignn.layers.maxent``), so a new
folder ships without an edit here or in pyproject.toml. ``package_dir`` only needs the two
roots: setuptools finds ``minignn.layers.X`` under ``layers/X``.
"""
from __future__ import annotations

import os

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))

#: import name -> folder (relative to this file) of each installed root.
ROOTS = {"minignn": "minignn", "minignn.layers": "layers"}


def find_packages_under(name: str, folder: str) -> list[str]:
    """``name`` and the dotted names of the folders below ``folder`` with an ``__init__.py``."""
    packages = []
    top = os.path.join(HERE, folder)
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = sorted(d for d in dirnames
                             if not d.startswith(".") and d != "__pycache__")
        if "__init__.py" in filenames:
            rel = os.path.relpath(dirpath, top)
            packages.append(name if rel == "." else ".".join([name, *rel.split(os.sep)]))
    return packages


def discover() -> tuple[list[str], dict[str, str]]:
    packages: list[str] = []
    for name, folder in ROOTS.items():
        if not os.path.isfile(os.path.join(HERE, folder, "__init__.py")):
            raise RuntimeError(f"{folder}/__init__.py is missing: {name} would not be a package")
        packages += find_packages_under(name, folder)
    return sorted(set(packages)), dict(ROOTS)


PACKAGES, PACKAGE_DIR = discover()

if __name__ == "__main__":
    setup(packages=PACKAGES, package_dir=PACKAGE_DIR)
