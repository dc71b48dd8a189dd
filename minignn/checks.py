"""Input validation shared by every layer: errors that name the argument, what was expected and
what was given."""
from __future__ import annotations

import argparse
import math
import numbers
import re

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def check_array(x, name: str = "x", ndim: int | None = None, where: str = "", channels: int | None = None,
                channel_axis: int = 1, dtype=None):
    """Check that ``x`` is a float32/float64 array with ``ndim`` dims (and ``channels`` at
    ``channel_axis``); return it unchanged.

    ``where`` names the caller (``"Conv2d.forward"``) for the message.
    """
    pre = f"{where}: " if where else ""
    if not hasattr(x, "dtype") or not hasattr(x, "shape"):
        raise TypeError(f"{pre}{name}: expected a numpy or cupy array, got {type(x).__name__}")
    if np.dtype(x.dtype) not in FLOAT_DTYPES:
        raise TypeError(f"{pre}{name}: expected dtype float32 or float64, got {x.dtype}"
                        f" (convert with {name}.astype(np.float32))")
    if dtype is not None and np.dtype(x.dtype) != np.dtype(dtype):
        raise TypeError(f"{pre}{name}: expected dtype {np.dtype(dtype)} (the parameters' dtype), got {x.dtype};"
                        f" convert the input or call module.to(dtype=...)")
    if ndim is not None and x.ndim != ndim:
        layout = {4: " (N, C, H, W)", 2: " (N, features)"}.get(ndim, "")
        raise ValueError(f"{pre}{name}: expected a {ndim}-D array{layout}, got shape {tuple(x.shape)}")
    if channels is not None and x.shape[channel_axis] != channels:
        raise ValueError(f"{pre}{name}: expected {channels} channels at axis {channel_axis},"
                         f" got {x.shape[channel_axis]} (shape {tuple(x.shape)})")
    return x


def check_grad_output(gy, shape, dtype=None, where: str = "", name: str = "gy"):
    """Check that an upstream gradient matches the forward output's shape (and dtype)."""
    pre = f"{where}: " if where else ""
    if not hasattr(gy, "shape"):
        raise TypeError(f"{pre}{name}: expected an array, got {type(gy).__name__}")
    if tuple(gy.shape) != tuple(shape):
        raise ValueError(f"{pre}{name}: expected shape {tuple(shape)} (the forward output's), got {tuple(gy.shape)}")
    if np.dtype(gy.dtype) not in FLOAT_DTYPES:
        raise TypeError(f"{pre}{name}: expected dtype float32 or float64, got {gy.dtype}")
    if dtype is not None and np.dtype(gy.dtype) != np.dtype(dtype):
        raise TypeError(f"{pre}{name}: expected dtype {np.dtype(dtype)} (the forward output's), got {gy.dtype}")
    return gy


def check_nonnegative(x, where: str, why: str, name: str = "x"):
    """One min-reduction over the array ``x`` (on its device): a negative value raises naming the
    minimum and ``why`` the values must be >= 0 (NaN passes: it propagates through the op)."""
    if x.size == 0:
        return
    lo = float(x.min())
    if lo < 0:
        raise ValueError(f"{where}: {name}: expected every value >= 0 ({why}; put a ReLU before it), got a"
                         f" minimum of {lo!r}")


def check_positive_int(v, name: str, where: str = "", minimum: int = 1) -> int:
    pre = f"{where}: " if where else ""
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum:
        raise ValueError(f"{pre}{name}: expected an integer >= {minimum}, got {v!r}")
    return int(v)


def check_probability(p, name: str, where: str = "", upper_open: bool = True) -> float:
    pre = f"{where}: " if where else ""
    ok = isinstance(p, (int, float, np.floating)) and 0.0 <= p and (p < 1.0 if upper_open else p <= 1.0)
    if not ok:
        rng = "[0, 1)" if upper_open else "[0, 1]"
        raise ValueError(f"{pre}{name}: expected a number in {rng}, got {p!r}")
    return float(p)


def check_real(value, name: str, where: str = "", *, low=None, high=None, low_open: bool = False,
               high_open: bool = False) -> float:
    """``value`` as a Python float, checked to be a finite real number in the given range.

    Accepts Python ints and floats, NumPy integer and floating scalars and 0-d arrays of them;
    rejects bools, non-numbers, inf and NaN. The error names ``where``, ``name``, the expected
    range and the value given, e.g. ``SGD: lr: expected a finite real number > 0, got inf``.
    """
    if low is not None and high is not None:
        rng = f" in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    elif low is not None:
        rng = f" {'>' if low_open else '>='} {low:g}"
    elif high is not None:
        rng = f" {'<' if high_open else '<='} {high:g}"
    else:
        rng = ""
    prefix = f"{where}: {name}" if where else name
    v = value
    if isinstance(v, np.ndarray) and v.ndim == 0 and v.dtype.kind in "iuf":
        v = v[()]
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real):
        raise TypeError(f"{prefix}: expected a finite real number{rng}, got {value!r} (a {type(value).__name__})")
    f = float(v)
    if not (math.isfinite(f) and (low is None or (f > low if low_open else f >= low))
            and (high is None or (f < high if high_open else f <= high))):
        raise ValueError(f"{prefix}: expected a finite real number{rng}, got {value!r}")
    return f


_TYPE_WORDS = {"int": "an integer", "float": "a number", "choice": "one of the choices"}


class OneLineParser(argparse.ArgumentParser):
    """argparse, with its errors as one line naming the flag:
    ``minignn train: error: --lr: expected a finite number > 0, got '-1' (minignn train --help lists the options)``
    (argparse's own form is the whole usage block, then ``argument --lr: ...``). Used by the
    ``minignn`` command and the benchmark runner; exit status 2."""

    def error(self, message):
        message = re.sub(r"^argument ([^:]+): ", r"\1: ", message)
        message = re.sub(r"invalid (\w+) value: ",
                         lambda m: f"expected {_TYPE_WORDS.get(m.group(1), m.group(1))}, got ", message)
        self.exit(2, f"{self.prog}: error: {message} ({self.prog} --help lists the options)\n")


def int_at_least(minimum: int):
    """An argparse ``type``: an integer >= ``minimum``, else argparse's usage error naming the
    flag (``--epochs: expected an integer >= 1, got 'abc'``). Shared by the ``minignn`` command
    and the benchmark runner."""
    def parse(text):
        try:
            v = int(text)
        except ValueError:
            v = None
        if v is None or v < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}")
        return v
    parse.__name__ = f"integer >= {minimum}"
    return parse


def check_backward(gy, saved, saved_type: type, forward: str, where: str, like: str = "x", shape: str | None = "y_shape"):
    """The checks of a functional backward: ``saved`` is the ``saved_type`` record that
    ``forward`` returned, and ``gy`` has the forward output's shape (``saved``'s attribute
    ``shape``; None: the ``like`` array's own shape), dtype and device of the array ``saved``
    keeps as ``like`` (the forward's input). Returns gy C-contiguous (a copy only when it is not)."""
    from minignn import backend
    if not isinstance(saved, saved_type):
        raise TypeError(f"{where}: saved: expected the {saved_type.__name__} returned by {forward},"
                        f" got {type(saved).__name__}")
    ref = getattr(saved, like)
    check_grad_output(gy, ref.shape if shape is None else getattr(saved, shape), dtype=ref.dtype, where=where)
    if backend.device_of(gy) != backend.device_of(ref):
        raise TypeError(f"{where}: gy: expected an array on the same device as the forward input"
                        f" ({backend.device_of(ref)}), got one on {backend.device_of(gy)}")
    return backend.get_array_module(ref).ascontiguousarray(gy)
