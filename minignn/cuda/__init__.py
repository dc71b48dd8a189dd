"""The GPU kernels' seam: CUDA C sources, and one :func:`launch` for both GPU devices.

Each layer family keeps its CUDA kernels in a ``kernels.cu`` beside its Numba ``cpu.py``, and its
``gpu.py`` glue launches them with ``cuda.launch(SOURCE, name, grid, block, *args)``. The glue is
written against ``xp`` and this one call, so the same code runs on both GPU devices:

* ``gpu``: ``cupy.RawModule`` compiles the source with NVRTC, once per process, and the kernel
  runs on the device;
* ``gpu-sim``: :mod:`minignn.cuda.sim` compiles the same source with the system C++ compiler
  against ``cuda_sim.h`` (the CUDA built-ins), caches the shared library on disk, and runs every
  block and thread of the grid in a loop, in shuffled block order, on NumPy arrays.

Kernel style (what makes the simulation exact): each thread writes only its own outputs, found
by a grid-stride loop (``MINIGNN_GRID_STRIDE`` of ``common.cuh``); no ``__shared__``, barriers,
atomics or warp intrinsics. Sums over windows are gathers by the thread that owns the output, or
per-window partials reduced afterwards with an ``xp`` reduction, so every result is also
deterministic on a real GPU. Kernels are ``extern "C"``; a float32/float64 pair is one template
body with two thin entry points, ``..._f32`` and ``..._f64`` (:func:`suffix`).

Arguments: arrays of the launch's device (C-contiguous) and NumPy scalars of the exact C type
(``np.int32`` for ``int``, ``np.int64`` for ``long long``, ``np.float32`` for ``float``, ...). A
GPU would read a wrong-sized scalar as garbage; ``gpu-sim`` checks every argument against the
kernel's signature and names the one that does not match.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

from .. import backend

__all__ = ["Source", "launch", "grid_1d", "suffix", "sim_compiler_problem", "SIM_CHECK_ENV", "BLOCK"]

HERE = Path(__file__).resolve().parent


@functools.lru_cache(maxsize=None)
def include_dirs() -> tuple:
    """The folders every kernels.cu may include from: this one (``common.cuh``) and the layers
    package (``_window.cuh``), wherever it is installed."""
    import importlib
    return (HERE, Path(importlib.import_module("minignn.layers").__file__).resolve().parent)


def compile_flags() -> list:
    """The flags every compiler of the kernels gets (NVRTC, nvcc, the C++ compiler of gpu-sim):
    the language standard and the :func:`include_dirs`."""
    return ["-std=c++17", *(f"-I{d}" for d in include_dirs())]

#: Set to 1 (the test suite does) to run every gpu-sim launch twice, in two block and thread orders,
#: and require bitwise-equal outputs: a kernel whose result depends on the order races on a GPU.
SIM_CHECK_ENV = "MINIGNN_SIM_CHECK"

#: Threads per block of the 1-D launches.
BLOCK = 256
_MAX_BLOCKS = 8192


class Source:
    """One ``.cu`` file: its path, its text, and the ``extern "C"`` kernels it defines."""

    def __init__(self, path):
        self.path = Path(path).resolve()

    @functools.cached_property
    def text(self) -> str:
        return self.path.read_text()

    @functools.cached_property
    def kernels(self) -> tuple:
        import re
        return tuple(re.findall(r'extern\s+"C"\s+__global__\s+void\s+(\w+)\s*\(', self.text))

    def __repr__(self):
        return f"Source({self.path.name}: {', '.join(self.kernels)})"


def suffix(dtype) -> str:
    """``"_f32"`` or ``"_f64"``: the entry point of a templated kernel for arrays of ``dtype``."""
    dt = np.dtype(dtype)
    if dt == np.float32:
        return "_f32"
    if dt == np.float64:
        return "_f64"
    raise TypeError(f"GPU kernels take float32 or float64 arrays, got {dt}")


def grid_1d(n: int, block: int = BLOCK) -> tuple:
    """A 1-D launch over ``n`` outputs for a grid-stride kernel: ``((blocks,), (block,))``, at most
    8192 blocks (each thread then takes several outputs)."""
    return (max(1, min(_MAX_BLOCKS, -(-int(n) // block))),), (block,)


def sim_compiler_problem() -> str:
    """'' when gpu-sim can build kernels here, else why not (no C++ compiler)."""
    from . import sim
    return sim.compiler_problem()


def _dims(v, what):
    t = (v,) if isinstance(v, (int, np.integer)) else tuple(v)
    if not 1 <= len(t) <= 3 or any(int(d) < 0 for d in t):
        raise ValueError(f"launch: {what}: expected 1 to 3 non-negative sizes, got {v!r}")
    return tuple(int(d) for d in t) + (1,) * (3 - len(t))


def launch(source: Source, name: str, grid, block, *args):
    """Run kernel ``name`` of ``source`` over ``grid`` x ``block`` threads, on the device of its
    array arguments (all on one device: ``gpu`` or ``gpu-sim``). A grid with no blocks does
    nothing."""
    if name not in source.kernels:
        raise ValueError(f"launch: kernel: expected one of {source.kernels} from {source.path.name}, got {name!r}")
    g, b = _dims(grid, "grid"), _dims(block, "block")
    devices = {backend.device_of(a) for a in args if hasattr(a, "dtype") and hasattr(a, "shape") and a.ndim > 0}
    if len(devices) != 1 or devices & {"cpu"}:
        raise TypeError(f"launch {name}: expected its arrays on one GPU device (gpu or gpu-sim), got "
                        f"{sorted(devices) or 'no arrays'}")
    if 0 in g or 0 in b:
        return
    device = devices.pop()
    if device == "gpu-sim":
        from . import sim
        sim.launch(source, name, g, b, args, check=os.environ.get(SIM_CHECK_ENV, "") not in ("", "0"))
    else:
        _gpu_function(source, name)(g, b, args)


@functools.lru_cache(maxsize=None)
def _gpu_module(source_path: str):
    cp = backend._import_cupy()
    src = Source(source_path)
    opts = tuple(compile_flags())
    return cp.RawModule(code=src.text, options=opts, name_expressions=None)


def _gpu_function(source: Source, name: str):
    return _gpu_module(str(source.path)).get_function(name)
