"""SGD with momentum, Nesterov momentum and (coupled, L2) weight decay, as PyTorch defines it:

    g = grad + weight_decay * w
    b = momentum * b + g            (b = g on the first step)
    d = g + momentum * b  if nesterov else  b
    w = w - lr * d

The update runs in place on each parameter, on whatever device it lives. Every setting is a
finite real number (Python or NumPy, integer or floating; a bool is not one): an inf or NaN
learning rate, momentum or weight decay is refused up front rather than turning the weights into
inf/NaN on the first step.
"""
from __future__ import annotations

import numpy as np

from . import backend, cases, ops
from .checks import check_real
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
    lr : real number > 0
    momentum : real number in [0, 1)
    nesterov : bool (needs momentum > 0)
    weight_decay : real number >= 0

    Every number must be finite; Python and NumPy scalars (and 0-d arrays) are accepted and
    stored as Python floats.
    """

    def __init__(self, params, lr: float = 0.1, momentum: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0):
        self.params = list(params)
        for i, p in enumerate(self.params):
            if not isinstance(p, Parameter):
                raise TypeError(f"SGD: params[{i}]: expected a Parameter, got {type(p).__name__}")
        if not self.params:
            raise ValueError("SGD: params: expected at least one Parameter, got none")
        self.lr, self.momentum, self.nesterov, self.weight_decay = _check_hyper(lr, momentum, nesterov,
                                                                                weight_decay, "SGD")
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

    _STATE_KEYS = ("lr", "momentum", "nesterov", "weight_decay", "step_count", "buffers")

    def load_state_dict(self, state: dict):
        """Restore what :meth:`state_dict` returned (the settings are checked as in ``__init__``)."""
        where = "SGD.load_state_dict"
        if not isinstance(state, dict):
            raise TypeError(f"{where}: state: expected a dict, got {type(state).__name__}")
        for k in self._STATE_KEYS:
            if k not in state:
                raise ValueError(f"{where}: missing entry {k!r} (a state_dict() of SGD holds"
                                 f" {', '.join(self._STATE_KEYS)})")
        bufs = state["buffers"]
        if len(bufs) != len(self.params):
            raise ValueError(f"{where}: buffers: expected {len(self.params)} entries, got {len(bufs)}")
        for i, (p, b) in enumerate(zip(self.params, bufs)):
            if b is not None and tuple(np.shape(b)) != tuple(p.shape):
                raise ValueError(f"{where}: buffers[{i}]: expected shape {tuple(p.shape)}, got {tuple(np.shape(b))}")
        hyper = _check_hyper(state["lr"], state["momentum"], state["nesterov"], state["weight_decay"], where)
        step_count = state["step_count"]
        if isinstance(step_count, bool) or not isinstance(step_count, (int, np.integer)) or step_count < 0:
            raise ValueError(f"{where}: step_count: expected an integer >= 0, got {step_count!r}")
        self.lr, self.momentum, self.nesterov, self.weight_decay = hyper
        self.step_count = int(step_count)
        self.buffers = [None if b is None else backend.get_array_module(p.data).asarray(b, dtype=p.data.dtype)
                        for p, b in zip(self.params, bufs)]
        return self


def _check_hyper(lr, momentum, nesterov, weight_decay, where):
    lr = check_real(lr, "lr", where, low=0, low_open=True)
    momentum = check_real(momentum, "momentum", where, low=0, high=1, high_open=True)
    if nesterov and momentum <= 0:
        raise ValueError(f"{where}: nesterov=True needs momentum > 0, got momentum={momentum!r}")
    weight_decay = check_real(weight_decay, "weight_decay", where, low=0)
    return lr, momentum, bool(nesterov), weight_decay


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
