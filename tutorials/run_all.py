"""Re-run the tutorial notebooks top to bottom and save their outputs in place.

    python tutorials/run_all.py                 # all notebooks, full mode, outputs saved in place
    python tutorials/run_all.py 02 04           # only the notebooks whose names start with these
    python tutorials/run_all.py --fast          # fast mode (MINIGNN_TUTORIAL_FAST=1), nothing saved
    python tutorials/run_all.py --fast --out /tmp/nbs   # fast mode, executed copies written to /tmp/nbs

Each notebook runs in a fresh ``python3`` Jupyter kernel with ``tutorials/`` as its working
directory. In full mode the executed notebook is written to a temporary file beside the original
and moved over it with ``os.replace`` only once execution has succeeded, so an interrupted or
failing run never damages the committed notebook.

The data root. Notebooks 1, 3 and 5 read CIFAR-10 from the project's data root: ``--data-dir``,
else ``MINIGNN_DATA``, else the per-user cache. A relative ``--data-dir`` or ``MINIGNN_DATA`` is
taken from the folder this script is run in (not from ``tutorials/``, the kernels' folder); the
script makes it absolute before any kernel starts and hands the absolute path to every kernel
as ``MINIGNN_DATA``. A full run never swaps the data: if a notebook that reads CIFAR-10 is
selected and CIFAR-10 is not in the data root, it stops before executing anything (exit 2),
naming the folder it looked in. Fast mode may fall back to the synthetic dataset, and says so.

Needs the test extra (nbformat, nbclient, ipykernel): ``pip install -e '.[test]'``.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
FAST_ENV = "MINIGNN_TUTORIAL_FAST"
DATA_ENV = "MINIGNN_DATA"
PROG = "run_all.py"
#: the packages the runner needs, all in the test extra of pyproject.toml
RUNNER_PACKAGES = ("nbformat", "nbclient", "ipykernel")
INSTALL_HINT = "pip install -e '.[test]'"
#: a code cell containing this reads CIFAR-10 through the data root
CIFAR_CALL = 'load_dataset("cifar10"'


def notebooks(prefixes=()) -> list[Path]:
    """The tutorial notebooks in order, optionally only those whose names start with a prefix."""
    found = sorted(HERE.glob("[0-9][0-9]_*.ipynb"))
    if prefixes:
        found = [p for p in found if any(p.name.startswith(s) for s in prefixes)]
    return found


def missing_runner_packages() -> list[str]:
    """The packages of :data:`RUNNER_PACKAGES` (and minignn itself) that cannot be imported;
    ipykernel is only looked up, not imported (the kernels import it themselves)."""
    missing = []
    for name in ("minignn",) + RUNNER_PACKAGES:
        try:
            if name == "ipykernel":
                if importlib.util.find_spec(name) is None:
                    missing.append(name)
            else:
                importlib.import_module(name)
        except (ImportError, ValueError):   # ValueError: find_spec of a module set to None
            missing.append(name)
    return missing


def reads_cifar(path: Path) -> bool:
    """Whether a code cell of the notebook at ``path`` loads CIFAR-10 through the data root."""
    with open(path, encoding="utf-8") as f:
        nb = json.load(f)
    return any(c.get("cell_type") == "code" and CIFAR_CALL in "".join(c.get("source", ""))
               for c in nb.get("cells", []))


def resolve_data_root(data_dir: str | None = None, environ=None, cwd=None) -> tuple[Path, str]:
    """The absolute data root the kernels will use, and the setting it came from.

    Parameters
    ----------
    data_dir : str, optional
        ``--data-dir``; wins when given (an empty string counts as not given).
    environ : mapping, optional
        The environment to read ``MINIGNN_DATA`` from (default ``os.environ``).
    cwd : path, optional
        The caller's working folder, against which a relative ``data_dir`` or ``MINIGNN_DATA``
        is resolved (default: the current working directory).

    Returns
    -------
    (Path, str)
        The absolute, normalised root (``~`` expanded) and a description of the setting, e.g.
        ``"MINIGNN_DATA='../data' (relative, taken from /home/me/minignn)"``. With neither
        setting it is the per-user cache of :func:`minignn.data.cifar.default_cache_dir`.
    """
    environ = os.environ if environ is None else environ
    cwd = Path(os.getcwd() if cwd is None else cwd)
    if data_dir is not None and str(data_dir) != "":
        raw, setting = str(data_dir), f"--data-dir {str(data_dir)!r}"
    elif environ.get(DATA_ENV):
        raw, setting = environ[DATA_ENV], f"{DATA_ENV}={environ[DATA_ENV]!r}"
    else:
        from minignn.data.cifar import default_cache_dir

        raw, setting = str(default_cache_dir()), f"the per-user cache (neither --data-dir nor {DATA_ENV} set)"
    path = Path(raw).expanduser()
    if not path.is_absolute():
        setting += f" (relative, taken from {cwd})"
        path = cwd / path
    return Path(os.path.abspath(path)), setting


def find_cifar10(root: Path):
    """Make sure CIFAR-10 is in the data root ``root`` as the notebooks will look for it
    (:func:`minignn.data.cifar.prepare` without download: an archive there is verified and
    extracted). Returns the data folder, or None when it is absent. Raises ChecksumError or
    CorruptDataError for a bad archive."""
    from minignn.data import DatasetNotFoundError
    from minignn.data.cifar import prepare

    try:
        return prepare("cifar10", data_dir=root, download_ok=False, progress=False)
    except DatasetNotFoundError:
        return None


def execute(path: Path, fast: bool, timeout: int | None = None, data_root: Path | None = None):
    """Execute the notebook at ``path`` in a fresh kernel; returns (executed notebook, seconds).

    The file on disk is only read. ``fast`` sets MINIGNN_TUTORIAL_FAST=1 for the kernel,
    otherwise the variable is removed (full mode). ``data_root`` (an absolute path), when given,
    is the kernel's MINIGNN_DATA. Both variables are restored afterwards. Raises nbclient's
    CellExecutionError on the first failing cell.
    """
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(str(path), as_version=4)
    saved = {k: os.environ.get(k) for k in (FAST_ENV, DATA_ENV)}
    if fast:
        os.environ[FAST_ENV] = "1"
    else:
        os.environ.pop(FAST_ENV, None)
    if data_root is not None:
        os.environ[DATA_ENV] = str(data_root)
    try:
        client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                resources={"metadata": {"path": str(path.parent)}})
        t0 = time.perf_counter()
        try:
            client.execute()
        except BaseException as e:
            e.notebook = nb  # the partly executed notebook, for --out
            raise
        return nb, time.perf_counter() - t0
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def save_atomic(nb, path: Path) -> None:
    """Write ``nb`` to ``path`` through a temporary file in the same folder and os.replace (the
    original's mode bits kept)."""
    import nbformat

    from minignn.checkpoint import atomic_write

    atomic_write(str(path), lambda f: nbformat.write(nb, f), mode="w")


def _fail(msg: str) -> int:
    print(f"{PROG}: {msg}", file=sys.stderr)
    return 2


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("only", nargs="*", help="run only notebooks whose names start with these (e.g. 01 05)")
    ap.add_argument("--fast", action="store_true",
                    help=f"fast mode ({FAST_ENV}=1); the committed notebooks are not modified")
    ap.add_argument("--out", type=Path, default=None, help="write the executed copies here instead of in place")
    ap.add_argument("--data-dir", default=None,
                    help=f"CIFAR data root for notebooks 1, 3 and 5 (default ${DATA_ENV}, else the per-user cache);"
                         " a relative path is taken from the current folder")
    ap.add_argument("--timeout", type=int, default=None, help="per-cell timeout in seconds (default: none)")
    args = ap.parse_args(argv)

    missing = missing_runner_packages()
    if missing:
        return _fail(f"the notebook runner needs minignn, {', '.join(RUNNER_PACKAGES)} (cannot import"
                     f" {', '.join(missing)}); install the test extra from the repository root: {INSTALL_HINT}")
    todo = notebooks(args.only)
    if not todo:
        return _fail(f"no notebooks matched {args.only} in {HERE}")

    # the data root, absolute, before any kernel starts (the kernels run in tutorials/)
    root, setting = resolve_data_root(args.data_dir)
    cifar_nbs = [p.name for p in todo if reads_cifar(p)]
    if cifar_nbs:
        from minignn.data import ChecksumError, CorruptDataError

        try:
            found = find_cifar10(root)
        except (ChecksumError, CorruptDataError, OSError) as e:
            return _fail(f"the data root {root} (from {setting}) holds unusable CIFAR-10 data: "
                         + " ".join(str(e).split()))
        if found is None and not args.fast:
            return _fail(f"CIFAR-10 not found in the data root {root} (from {setting}); a full run saves the"
                         f" outputs and never falls back to synthetic data: set {DATA_ENV}=DIR or --data-dir DIR"
                         f" to the folder holding cifar-10-batches-py/ (a relative DIR is taken from the folder"
                         f" you run this in), or run with --fast")
        if found is None:
            print(f"fast mode: CIFAR-10 not found in the data root {root} (from {setting});"
                  f" {', '.join(cifar_nbs)} will use the SYNTHETIC dataset instead", flush=True)
        else:
            print(f"CIFAR-10 data root: {root} (from {setting})", flush=True)

    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
    times = []
    for path in todo:
        print(f"{path.name}: running ({'fast' if args.fast else 'full'} mode) ...", flush=True)
        try:
            nb, secs = execute(path, fast=args.fast, timeout=args.timeout, data_root=root)
        except Exception as e:
            if args.out and getattr(e, "notebook", None) is not None:
                save_atomic(e.notebook, args.out / path.name)
                print(f"{path.name}: FAILED; the partly executed copy is in {args.out / path.name}", file=sys.stderr)
            raise
        times.append((path.name, secs))
        if args.out:
            save_atomic(nb, args.out / path.name)
            where = args.out / path.name
        elif not args.fast:
            save_atomic(nb, path)
            where = path
        else:
            where = "not saved (--fast)"
        print(f"{path.name}: {secs:.1f} s -> {where}", flush=True)
    print("\nnotebook                              seconds")
    for name, secs in times:
        print(f"{name:36s} {secs:8.1f}")
    print(f"{'total':36s} {sum(s for _, s in times):8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
