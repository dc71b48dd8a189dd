"""SGD with momentum, Nesterov momentum and (coupled, L2) weight decay, as PyTorch defines it:

    g = grad + weight_decay * w
    b = momentum * b + g            (b = g on the first step)
    d = g + momentum * b  if nesterov else  b
    w = w - lr * d

The update runs in place on each parameter, on whatever device it lives.
"""
from __future__ import annotations

import numpy as np

from . import backend
from .module import Parameter


class SGD:
    """Stochastic gradient descent.

    Parameters
    ----------
    params : iterable of Parameter
    lr : float > 0
    momentum : float in [0, 1)
    nesterov : bool (needs momentum > 0)
    weight_decay : float >= 0
    """

    def __init__(self, params, lr: float = 0.1, momentum: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0):
        self.params = list(params)
        for i, p in enumerate(self.params):
            if not isinstance(p, Parameter):
                raise TypeError(f"SGD: params[{i}]: expected a Parameter, got {type(p).__name__}")
        if not self.params:
            raise ValueError("SGD: params: expected at least one Parameter, got none")
        if not (isinstance(lr, (int, float)) and lr > 0):
            raise ValueError(f"SGD: lr: expected a number > 0, got {lr!r}")
        if not (0.0 <= momentum < 1.0):
            raise ValueError(f"SGD: momentum: expected a number in [0, 1), got {momentum!r}")
        if nesterov and momentum <= 0:
            raise ValueError(f"SGD: nesterov=True needs momentum > 0, got momentum={momentum!r}")
        if weight_decay < 0:
            raise ValueError(f"SGD: weight_decay: expected a number >= 0, got {weight_decay!r}")
        self.lr = float(lr)
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)
        self.weight_decay = float(weight_decay)
        self.buffers = [None] * len(self.params)
        self.step_count = 0

    def zero_grad(self):
        for p in self.params:
            p.zero_grad()

    def step(self):
        lr, mu, wd = self.lr, self.momentum, self.weight_decay
        for i, p in enumerate(self.params):
            w, g = p.data, p.grad
            xp = backend.get_array_module(w)
            if wd != 0.0:
                g = g + wd * w  # a new array: p.grad keeps the raw gradient
            if mu != 0.0:
                b = self.buffers[i]
                if b is None:
                    b = self.buffers[i] = xp.array(g, copy=True)
                else:
                    b *= mu
                    b += g
                if self.nesterov:
                    g = g + mu * b
                else:
                    g = b
            w -= lr * g
        self.step_count += 1

    def state_dict(self) -> dict:
        return {
            "lr": self.lr, "momentum": self.momentum, "nesterov": self.nesterov,
            "weight_decay": self.weight_decay, "step_count": self.step_count,
            "buffers": [None if b is None else backend.to_numpy(b).copy() for b in self.buffers],
        }

    def load_state_dict(self, state: dict):
        bufs = state["buffers"]
        if len(bufs) != len(self.params):
            raise ValueError(f"SGD.load_state_dict: buffers: expected {len(self.params)} entries, got {len(bufs)}")
        for i, (p, b) in enumerate(zip(self.params, bufs)):
            if b is not None and tuple(np.shape(b)) != tuple(p.shape):
                raise ValueError(f"SGD.load_state_dict: buffers[{i}]: expected shape {tuple(p.shape)}, got {tuple(np.shape(b))}")
        for k in ("lr", "momentum", "nesterov", "weight_decay", "step_count"):
            setattr(self, k, state[k])
        self.buffers = [None if b is None else backend.get_array_module(p.data).asarray(b, dtype=p.data.dtype)
                        for p, b in zip(self.params, bufs)]
        return self
