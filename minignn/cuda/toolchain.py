"""The compile tier: every CUDA source of minignn built for real GPU architectures, on any machine.

No GPU and no driver are needed to compile. For each ``kernels.cu`` and each architecture
(``sm_80``, ``sm_90`` by default):

* with ``nvcc`` (CUDA's compiler; on PATH, in ``$CUDA_HOME/bin`` or ``/usr/local/cuda/bin``):
  ``nvcc -cubin --resource-usage -Werror all-warnings``, which reports each kernel's registers,
  stack frame and spill stores/loads;
* with NVRTC through CuPy's bindings, when CuPy is installed: the very compiler ``cupy.RawModule``
  uses at run time (``-arch=compute_XX``), which must accept the source without a warning.

A warning, an error or a register spill is a failure. ``python -m minignn.cuda.toolchain`` prints
the table of registers per kernel; ``tests/test_cuda.py`` runs it in CI.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from . import Source, compile_flags, include_dirs

__all__ = ["sources", "nvcc", "nvrtc_available", "compile_nvcc", "compile_nvrtc", "KernelUsage", "CompileError",
           "ARCHS"]

ARCHS = ("sm_80", "sm_90")


class CompileError(RuntimeError):
    """A source that does not compile cleanly: the compiler's messages are in the text."""


@dataclass
class KernelUsage:
    name: str
    registers: int = 0
    stack: int = 0
    spill_stores: int = 0
    spill_loads: int = 0


@dataclass
class Report:
    source: Path
    arch: str
    compiler: str
    kernels: dict = field(default_factory=dict)
    log: str = ""


def sources() -> list:
    """Every ``.cu`` file of minignn (the layers package and the data package), as
    :class:`minignn.cuda.Source`."""
    here, layers = include_dirs()
    return [Source(p) for p in sorted(layers.rglob("*.cu")) + sorted(here.parent.glob("*/*.cu"))]


def nvcc() -> str | None:
    found = shutil.which("nvcc")
    if found:
        return found
    for d in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if d and os.access(os.path.join(d, "bin", "nvcc"), os.X_OK):
            return os.path.join(d, "bin", "nvcc")
    return None


def _nvrtc():
    try:
        from cupy_backends.cuda.libs import nvrtc
        nvrtc.getVersion()
        return nvrtc
    except Exception:  # not installed, or the NVRTC library is missing
        return None


def nvrtc_available() -> bool:
    return _nvrtc() is not None


def compile_nvcc(source: Source, arch: str = "sm_90") -> Report:
    """Build ``source`` to a cubin for ``arch``; raises CompileError on any warning or error."""
    exe = nvcc()
    if exe is None:
        raise CompileError("nvcc was not found (PATH, $CUDA_HOME/bin, /usr/local/cuda/bin)")
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [exe, f"-arch={arch}", "-cubin", "--resource-usage", "-Werror", "all-warnings",
               *compile_flags(), "-o", os.path.join(tmp, "k.cubin"), str(source.path)]
        r = subprocess.run(cmd, capture_output=True, text=True)
    log = r.stdout + r.stderr
    if r.returncode != 0:
        raise CompileError(f"nvcc {arch}: {source.path} failed:\n{log[-4000:]}")
    rep = Report(source.path, arch, "nvcc", log=log)
    current = None
    for line in log.splitlines():
        m = re.search(r"Function properties for (\w+)", line)
        if m:
            current = rep.kernels.setdefault(m.group(1), KernelUsage(m.group(1)))
            continue
        m = re.search(r"Compiling entry function '(\w+)'", line)
        if m:
            current = rep.kernels.setdefault(m.group(1), KernelUsage(m.group(1)))
            continue
        if current is None:
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            current.stack, current.spill_stores, current.spill_loads = map(int, m.groups())
        m = re.search(r"Used (\d+) registers", line)
        if m:
            current.registers = int(m.group(1))
    missing = sorted(set(source.kernels) - set(rep.kernels))
    if missing:
        raise CompileError(f"nvcc {arch}: {source.path}: no resource usage reported for {missing}:\n{log[-2000:]}")
    spills = [k for k in rep.kernels.values() if k.spill_stores or k.spill_loads]
    if spills:
        raise CompileError(f"nvcc {arch}: {source.path}: register spills in "
                           + ", ".join(f"{k.name} ({k.spill_stores} B stored, {k.spill_loads} B loaded)" for k in spills))
    return rep


def compile_nvrtc(source: Source, arch: str = "sm_90") -> Report:
    """Compile ``source`` to PTX with NVRTC (what cupy.RawModule does); raises CompileError on an
    error or a warning in the program log."""
    nvrtc = _nvrtc()
    if nvrtc is None:
        raise CompileError("NVRTC is not available (pip install 'minignn[cuda12]' or 'minignn[cuda13]')")
    opts = [f"-arch=compute_{arch.split('_')[1]}", *compile_flags()]
    prog = nvrtc.createProgram(source.text, source.path.name, [], [])
    try:
        try:
            nvrtc.compileProgram(prog, opts)
            ok = True
        except nvrtc.NVRTCError:
            ok = False
        log = nvrtc.getProgramLog(prog)
        if isinstance(log, bytes):
            log = log.decode(errors="replace")
    finally:
        nvrtc.destroyProgram(prog)
    if not ok or "warning" in log.lower() or "error" in log.lower():
        raise CompileError(f"NVRTC {arch}: {source.path}:\n{log[-4000:]}")
    return Report(source.path, arch, "nvrtc", log=log)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m minignn.cuda.toolchain",
                                description="Compile every CUDA source of minignn and print registers per kernel.")
    p.add_argument("--arch", action="append", help=f"(default {', '.join(ARCHS)}; repeatable)")
    args = p.parse_args(argv)
    archs = args.arch or list(ARCHS)
    if nvcc() is None and not nvrtc_available():
        print("neither nvcc nor NVRTC (CuPy) is available: nothing compiled", file=sys.stderr)
        return 2
    failed = 0
    print(f"{'source':<26} {'kernel':<34} " + " ".join(f"{a + ' regs':>12}" for a in archs))
    for src in sources():
        rows: dict = {}
        for arch in archs:
            try:
                if nvcc() is not None:
                    for k, u in compile_nvcc(src, arch).kernels.items():
                        rows.setdefault(k, {})[arch] = str(u.registers)
                if nvrtc_available():
                    compile_nvrtc(src, arch)
            except CompileError as e:
                failed += 1
                print(e, file=sys.stderr)
        rel = f"{src.path.parent.name}/{src.path.name}"
        for k in src.kernels:
            print(f"{rel:<26} {k:<34} " + " ".join(f"{rows.get(k, {}).get(a, '-'):>12}" for a in archs))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
