"""Devices and arrays.

Arrays in minignn are plain ``numpy.ndarray`` (CPU) or ``cupy.ndarray`` (GPU) in NCHW layout,
float32 by default and float64 wherever exact gradient checks need it. Layers never branch on
the device themselves: they ask :func:`get_array_module` for ``xp`` when NumPy-style code is
enough, or :func:`minignn.ops.kernels` for the CPU or GPU kernels of an op, chosen by the array
type in that one place.

CuPy is imported lazily, on first need, so a CPU-only install never pays for it.
"""
from __future__ import annotations

import importlib
from typing import Any

import numpy as np

_cupy: Any = None  # the cupy module once imported; False once known to be absent
_gpu_usable: bool | None = None
_gpu_reason: str = ""

DEVICES = ("cpu", "gpu")


def _import_cupy():
    """Return the cupy module, or None when it is not installed (imported once)."""
    global _cupy
    if _cupy is None:
        try:
            _cupy = importlib.import_module("cupy")
        except Exception:  # ImportError, or a broken CUDA install raising at import
            _cupy = False
    return _cupy or None


def is_gpu_array(x) -> bool:
    """True for a cupy.ndarray (without importing CuPy when it was never imported)."""
    return type(x).__module__.startswith("cupy")


def get_array_module(*arrays):
    """``numpy`` or ``cupy``, from the type of the first array that is a cupy array (Chainer style)."""
    for a in arrays:
        if is_gpu_array(a):
            return _import_cupy()
    return np


def device_of(x) -> str:
    """'gpu' for a cupy array, 'cpu' otherwise."""
    return "gpu" if is_gpu_array(x) else "cpu"


def gpu_available() -> bool:
    """True when a CUDA device can actually run work: CuPy imports, a device is present, and one
    small elementwise kernel compiles and runs. The answer is cached; the reason for a False is
    in :func:`gpu_unavailable_reason`."""
    global _gpu_usable, _gpu_reason
    if _gpu_usable is not None:
        return _gpu_usable
    cp = _import_cupy()
    if cp is None:
        _gpu_usable, _gpu_reason = False, "CuPy is not installed (pip install 'minignn[cuda12]' or 'minignn[cuda13]')"
        return False
    try:
        n = cp.cuda.runtime.getDeviceCount()
        if n < 1:
            raise RuntimeError("no CUDA device found")
        k = cp.ElementwiseKernel("float32 a", "float32 b", "b = a * 2.0f", "minignn_probe")
        out = k(cp.arange(4, dtype=cp.float32))
        if float(out.sum().get()) != 12.0:
            raise RuntimeError("probe kernel gave a wrong result")
        _gpu_usable, _gpu_reason = True, ""
    except Exception as e:  # pragma: no cover - depends on the machine
        _gpu_usable, _gpu_reason = False, f"CuPy is installed but no usable CUDA device: {e}"
    return _gpu_usable


def gpu_unavailable_reason() -> str:
    gpu_available()
    return _gpu_reason


def check_device(device: str) -> str:
    """Validate a device name; raise a clear error for 'gpu' without a usable GPU."""
    if device not in DEVICES:
        raise ValueError(f"device: expected one of {DEVICES}, got {device!r}")
    if device == "gpu" and not gpu_available():
        raise RuntimeError(f"device='gpu' was asked for, but {gpu_unavailable_reason()}")
    return device


def xp_for(device: str):
    """The array module for a device name."""
    check_device(device)
    return np if device == "cpu" else _import_cupy()


def to_device(x, device: str):
    """Copy an array to 'cpu' (numpy) or 'gpu' (cupy); returns x itself when already there."""
    check_device(device)
    if device == "cpu":
        return x.get() if is_gpu_array(x) else np.asarray(x)
    cp = _import_cupy()
    return x if is_gpu_array(x) else cp.asarray(x)


def to_numpy(x) -> np.ndarray:
    """A numpy view or copy of any array (cupy arrays are copied to the host)."""
    return x.get() if is_gpu_array(x) else np.asarray(x)
