"""Devices and arrays.

Three devices, named everywhere a device is named (``to_device``, ``Module.to``, ``--device``):

* ``"cpu"``: plain ``numpy.ndarray``; the kernels are Numba.
* ``"gpu"``: ``cupy.ndarray``; the kernels are the CUDA C of each family's ``kernels.cu``.
* ``"gpu-sim"``: the GPU code path executed on the CPU. Arrays are :class:`SimArray` (a NumPy
  array that knows it lives on the simulated device), ``xp`` is :data:`sim_numpy` (NumPy whose
  results stay SimArrays, as CuPy's stay on the GPU), and the very same ``kernels.cu`` is
  compiled by the system C++ compiler and run block by block on the CPU (:mod:`minignn.cuda`).
  Everything a GPU run executes, glue and kernels, runs here too: a student without a GPU can
  step through it, and CI tests every line of it.

Arrays are NCHW, float32 by default and float64 wherever exact gradient checks need it. Layers
never branch on the device themselves: they ask :func:`get_array_module` for ``xp`` when
NumPy-style code is enough, or :func:`minignn.ops.kernels` for the device's kernels of an op,
chosen by the array type in that one place.

CuPy is imported lazily, on first need, so a CPU-only install never pays for it.
"""
from __future__ import annotations

import importlib
from typing import Any

import numpy as np

_cupy: Any = None  # the cupy module once imported; False once known to be absent
_gpu_usable: bool | None = None
_gpu_reason: str = ""

DEVICES = ("cpu", "gpu", "gpu-sim")


class SimArray(np.ndarray):
    """An array on the ``gpu-sim`` device: a NumPy array in every respect, plus ``.get()`` (a
    host copy, as ``cupy.ndarray.get``). Results of NumPy operations on it are SimArrays too."""

    def get(self) -> np.ndarray:
        return np.array(self.view(np.ndarray), copy=True)

    def __array_wrap__(self, obj, context=None, return_scalar=False):
        # a 0-d result of a full reduction stays a 0-d device array, as in CuPy
        return np.ndarray.__array_wrap__(self, obj, context, False)


def _on_sim(v):
    if isinstance(v, np.ndarray) and not isinstance(v, SimArray):
        return v.view(SimArray)
    if isinstance(v, tuple):
        return tuple(_on_sim(a) for a in v)
    if isinstance(v, list) and v and all(isinstance(a, np.ndarray) for a in v):
        return [_on_sim(a) for a in v]
    return v


class _SimNumpy:
    """``xp`` of the ``gpu-sim`` device: NumPy's functions whose array results are SimArrays
    (so ``xp.empty(...)``, ``xp.where(...)``, ``xp.ascontiguousarray(...)`` stay on the device).
    Types (``xp.float32``, ``xp.ndarray``) and constants are NumPy's own."""

    def __init__(self, module, name):
        self._module, self.__name__ = module, name

    def __getattr__(self, name):
        v = getattr(self._module, name)
        if isinstance(v, type) or not callable(v):
            if type(v).__name__ == "module":
                v = _SimNumpy(v, f"{self.__name__}.{name}")
                setattr(self, name, v)
            return v

        def on_device(*args, **kw):
            return _on_sim(v(*args, **kw))
        on_device.__name__ = name
        on_device.__doc__ = v.__doc__
        setattr(self, name, on_device)
        return on_device

    def __repr__(self):
        return f"<gpu-sim array module over {self._module.__name__}>"


#: ``xp`` of the gpu-sim device.
sim_numpy = _SimNumpy(np, "sim_numpy")


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
    """True for an array on a (real or simulated) GPU: a cupy.ndarray (found without importing
    CuPy when it was never imported) or a :class:`SimArray`. Such an array has ``.get()``."""
    return isinstance(x, SimArray) or type(x).__module__.startswith("cupy")


def get_array_module(*arrays):
    """``numpy``, ``cupy`` or :data:`sim_numpy`, from the first device array (Chainer style)."""
    for a in arrays:
        if isinstance(a, SimArray):
            return sim_numpy
        if is_gpu_array(a):
            return _import_cupy()
    return np


def device_of(x) -> str:
    """'gpu' for a cupy array, 'gpu-sim' for a SimArray, 'cpu' otherwise."""
    if isinstance(x, SimArray):
        return "gpu-sim"
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


def sim_unavailable_reason() -> str:
    """Why the gpu-sim device cannot run here ('' when it can): it needs a C++ compiler."""
    from . import cuda
    return cuda.sim_compiler_problem()


def check_device(device: str) -> str:
    """Validate a device name; raise a clear one-line error for 'gpu' without a usable GPU and
    for 'gpu-sim' without a C++ compiler."""
    if device not in DEVICES:
        raise ValueError(f"device: expected one of {DEVICES}, got {device!r}")
    if device == "gpu" and not gpu_available():
        raise RuntimeError(f"device='gpu' was asked for, but {gpu_unavailable_reason()}")
    if device == "gpu-sim":
        why = sim_unavailable_reason()
        if why:
            raise RuntimeError(f"device='gpu-sim' was asked for, but {why}")
    return device


def xp_for(device: str):
    """The array module for a device name."""
    check_device(device)
    return {"cpu": np, "gpu-sim": sim_numpy}.get(device) or _import_cupy()


def to_device(x, device: str):
    """Copy an array to 'cpu' (numpy), 'gpu' (cupy) or 'gpu-sim' (SimArray); returns x itself
    when already there. A copy keeps the array's memory layout, as CuPy's does."""
    check_device(device)
    here = device_of(x)
    if here == device:
        return x
    host = to_numpy(x)
    if device == "cpu":
        return host
    if device == "gpu-sim":
        return np.array(host, copy=True, order="K", subok=False).view(SimArray)
    return _import_cupy().asarray(host)


def to_numpy(x) -> np.ndarray:
    """A numpy view or copy of any array (device arrays are copied to the host)."""
    return x.get() if is_gpu_array(x) else np.asarray(x)
