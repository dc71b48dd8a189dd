"""The ``gpu-sim`` device: CUDA kernels compiled by the system C++ compiler and run on the CPU.

A ``kernels.cu`` is compiled as C++ with ``cuda_sim.h`` forced in first (``-include``: it defines
``__global__``, ``threadIdx``, ``blockIdx``, ``blockDim``, ``gridDim`` and the math functions),
followed by ``launch_sim.h`` and, for every ``extern "C"`` kernel, two generated C entry points:
``minignn_sim_<name>`` runs the whole grid (every block, in the order given, and every thread of
it) and ``minignn_sig_<name>`` spells the kernel's parameter types. The shared library is cached
on disk under a hash of everything that went into it (sources, headers, compiler and flags), in
``$MINIGNN_SIM_CACHE`` or ``~/.cache/minignn/gpu-sim``, written to a temporary name and renamed
into place, so concurrent builds and interrupted ones never leave a broken library behind.

Each launch checks its arguments against the signature: an array for every pointer, of the
pointee's dtype, C-contiguous and on gpu-sim; a NumPy scalar of the exact type for every value
(a GPU would silently misread a float64 passed for a float). With ``check=True`` (the test
suite's ``MINIGNN_SIM_CHECK=1``) the grid runs twice, in two shuffled block orders and with the
threads of each block forwards then backwards, from the same starting outputs, and the outputs of
the two runs must be bitwise equal.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import numpy as np

from . import HERE, Source, compile_flags, include_dirs

__all__ = ["compiler", "compiler_problem", "library", "signature", "launch", "build_command", "SimOrderError"]

_FLAGS = ("-O2", "-shared", "-fPIC", "-fno-fast-math", "-ffp-contract=off", "-w")
_lock = threading.Lock()
_libs: dict = {}
_launches = [0]
#: (source file, kernel) of every launch in this process: the tests check that none escaped them
launched: set = set()


class SimOrderError(AssertionError):
    """A kernel's outputs differ between two orders of its blocks and threads: a race on a GPU."""


def compiler() -> str | None:
    """The C++ compiler gpu-sim uses: ``$CXX``, else g++, c++ or clang++ from PATH."""
    cxx = os.environ.get("CXX")
    if cxx:
        return shutil.which(cxx) or None
    for name in ("g++", "c++", "clang++"):
        found = shutil.which(name)
        if found:
            return found
    return None


def compiler_problem() -> str:
    if compiler() is None:
        return ("no C++ compiler was found for it (install g++, or set CXX)" if not os.environ.get("CXX")
                else f"the C++ compiler CXX={os.environ['CXX']!r} was not found")
    return ""


def cache_dir() -> Path:
    d = os.environ.get("MINIGNN_SIM_CACHE")
    if d:
        return Path(d)
    base = os.environ.get("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache"))
    return Path(base) / "minignn" / "gpu-sim"


def _translation_unit(source: Source) -> str:
    lines = [f'#include "{source.path}"', f'#include "{HERE / "launch_sim.h"}"']
    for k in source.kernels:
        lines.append(f'extern "C" void minignn_sim_{k}(const long long* d, const long long* o, int r, void** a)'
                     f' {{ minignn_sim::run({k}, d, o, r, a); }}')
        lines.append(f'extern "C" const char* minignn_sig_{k}() {{ return minignn_sim::signature({k}); }}')
    return "\n".join(lines) + "\n"


def _included_texts(path: Path, seen: set) -> list:
    """The text of ``path`` and of every file it includes with ``#include "..."``, found in its
    own folder or the include folders."""
    if path in seen:
        return []
    seen.add(path)
    text = path.read_text()
    out = [str(path), text]
    for inc in re.findall(r'^\s*#\s*include\s+"([^"]+)"', text, flags=re.M):
        for d in (path.parent,) + include_dirs():
            p = (Path(d) / inc).resolve()
            if p.exists():
                out += _included_texts(p, seen)
                break
    return out


def build_command(source: Source, out: str, tu: str, extra=()) -> list:
    cxx = compiler()
    return [cxx, *_FLAGS, *extra, "-include", str(HERE / "cuda_sim.h"), *compile_flags(), "-x", "c++", tu, "-o", out]


def _compiler_version(cxx: str) -> str:
    try:
        return subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def library(source: Source) -> ctypes.CDLL:
    """The compiled gpu-sim library of ``source`` (built on first use, then cached on disk)."""
    key = str(source.path)
    lib = _libs.get(key)
    if lib is not None:
        return lib
    with _lock:
        if key in _libs:
            return _libs[key]
        why = compiler_problem()
        if why:
            raise RuntimeError(f"gpu-sim: {why}")
        tu = _translation_unit(source)
        h = hashlib.sha256()
        for part in [tu, *_included_texts(HERE / "cuda_sim.h", set()), *_included_texts(HERE / "launch_sim.h", set()),
                     *_included_texts(source.path, set()), compiler(), _compiler_version(compiler()), *_FLAGS,
                     *compile_flags()]:
            h.update(part.encode())
        d = cache_dir()
        d.mkdir(parents=True, exist_ok=True)
        so = d / f"{source.path.parent.name}-{source.path.stem}-{h.hexdigest()[:20]}.so"
        if not so.exists():
            with tempfile.TemporaryDirectory(dir=d) as tmp:
                tu_path = os.path.join(tmp, "tu.cpp")
                Path(tu_path).write_text(tu)
                part = os.path.join(tmp, "lib.so")
                r = subprocess.run(build_command(source, part, tu_path), capture_output=True, text=True)
                if r.returncode != 0:
                    raise RuntimeError(f"gpu-sim: {source.path} does not compile as C++:\n{r.stderr[-4000:]}")
                os.replace(part, so)
        lib = ctypes.CDLL(str(so))
        for k in source.kernels:
            f = getattr(lib, f"minignn_sim_{k}")
            f.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
            f.restype = None
            getattr(lib, f"minignn_sig_{k}").restype = ctypes.c_char_p
        _libs[key] = lib
        return lib


def signature(source: Source, name: str) -> list:
    """The parameter types of kernel ``name``: e.g. ``['const float32*', 'float32*', 'int32']``."""
    sig = getattr(library(source), f"minignn_sig_{name}")().decode()
    return sig.split(",") if sig else []


_CTYPES = {"float32": ctypes.c_float, "float64": ctypes.c_double, "int32": ctypes.c_int32, "int64": ctypes.c_int64,
           "uint32": ctypes.c_uint32, "uint64": ctypes.c_uint64, "int8": ctypes.c_int8, "uint8": ctypes.c_uint8,
           "int16": ctypes.c_int16}


def _pack(name, sig, args):
    """ctypes holders for ``args``, checked against ``sig``; and the output arrays."""
    from ..backend import SimArray
    if len(sig) != len(args):
        raise TypeError(f"launch {name}: expected {len(sig)} arguments ({', '.join(sig)}), got {len(args)}")
    holders, outputs = [], []
    for i, (t, a) in enumerate(zip(sig, args)):
        if t.endswith("*"):
            want = t[:-1].replace("const ", "")
            if not isinstance(a, SimArray):
                raise TypeError(f"launch {name}: argument {i}: expected a gpu-sim array of {want} for {t},"
                                f" got {type(a).__name__}")
            if a.dtype != np.dtype(want):
                raise TypeError(f"launch {name}: argument {i}: expected dtype {want} for {t}, got {a.dtype}")
            if not a.flags.c_contiguous:
                raise ValueError(f"launch {name}: argument {i}: expected a C-contiguous array, got strides {a.strides}")
            if not t.startswith("const "):
                if not a.flags.writeable:
                    raise ValueError(f"launch {name}: argument {i}: the output array is read-only")
                outputs.append(a)
            holders.append(ctypes.c_void_p(a.ctypes.data))
        else:
            if t not in _CTYPES:
                raise TypeError(f"launch {name}: argument {i}: unsupported parameter type {t}")
            if not isinstance(a, np.generic) or a.dtype != np.dtype(t):
                got = f"{type(a).__name__}" + (f" ({a.dtype})" if hasattr(a, "dtype") else "")
                raise TypeError(f"launch {name}: argument {i}: expected a NumPy {t} scalar (np.{t}(...)) for a"
                                f" {t} parameter, got {got}")
            holders.append(_CTYPES[t](a.item()))
    ptrs = (ctypes.c_void_p * max(1, len(holders)))(*[ctypes.cast(ctypes.pointer(h), ctypes.c_void_p)
                                                      for h in holders])
    return holders, ptrs, outputs


def _run(lib, name, dims, order, reverse, ptrs):
    getattr(lib, f"minignn_sim_{name}")(dims.ctypes.data, order.ctypes.data, int(reverse), ptrs)


def launch(source: Source, name: str, grid: tuple, block: tuple, args, check: bool = False):
    """Run kernel ``name`` over the grid on the CPU (see the module docstring)."""
    lib = library(source)
    holders, ptrs, outputs = _pack(name, signature(source, name), args)
    dims = np.array(grid + block, dtype=np.int64)
    nb = int(np.prod(grid))
    _launches[0] += 1
    launched.add((str(source.path), name))
    rng = np.random.default_rng([int(os.environ.get("MINIGNN_SIM_SEED", "0")), _launches[0]])
    order = rng.permutation(nb).astype(np.int64)
    if not check:
        _run(lib, name, dims, order, False, ptrs)
        return
    start = [o.copy() for o in outputs]
    _run(lib, name, dims, order, False, ptrs)
    first = [o.copy() for o in outputs]
    for o, s in zip(outputs, start):
        o[...] = s
    order2 = rng.permutation(nb).astype(np.int64) if nb > 1 else order
    _run(lib, name, dims, order2[::-1].copy(), True, ptrs)
    for i, (o, f) in enumerate(zip(outputs, first)):
        if o.tobytes() != f.tobytes():
            diff = np.flatnonzero(o.view(np.uint8).reshape(-1) != f.view(np.uint8).reshape(-1))
            raise SimOrderError(f"launch {name}: output array {i} differs between two block/thread orders (first at"
                                f" byte {int(diff[0])} of {o.nbytes}): its threads read or write each other's"
                                f" outputs, a race on a GPU")
    del holders
