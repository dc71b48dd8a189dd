"""Parameter initialisation and the library's random source.

Layers draw their initial weights (and Dropout its masks) from one NumPy Generator, reseeded by
:func:`manual_seed`, so a seeded run builds the same model every time. Initialisation follows
PyTorch's defaults: ``kaiming_uniform_(a=sqrt(5))`` for weights, which is ``U(-b, b)`` with
``b = 1/sqrt(fan_in)``, and ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` for biases.
"""
from __future__ import annotations

import math

import numpy as np

_rng = np.random.default_rng(0)


def manual_seed(seed: int) -> np.random.Generator:
    """Reseed the library-wide generator; returns it."""
    global _rng
    _rng = np.random.default_rng(seed)
    return _rng


def get_rng() -> np.random.Generator:
    """The library-wide generator (used when a layer is given no ``rng``)."""
    return _rng


def get_rng_state() -> dict:
    return _rng.bit_generator.state


def set_rng_state(state: dict) -> None:
    _rng.bit_generator.state = state


def uniform_fan_in(shape, fan_in: int, rng: np.random.Generator | None = None, dtype=np.float32) -> np.ndarray:
    """``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` of ``shape`` (PyTorch's default weight and bias init)."""
    if fan_in < 1:
        raise ValueError(f"uniform_fan_in: fan_in: expected >= 1, got {fan_in}")
    b = 1.0 / math.sqrt(fan_in)
    return (rng or _rng).uniform(-b, b, size=shape).astype(dtype)
