"""SGD with momentum, Nesterov momentum and (coupled, L2) weight decay, as PyTorch defines it:

    g = grad + weight_decay * w
    b = momentum * b + g            (b = g on the first step)
    d = g + momentum * b  if nesterov else  b
    w = w - lr * d

The update runs in place on each parameter, on whatever device it lives.
"""
from __future__ import annotations

import numpy as np

from . import backend, cases, ops
from .module import Parameter


def sgd_update(w, g, buf=None, lr=0.1, momentum=0.0, nesterov=False, weight_decay=0.0):
    """One SGD step on ``w`` in place (the formulas above); returns the momentum buffer (updated
    in place, new on the first step, None without momentum). ``g`` is not modified."""
    xp = backend.get_array_module(w)
    if weight_decay != 0.0:
        g = g + weight_decay * w  # a new array: the caller's gradient keeps the raw value
    if momentum != 0.0:
        if buf is None:
            buf = xp.array(g, copy=True)
        else:
            buf *= momentum
            buf += g
        g = g + momentum * buf if nesterov else buf
    w -= lr * g
    return buf


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
        for i, p in enumerate(self.params):
            self.buffers[i] = sgd_update(p.data, p.grad, self.buffers[i], self.lr, self.momentum, self.nesterov,
                                         self.weight_decay)
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


# ---------------------------------------------------------------------------------- the op table
def _forward(w, g, buf, **hyper):
    w = w.copy()                           # the table's ops leave their inputs alone
    buf = None if buf is None else buf.copy()
    return (w, sgd_update(w, g, buf, **hyper)), None


def _forward_ref(w, g, buf, lr, momentum, nesterov, weight_decay):
    w, g = w.astype(np.float64), g.astype(np.float64) + weight_decay * w
    b = None
    if momentum != 0.0:
        b = g if buf is None else momentum * buf + g
        g = g + momentum * b if nesterov else b
    return (w - lr * g, b), None


def _sample(draw, dtype):
    shape = cases.any_shape(draw, max_rank=3)
    momentum = draw.choice([0.0, 0.9])
    buf = cases.values(draw, shape, dtype) if momentum and draw.bool() else None
    return ops.Case((cases.values(draw, shape, dtype), cases.values(draw, shape, dtype), buf),
                    dict(lr=draw.choice([0.1, 0.01]), momentum=momentum, nesterov=bool(momentum) and draw.bool(),
                         weight_decay=draw.choice([0.0, 5e-4])))


ops.register(ops.Op(
    "sgd_update", "w -= lr * d with momentum, Nesterov and coupled weight decay, in place",
    forward=_forward, backward=None, reference=(_forward_ref, None), cpu=ops.XP, gpu=ops.XP, sample=_sample))
