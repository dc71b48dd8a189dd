"""Re-run the tutorial notebooks top to bottom and save their outputs in place.

    python tutorials/run_all.py                 # all notebooks, full mode, outputs saved in place
    python tutorials/run_all.py 02 04           # only the notebooks whose names start with these
    python tutorials/run_all.py --fast          # fast mode (MINIGNN_TUTORIAL_FAST=1), nothing saved
    python tutorials/run_all.py --fast --out /tmp/nbs   # fast mode, executed copies written to /tmp/nbs

Each notebook runs in a fresh ``python3`` Jupyter kernel with ``tutorials/`` as its working
directory. In full mode the executed notebook is written to a temporary file beside the original
and moved over it with ``os.replace`` only once execution has succeeded, so an interrupted or
failing run never damages the committed notebook. Notebooks 1, 3 and 5 read CIFAR-10 from the
project's data root (``MINIGNN_DATA`` or ``--data-dir`` below) and fall back to the synthetic
dataset, saying so, when it is absent.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
FAST_ENV = "MINIGNN_TUTORIAL_FAST"


def notebooks(prefixes=()) -> list[Path]:
    """The tutorial notebooks in order, optionally only those whose names start with a prefix."""
    found = sorted(HERE.glob("[0-9][0-9]_*.ipynb"))
    if prefixes:
        found = [p for p in found if any(p.name.startswith(s) for s in prefixes)]
    return found


def execute(path: Path, fast: bool, timeout: int | None = None):
    """Execute the notebook at ``path`` in a fresh kernel; returns (executed notebook, seconds).

    The file on disk is only read. ``fast`` sets MINIGNN_TUTORIAL_FAST=1 for the kernel,
    otherwise the variable is removed (full mode). Raises nbclient's CellExecutionError on the
    first failing cell.
    """
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(str(path), as_version=4)
    old = os.environ.get(FAST_ENV)
    if fast:
        os.environ[FAST_ENV] = "1"
    else:
        os.environ.pop(FAST_ENV, None)
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
        if old is None:
            os.environ.pop(FAST_ENV, None)
        else:
            os.environ[FAST_ENV] = old


def save_atomic(nb, path: Path) -> None:
    """Write ``nb`` to ``path`` through a temporary file in the same folder and os.replace (the
    original's mode bits kept)."""
    import nbformat

    from minignn.checkpoint import atomic_write

    atomic_write(str(path), lambda f: nbformat.write(nb, f), mode="w")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("only", nargs="*", help="run only notebooks whose names start with these (e.g. 01 05)")
    ap.add_argument("--fast", action="store_true",
                    help=f"fast mode ({FAST_ENV}=1); the committed notebooks are not modified")
    ap.add_argument("--out", type=Path, default=None, help="write the executed copies here instead of in place")
    ap.add_argument("--data-dir", default=None, help="CIFAR data root for notebooks 1, 3 and 5 (sets MINIGNN_DATA)")
    ap.add_argument("--timeout", type=int, default=None, help="per-cell timeout in seconds (default: none)")
    args = ap.parse_args(argv)

    if args.data_dir:
        os.environ["MINIGNN_DATA"] = str(Path(args.data_dir).resolve())
    todo = notebooks(args.only)
    if not todo:
        print(f"no notebooks matched {args.only} in {HERE}", file=sys.stderr)
        return 2
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
    times = []
    for path in todo:
        print(f"{path.name}: running ({'fast' if args.fast else 'full'} mode) ...", flush=True)
        try:
            nb, secs = execute(path, fast=args.fast, timeout=args.timeout)
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
