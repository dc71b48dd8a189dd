"""The op table: every array operation the layers use, with its reference, its device kernels, and
what the contract tests need to exercise it.

``OPS`` maps an op name (``"conv2d"``, ``"maxent_pool2d"``, ...) to an :class:`Op`. Each op is
defined next to its kernels, in its family's module, and added with :func:`register`; the table
imports those modules the first time it is read. An op record holds:

* ``forward(*inputs, **params) -> (outputs, saved)`` and ``backward(saved, *grads) -> grads``:
  the public path (validated, dispatched by array type), in one calling convention for all ops:
  ``outputs`` is a tuple of arrays, ``grads`` has one entry per input (None where an input has
  no gradient) and takes one upstream gradient for each of the first ``grad_outputs`` outputs.
  ``backward`` is None for an op without one (the SGD update, the augmentation).
* ``reference``: ``(forward, backward)`` in plain NumPy, the same convention: the oracle.
* ``cpu`` and ``gpu``: the device kernels the public path hands the work to (``gpu`` serves the
  ``gpu-sim`` device too: the same glue and CUDA kernels, run on the CPU), as a
  :class:`Kernels` record (the op's own calling convention), :data:`XP` for code written once
  against ``xp`` (NumPy or CuPy) that has no kernel of its own, or None: not on that device yet.
  ``gpu`` may also be a ``"package.module:NAME"`` string, imported on first use, so that CuPy
  code is never imported on a CPU run. ``needs`` names the ops an op is built on (``conv2d``
  needs ``im2col``): a device supports an op when its slot and those of everything it needs are
  filled (:meth:`Op.supports`).
* ``sample(draw, dtype) -> Case`` and ``tol(dtype)``: an input generator and the tolerance of
  fast kernel against reference, for the contract suite (``tests/test_ops.py``), which runs
  every op on every device it supports.

Dispatch by array type happens in one place, :func:`kernels`: a layer asks for the kernels of
an op for its input array and gets the CPU or the GPU ones, or a NotImplementedError naming the
op when the GPU has none yet.
"""
from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from . import backend

__all__ = ["Op", "Kernels", "Case", "XP", "OPS", "register", "kernels", "DEVICES"]

DEVICES = backend.DEVICES

#: The slot value of an op written once against ``xp``: it runs on every device as it is.
XP = "xp"

# the modules that define ops, imported the first time the table is read
_FAMILIES = ("minignn.layers", "minignn.loss", "minignn.optim", "minignn.data.loader")


@dataclass(frozen=True)
class Kernels:
    """One device's kernels of an op: what its public path calls on that device's arrays.
    The signatures are the op's own (documented in its family's module)."""
    forward: Callable
    backward: Callable | None = None


@dataclass(frozen=True)
class Case:
    """One generated input of an op: ``inputs`` (arrays, or constants such as a Python float or
    None, passed positionally), ``params`` (keyword arguments), and ``wrt``, the indices of the
    inputs whose gradients are checked (default: every floating-point array input)."""
    inputs: tuple
    params: dict = field(default_factory=dict)
    wrt: tuple | None = None

    def grad_inputs(self) -> tuple:
        if self.wrt is not None:
            return self.wrt
        return tuple(i for i, a in enumerate(self.inputs)
                     if hasattr(a, "dtype") and np.dtype(a.dtype).kind == "f")


def _default_tol(dtype):
    return dict(rtol=1e-5, atol=1e-6) if np.dtype(dtype) == np.float32 else dict(rtol=1e-11, atol=1e-12)


@dataclass(frozen=True)
class Op:
    """One op of the table (see the module docstring)."""
    name: str
    summary: str
    forward: Callable
    backward: Callable | None
    reference: tuple
    cpu: Any
    gpu: Any = None
    sample: Callable | None = None
    tol: Callable = _default_tol
    grad_outputs: int = 1
    needs: tuple = ()
    #: float64 central differences: keyword arguments of :func:`minignn.gradcheck.check_gradients`
    gradcheck: dict = field(default_factory=dict)

    def slot(self, device: str):
        """The filled slot of ``device`` (Kernels or XP), resolving a lazy GPU string; None when
        the op has no kernel there yet."""
        if device not in DEVICES:
            raise ValueError(f"device: expected one of {DEVICES}, got {device!r}")
        s = self.cpu if device == "cpu" else self.gpu     # gpu-sim runs the GPU code itself
        if isinstance(s, str) and s != XP:
            mod, _, attr = s.partition(":")
            s = getattr(importlib.import_module(mod), attr)
        return s

    def supports(self, device: str) -> bool:
        """True when this op and every op it needs have a kernel (or are xp code) on ``device``."""
        return self.slot(device) is not None and all(OPS[n].supports(device) for n in self.needs)

    def missing(self, device: str) -> list[str]:
        """The ops (this one or those it needs) without a kernel on ``device``."""
        out = [] if self.slot(device) is not None else [self.name]
        for n in self.needs:
            out += [m for m in OPS[n].missing(device) if m not in out]
        return out


class _Table(Mapping):
    """The op table: a read-only mapping, filled by :func:`register` and complete once read."""

    def __init__(self):
        self._ops: dict[str, Op] = {}
        self._loaded = False

    def _load(self):
        if not self._loaded:
            self._loaded = True
            for mod in _FAMILIES:
                importlib.import_module(mod)

    def __getitem__(self, name):
        op = self._ops.get(name)
        if op is None:
            self._load()
            if name not in self._ops:
                raise KeyError(f"op: expected one of {sorted(self._ops)}, got {name!r}")
            op = self._ops[name]
        return op

    def __iter__(self):
        self._load()
        return iter(self._ops)

    def __len__(self):
        self._load()
        return len(self._ops)

    def __repr__(self):
        return f"OPS({', '.join(self)})"


OPS = _Table()


def register(op: Op) -> Op:
    """Add ``op`` to the table (each name once); returns it."""
    if op.name in OPS._ops:
        raise ValueError(f"register: an op named {op.name!r} is already registered")
    for device in ("cpu", "gpu"):
        s = op.cpu if device == "cpu" else op.gpu
        if not (s is None or s == XP or isinstance(s, (Kernels, str))):
            raise TypeError(f"register: {op.name}.{device}: expected Kernels, XP, a 'module:NAME' string or None,"
                            f" got {type(s).__name__}")
    OPS._ops[op.name] = op
    return op


def kernels(name: str, x) -> Kernels:
    """The kernels of op ``name`` for array ``x``'s device: the one place where the CPU/GPU
    choice is made. Raises NotImplementedError naming the op when the GPU has none yet."""
    op = OPS[name]
    device = backend.device_of(x)
    k = op.slot(device)
    if k is None:
        raise NotImplementedError(f"{name}: no GPU kernel yet (array on {device}); move the data to the CPU with"
                                  f" to_device(x, 'cpu')")
    return k
