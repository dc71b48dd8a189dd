"""``minignn bench`` run as a user would, in subprocesses: every benchmark in tiny mode without
PyTorch (its columns print '-', never a crash or 'nan') and with it when it is importable (its
columns hold numbers); bad arguments exit 2 with one line naming the flag or the name, no traceback.
Nothing here asserts a time: the tables are only read for their shape and their cells' kinds.
"""
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import minignn.bench as bench
from minignn.bench import BENCHMARKS
from minignn.bench.layers import KERNEL_ROWS
from minignn.layers import POOLINGS

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 600  # generous: the first run on a fresh machine compiles the kernels
NAMES = list(BENCHMARKS)

# what each table looks like: its title's start, its first header, and its torch cells as
# (row predicate, columns): '-' without torch, numbers with it. Every other cell of the torch
# columns is '-' either way (no torch counterpart, e.g. the fused kernel's forward alone).
TABLES = {
    "layers": {
        "title": "Per-layer forward+backward (median of ",
        "first": "layer (fwd+bwd, float32)",
        "rows": ["Conv2d 8->16 3x3 p1", "BatchNorm2d(8)", "ReLU", "Linear 32->32", "MaxPool2d 2x2", "AvgPool2d 2x2",
                 "MaxPool2d 3x3 s2 p1", "GlobalAvgPool2d", "MaxEntPool2d 2x2 GFGP"],
        "own": ["ms"],
        "torch": [(lambda r: r != "MaxEntPool2d 2x2 GFGP", ["torch ms", "x torch"])],
        "torch_cols": ["torch ms", "x torch"],
        "extra": "layers-pools",
    },
    # the second table of "layers": one row per pooling of the registry
    "layers-pools": {
        "title": "Poolings of --pool, 2x2 stride 2, on (2, 8, 8, 8) ReLU outputs",
        "first": "pool (fwd+bwd, float32)",
        "rows": [r for n in POOLINGS for r in ((n, f"{n} (kernel)") if n in KERNEL_ROWS else (n,))],
        "own": ["ms", "floor ms", "x floor"],
        "torch": [(lambda r: True, ["x torch max_pool2d"])],
        "torch_cols": ["x torch max_pool2d"],
    },
    "maxent": {
        "title": "Max-entropy pooling, (N, C, H, W) = (2, 8, 8, 8)",
        "first": "case (float32, 2x2 s2)",
        "rows": ["maxent forward (fused kernel)", "maxent backward (fused kernel)", "maxent forward+backward",
                 "MaxEntPool2d(8) GFGP layer fwd+bwd", "torch max_pool2d fwd+bwd",
                 "torch maxent unfold+softmax+autograd"],
        "own": ["floor ms"],
        "torch": [(lambda r: r in ("maxent forward+backward", "MaxEntPool2d(8) GFGP layer fwd+bwd"),
                   ["x torch max", "x torch maxent"]),
                  (lambda r: r.startswith("torch "), ["ms", "x floor"])],
        "torch_cols": ["x torch max", "x torch maxent"],
    },
    "vgg": {
        "title": "VGG-11 CIFAR training step (median of ",
        "first": "batch 2, float32",
        "rows": ["VGG-11 step, max pooling", "VGG-11 step, gfgp pooling"],
        "own": ["minignn ms", "x own max"],
        "torch": [(lambda r: True, ["torch ms", "x torch", "torch x own max"])],
        "torch_cols": ["torch ms", "x torch", "torch x own max"],
    },
    "conv": {
        "title": "VGG-11/CIFAR convolutions, float32, median of ",
        "first": "Conv2d 3x3 p1 fwd+bwd (N=2)",
        "rows": ["3->8 @32x32", "8->16 @16x16", "16->32 @8x8", "32->32 @8x8", "32->64 @4x4", "64->64 @4x4",
                 "64->64 @2x2", "64->64 @2x2", "total"],
        "own": ["ms"],
        "torch": [(lambda r: True, ["torch ms", "x torch"])],
        "torch_cols": ["torch ms", "x torch"],
    },
}

# the child hides torch this way: importing a None entry of sys.modules raises ImportError
NO_TORCH = "import sys; sys.modules['torch'] = None; "


def _env():
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    return env


def _python(code: str):
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=TIMEOUT)


def run_bench(args, torch: bool):
    """``minignn.bench.main(ARGS)`` in a child, with torch hidden unless ``torch``."""
    return _python((NO_TORCH if not torch else "") +
                   f"from minignn.bench import main; raise SystemExit(main({list(args)!r}))")


def run_cli(args):
    """``minignn.cli.main(['bench', *ARGS])`` in a child (the ``minignn bench`` command), torch hidden."""
    return _python(NO_TORCH + f"from minignn.cli import main; raise SystemExit(main({['bench', *args]!r}))")


def parse_table(out: str, title: str):
    """The table whose title line starts with ``title``: (headers, {row name: {header: cell}}, row
    names in order). Columns are cut at the dashes line's column boundaries."""
    lines = out.splitlines()
    starts = [i for i, ln in enumerate(lines) if ln.startswith(title)]
    assert len(starts) == 1, f"expected one table titled {title!r}, found {len(starts)} in:\n{out}"
    i = starts[0]
    header, dashes = lines[i + 1], lines[i + 2]
    assert set(dashes) <= {"-", " "} and dashes.strip(), f"no dashes line under {title!r}:\n{out}"
    spans = [m.span() for m in re.finditer(r"-+", dashes)]
    # a cell may be wider than nothing else: each column runs from the end of the previous dashes
    cuts = [0] + [e for _, e in spans[:-1]] + [None]

    def cells(line):
        return [line[a:b].strip() for a, b in zip(cuts[:-1], cuts[1:])]

    headers = cells(header)
    names, rows = [], {}
    for ln in lines[i + 3:]:
        if not ln.strip():
            break
        c = cells(ln)
        names.append(c[0])
        rows.setdefault(c[0], []).append(dict(zip(headers, c)))
    return headers, rows, names


def _number(cell: str) -> float:
    v = float(cell)  # raises for '-' or text
    assert math.isfinite(v), cell
    return v


def check_table(out: str, name: str, torch: bool):
    spec = TABLES[name]
    headers, rows, names = parse_table(out, spec["title"])
    assert headers[0] == spec["first"], headers
    assert names == spec["rows"], names
    for col in spec["torch_cols"] + spec["own"]:
        assert col in headers, (col, headers)
    for rname, group in rows.items():
        for row in group:
            for col in spec["own"]:
                assert _number(row[col]) >= 0, (name, rname, col, row[col])
            torch_cells = {c for pred, cols in spec["torch"] if pred(rname) for c in cols}
            for col in set(spec["torch_cols"]) | torch_cells:
                if col in torch_cells and torch:
                    assert _number(row[col]) >= 0, (name, rname, col, row[col])
                else:
                    assert row[col] == "-", (name, rname, col, row[col], "torch" if torch else "no torch")
    if "extra" in spec:
        check_table(out, spec["extra"], torch)


def check_ok(r):
    assert r.returncode == 0, f"exit {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    assert "Traceback" not in r.stderr, r.stderr
    assert not re.search(r"\bnan\b", r.stdout, re.IGNORECASE), r.stdout
    assert not re.search(r"\binf\b", r.stdout, re.IGNORECASE), r.stdout
    assert "tiny mode" in r.stdout, r.stdout


@pytest.mark.parametrize("name", NAMES)
def test_tiny_benchmark_without_torch(name):
    r = run_bench(["--tiny", name], torch=False)
    check_ok(r)
    check_table(r.stdout, name, torch=False)
    for other in set(NAMES) - {name}:  # only the named one ran
        assert TABLES[other]["title"] not in r.stdout
    if name == "maxent":
        assert "(torch not installed: '-')" in r.stdout


def test_python_dash_m_tiny_runs_all_without_torch():
    """``python3 -m minignn.bench --tiny``, through the package's __main__, torch hidden: all four tables."""
    r = _python(NO_TORCH + "import runpy; sys.argv = ['minignn.bench', '--tiny']; "
                           "runpy.run_module('minignn.bench', run_name='__main__', alter_sys=True)")
    check_ok(r)
    for name in NAMES:
        check_table(r.stdout, name, torch=False)


def test_tiny_all_with_torch():
    pytest.importorskip("torch")
    r = run_bench(["--tiny"], torch=True)
    check_ok(r)
    assert "differs from ours" not in r.stdout, r.stdout  # the PyTorch max-entropy pooling agrees
    for name in NAMES:
        check_table(r.stdout, name, torch=True)


def test_tiny_via_cli_honours_repeats_and_batch_size():
    r = run_cli(["--tiny", "--repeats", "2", "--batch-size", "3", "vgg"])
    check_ok(r)
    headers, rows, names = parse_table(r.stdout, "VGG-11 CIFAR training step (median of 2)")
    assert headers[0] == "batch 3, float32"
    assert names == TABLES["vgg"]["rows"]


# bad arguments: exit status 2, one stderr line naming the flag or the name, no traceback
HINT = " (minignn bench --help lists the options)"
BAD = [
    (["--repeats", "0"], "minignn bench: error: --repeats: expected an integer >= 1, got '0'" + HINT),
    (["--repeats", "x"], "minignn bench: error: --repeats: expected an integer >= 1, got 'x'" + HINT),
    (["--batch-size", "0", "vgg"], "minignn bench: error: --batch-size: expected an integer >= 1, got '0'" + HINT),
    (["--tiny", "maxx"], "minignn bench: error: unknown benchmark 'maxx'; expected some of layers, maxent, vgg, conv" + HINT),
    (["maxent", "a", "b"], "minignn bench: error: unknown benchmarks 'a', 'b'; expected some of layers, maxent, "
                           "vgg, conv" + HINT),
]


@pytest.mark.parametrize("args,line", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_arguments_exit_2_naming_the_flag(args, line):
    r = run_cli(args)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip() == line, r.stderr     # one line: no usage block before it
    assert r.stdout == "", r.stdout  # nothing measured


def test_help_lists_names_and_tiny():
    r = run_cli(["--help"])
    assert r.returncode == 0, r.stderr
    assert "--tiny" in r.stdout and "--repeats" in r.stdout and "--batch-size" in r.stdout
    for name in NAMES:
        assert name in r.stdout


# in-process: what each benchmark function is handed (the defaults stay those of the full run)
@pytest.fixture
def recorded(monkeypatch, capsys):
    import types

    from minignn.bench import harness
    calls = []
    fake = types.ModuleType("fake_bench")
    for name, (_, fn) in BENCHMARKS.items():
        setattr(fake, fn, lambda _n=name, **kw: calls.append((_n, kw)))
    monkeypatch.setitem(sys.modules, "fake_bench", fake)
    monkeypatch.setattr(bench, "BENCHMARKS", {n: ("fake_bench", fn) for n, (_, fn) in BENCHMARKS.items()})
    monkeypatch.setattr(harness, "copy_bandwidth", lambda nbytes=0, repeats=0: 1e9)
    monkeypatch.setattr(harness, "gemm_rate", lambda n=0, repeats=0: 1e9)
    return calls


@pytest.mark.parametrize("argv,expected", [
    ([], [(n, {"repeats": 5}) for n in NAMES]),
    (["conv", "vgg", "--batch-size", "64"], [("conv", {"repeats": 5}), ("vgg", {"repeats": 5, "batch_size": 64})]),
    (["--tiny"], [(n, {"repeats": 1, "tiny": True}) for n in NAMES]),
    (["--tiny", "--repeats", "3", "maxent"], [("maxent", {"repeats": 3, "tiny": True})]),
])
def test_arguments_reach_the_benchmarks(recorded, argv, expected):
    assert bench.main(argv) == 0
    assert recorded == expected


def test_run_rejects_unknown_names_with_a_clear_error():
    args = bench.build_parser().parse_args(["maxx"])
    with pytest.raises(ValueError, match=r"unknown benchmark 'maxx'; expected some of layers, maxent, vgg, conv"):
        bench.run(args)


def test_bench_functions_take_the_tiny_flag():
    import importlib
    import inspect
    for mod, fn in BENCHMARKS.values():
        params = inspect.signature(getattr(importlib.import_module(mod), fn)).parameters
        assert "tiny" in params and params["tiny"].default is False, (mod, fn)
        assert params["repeats"].default == 5, (mod, fn)
