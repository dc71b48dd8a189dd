"""Optimizers: SGD, Adam and AdamW, each update written out by hand with PyTorch's semantics.

SGD, with momentum, Nesterov momentum and (coupled, L2) weight decay:

    g = grad + weight_decay * w
    b = momentum * b + g            (b = g on the first step)
    d = g + momentum * b  if nesterov else  b
    w = w - lr * d

Adam keeps two running averages per weight, the first moment m (of the gradient) and the second
moment v (of its square), both zero before the first step; step t counts from 1. Its weight
decay is L2, added to the gradient as in SGD:

    g     = grad + weight_decay * w
    m     = beta1 * m + (1 - beta1) * g
    v     = beta2 * v + (1 - beta2) * g * g
    m_hat = m / (1 - beta1 ** t)             (bias corrections: the averages start at zero)
    v_hat = v / (1 - beta2 ** t)
    w     = w - lr * m_hat / (sqrt(v_hat) + eps)

so eps is added outside the root, after v's bias correction. AdamW decays the weights
themselves instead (decoupled weight decay), before the Adam step, and that step sees the raw
gradient:

    w = w - lr * weight_decay * w            (computed as w * (1 - lr * weight_decay))
    m, v, m_hat, v_hat and the step on w as Adam's, with g = grad

On step 1 with no weight decay m_hat = g and v_hat = g * g, so every weight moves by
-lr * g / (|g| + eps), i.e. lr against the sign of its gradient. With a zero gradient Adam's
decay is a full Adam step on weight_decay * w (about lr * sign(w)), AdamW's only the shrink by
lr * weight_decay * w.

Every update runs in place on each parameter, on whatever device it lives (the same code for
NumPy and CuPy arrays). Every setting is a finite real number (Python or NumPy, integer or
floating; a bool is not one): an inf or NaN setting is refused up front rather than turning the
weights into inf/NaN on the first step. :func:`make_optimizer` builds one by name
(:data:`OPTIMIZERS`), and every optimizer's ``state_arrays()`` lists its state arrays (to find
inf/NaN before a checkpoint is written).
"""
from __future__ import annotations

import math

import numpy as np

from . import backend, cases, ops
from .checks import check_positive_int, check_real
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


class _Optimizer:
    """What every optimizer here shares: its parameter list (checked), ``zero_grad`` and the
    checks of a ``state_dict`` common to all (a dict holding every one of ``_STATE_KEYS``, and
    an integer ``step_count`` >= 0). Errors name the subclass."""

    _STATE_KEYS: tuple = ()

    def __init__(self, params):
        name = type(self).__name__
        self.params = list(params)
        for i, p in enumerate(self.params):
            if not isinstance(p, Parameter):
                raise TypeError(f"{name}: params[{i}]: expected a Parameter, got {type(p).__name__}")
        if not self.params:
            raise ValueError(f"{name}: params: expected at least one Parameter, got none")
        self.step_count = 0

    def zero_grad(self):
        for p in self.params:
            p.zero_grad()

    def _check_state(self, state) -> tuple[str, int]:
        """``(where, step_count)`` for a state_dict that has every entry and a valid step count."""
        name = type(self).__name__
        where = f"{name}.load_state_dict"
        if not isinstance(state, dict):
            raise TypeError(f"{where}: state: expected a dict, got {type(state).__name__}")
        for k in self._STATE_KEYS:
            if k not in state:
                raise ValueError(f"{where}: missing entry {k!r} (a state_dict() of {name} holds"
                                 f" {', '.join(self._STATE_KEYS)})")
        step_count = state["step_count"]
        if isinstance(step_count, bool) or not isinstance(step_count, (int, np.integer)) or step_count < 0:
            raise ValueError(f"{where}: step_count: expected an integer >= 0, got {step_count!r}")
        return where, int(step_count)


class SGD(_Optimizer):
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
        super().__init__(params)
        self.lr, self.momentum, self.nesterov, self.weight_decay = _check_hyper(lr, momentum, nesterov,
                                                                                weight_decay, "SGD")
        self.buffers = [None] * len(self.params)

    def step(self):
        for i, p in enumerate(self.params):
            self.buffers[i] = sgd_update(p.data, p.grad, self.buffers[i], self.lr, self.momentum, self.nesterov,
                                         self.weight_decay)
        self.step_count += 1

    def state_arrays(self):
        """``(param_index, "momentum buffer", array)`` for every momentum buffer there is (none
        without momentum, or before the first step)."""
        for i, b in enumerate(self.buffers):
            if b is not None:
                yield i, "momentum buffer", b

    def state_dict(self) -> dict:
        return {
            "lr": self.lr, "momentum": self.momentum, "nesterov": self.nesterov,
            "weight_decay": self.weight_decay, "step_count": self.step_count,
            "buffers": [None if b is None else backend.to_numpy(b).copy() for b in self.buffers],
        }

    _STATE_KEYS = ("lr", "momentum", "nesterov", "weight_decay", "step_count", "buffers")

    def load_state_dict(self, state: dict):
        """Restore what :meth:`state_dict` returned (the settings are checked as in ``__init__``)."""
        where, step_count = self._check_state(state)
        bufs = state["buffers"]
        if len(bufs) != len(self.params):
            raise ValueError(f"{where}: buffers: expected {len(self.params)} entries, got {len(bufs)}")
        for i, (p, b) in enumerate(zip(self.params, bufs)):
            if b is not None and tuple(np.shape(b)) != tuple(p.shape):
                raise ValueError(f"{where}: buffers[{i}]: expected shape {tuple(p.shape)}, got {tuple(np.shape(b))}")
        hyper = _check_hyper(state["lr"], state["momentum"], state["nesterov"], state["weight_decay"], where)
        self.lr, self.momentum, self.nesterov, self.weight_decay = hyper
        self.step_count = step_count
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


# ---------------------------------------------------------------------------------- Adam, AdamW
def adam_update(w, g, m, v, step, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
                decoupled=False):
    """One Adam (``decoupled=False``) or AdamW (``decoupled=True``) step on ``w`` in place (the
    formulas of the module docstring); returns ``(m, v)``.

    Parameters
    ----------
    w : array, updated in place
    g : array of w's shape, the gradient (not modified)
    m, v : arrays of w's shape, the first and second moments, updated in place; None stands for
        zeros (the state before step 1) and a new array is returned for it
    step : integer >= 1, the step number t of the bias corrections
    lr, beta1, beta2, eps, weight_decay : real numbers (checked by the optimizers, not here)
    decoupled : bool, AdamW's decay of the weights instead of Adam's L2 term in the gradient
    """
    step = check_positive_int(step, "step", "adam_update")
    lr, beta1, beta2, eps, weight_decay = float(lr), float(beta1), float(beta2), float(eps), float(weight_decay)
    xp = backend.get_array_module(w)
    if weight_decay != 0.0:
        if decoupled:
            w *= 1.0 - lr * weight_decay    # on the weights, before the Adam step
        else:
            g = g + weight_decay * w        # a new array: the caller's gradient keeps the raw value
    if m is None:
        m = xp.zeros_like(w)
    if v is None:
        v = xp.zeros_like(w)
    m *= beta1
    m += (1.0 - beta1) * g
    v *= beta2
    g2 = g * g
    g2 *= 1.0 - beta2
    v += g2
    # lr * m_hat / (sqrt(v_hat) + eps) as (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps)
    bc1, bc2 = 1.0 - beta1 ** step, 1.0 - beta2 ** step
    d = xp.sqrt(v)
    d /= math.sqrt(bc2)
    d += eps
    xp.divide(m, d, out=d)
    d *= lr / bc1
    w -= d
    return m, v


class Adam(_Optimizer):
    """Adam (Kingma & Ba) with PyTorch's semantics: L2 weight decay added to the gradient, eps
    outside the root of the bias-corrected second moment (see the module docstring).

    Parameters
    ----------
    params : iterable of Parameter
    lr : real number > 0
    betas : pair (beta1, beta2) of real numbers in [0, 1), the decay rates of the moments
    eps : real number > 0
    weight_decay : real number >= 0

    Every number must be finite; Python and NumPy scalars (and 0-d arrays) are accepted and
    stored as Python floats. The moments (``first_moments``, ``second_moments``: one entry per
    parameter) are None until the first :meth:`step`.
    """

    _DECOUPLED = False

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        super().__init__(params)
        self.lr, self.betas, self.eps, self.weight_decay = _check_adam(lr, betas, eps, weight_decay,
                                                                       type(self).__name__)
        self.first_moments = [None] * len(self.params)
        self.second_moments = [None] * len(self.params)

    def step(self):
        t = self.step_count + 1
        b1, b2 = self.betas
        for i, p in enumerate(self.params):
            self.first_moments[i], self.second_moments[i] = adam_update(
                p.data, p.grad, self.first_moments[i], self.second_moments[i], t, self.lr, b1, b2, self.eps,
                self.weight_decay, self._DECOUPLED)
        self.step_count = t

    def state_arrays(self):
        """``(param_index, label, array)`` for every moment there is: label ``"first moment"`` or
        ``"second moment"`` (none before the first step)."""
        for i, (m, v) in enumerate(zip(self.first_moments, self.second_moments)):
            if m is not None:
                yield i, "first moment", m
            if v is not None:
                yield i, "second moment", v

    _STATE_KEYS = ("lr", "betas", "eps", "weight_decay", "decoupled", "step_count", "first_moments",
                   "second_moments")

    def state_dict(self) -> dict:
        def host(a):
            return None if a is None else backend.to_numpy(a).copy()
        return {
            "lr": self.lr, "betas": list(self.betas), "eps": self.eps, "weight_decay": self.weight_decay,
            "decoupled": self._DECOUPLED, "step_count": self.step_count,
            "first_moments": [host(m) for m in self.first_moments],
            "second_moments": [host(v) for v in self.second_moments],
        }

    def load_state_dict(self, state: dict):
        """Restore what :meth:`state_dict` returned. Every entry is checked (the settings as in
        ``__init__``, the moments' shapes, finite values, a second moment >= 0, moments present
        once a step was taken) before anything is assigned; the error names the entry."""
        name = type(self).__name__
        where, step_count = self._check_state(state)
        hyper = _check_adam(state["lr"], state["betas"], state["eps"], state["weight_decay"], where)
        decoupled = state["decoupled"]
        if not isinstance(decoupled, (bool, np.bool_)) or bool(decoupled) != self._DECOUPLED:
            other = "an AdamW state (decoupled weight decay)" if decoupled is True else \
                "an Adam state (L2 weight decay)" if decoupled is False else "not a bool"
            raise ValueError(f"{where}: decoupled: expected {self._DECOUPLED} (an {name} state), got {decoupled!r}"
                             f" ({other})")
        first = _checked_moments(state["first_moments"], "first_moments", self.params, step_count, False, where)
        second = _checked_moments(state["second_moments"], "second_moments", self.params, step_count, True, where)
        self.lr, self.betas, self.eps, self.weight_decay = hyper
        self.step_count = step_count
        self.first_moments = [_on_device(a, p) for a, p in zip(first, self.params)]
        self.second_moments = [_on_device(a, p) for a, p in zip(second, self.params)]
        return self


class AdamW(Adam):
    """AdamW (Loshchilov & Hutter) with PyTorch's semantics: Adam whose weight decay shrinks the
    weights, ``w -= lr * weight_decay * w``, before the Adam step on the raw gradient (see the
    module docstring).

    Parameters
    ----------
    params : iterable of Parameter
    lr : real number > 0
    betas : pair (beta1, beta2) of real numbers in [0, 1)
    eps : real number > 0
    weight_decay : real number >= 0 (default 1e-2, PyTorch's)
    """

    _DECOUPLED = True

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


def _check_adam(lr, betas, eps, weight_decay, where):
    lr = check_real(lr, "lr", where, low=0, low_open=True)
    betas = check_betas(betas, where)
    eps = check_real(eps, "eps", where, low=0, low_open=True)
    weight_decay = check_real(weight_decay, "weight_decay", where, low=0)
    return lr, betas, eps, weight_decay


def check_betas(betas, where: str = "") -> tuple[float, float]:
    """Adam's ``betas`` as a pair of Python floats, each a finite real number in [0, 1) (a
    ValueError for anything but a pair, check_real's TypeError/ValueError for a bad entry)."""
    prefix = f"{where}: betas" if where else "betas"
    if isinstance(betas, (str, bytes)) or not isinstance(betas, (tuple, list, np.ndarray)) or len(betas) != 2:
        raise ValueError(f"{prefix}: expected a pair (beta1, beta2) of finite real numbers in [0, 1), got {betas!r}")
    return tuple(check_real(b, f"betas[{i}]", where, low=0, high=1, high_open=True) for i, b in enumerate(betas))


def _checked_moments(entries, key, params, step_count, nonneg, where):
    """The moments of a state_dict as host arrays (or None), each checked against its parameter."""
    if not isinstance(entries, (list, tuple)):
        raise ValueError(f"{where}: {key}: expected a list of {len(params)} arrays or None, got"
                         f" {type(entries).__name__}")
    if len(entries) != len(params):
        raise ValueError(f"{where}: {key}: expected {len(params)} entries, got {len(entries)}")
    out = []
    for i, (p, a) in enumerate(zip(params, entries)):
        name = f"{key}[{i}]"
        if a is None:
            if step_count > 0:
                raise ValueError(f"{where}: {name}: expected an array of shape {tuple(p.shape)}, got None"
                                 f" (step_count is {step_count}: every moment exists after the first step)")
            out.append(None)
            continue
        try:
            arr = backend.to_numpy(a)
        except Exception as e:  # ragged lists and the like
            raise ValueError(f"{where}: {name}: expected an array of shape {tuple(p.shape)}, got a"
                             f" {type(a).__name__} that is not one ({type(e).__name__}: {e})") from e
        if arr.dtype.kind not in "iuf":
            raise ValueError(f"{where}: {name}: expected an integer or float array, got dtype {arr.dtype}")
        if tuple(arr.shape) != tuple(p.shape):
            raise ValueError(f"{where}: {name}: expected shape {tuple(p.shape)}, got {tuple(arr.shape)}")
        with np.errstate(over="ignore", invalid="ignore"):
            arr = arr.astype(p.dtype)  # a copy, in the parameter's dtype
        if not np.isfinite(arr).all():
            raise ValueError(f"{where}: {name}: expected finite values, got {int(np.isnan(arr).sum())} NaN and"
                             f" {int(np.isinf(arr).sum())} inf of {arr.size} (a diverged or corrupted state?)")
        if nonneg and (arr < 0).any():
            raise ValueError(f"{where}: {name}: expected values >= 0 (a mean of squares), got a minimum of"
                             f" {arr.min()!r}")
        out.append(arr)
    return out


def _on_device(a, p):
    return None if a is None else backend.get_array_module(p.data).asarray(a)


#: the optimizers by name (the CLI's --optimizer)
OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW}


def make_optimizer(name: str, params, lr: float, momentum: float = 0.9, nesterov: bool = True,
                   weight_decay: float = 0.0, betas=(0.9, 0.999), eps: float = 1e-8):
    """The optimizer ``name`` (a key of :data:`OPTIMIZERS`) over ``params``, given the settings
    that apply to it: SGD takes ``lr``, ``momentum``, ``nesterov`` and ``weight_decay``; Adam and
    AdamW take ``lr``, ``betas``, ``eps`` and ``weight_decay`` (the others are ignored)."""
    if not isinstance(name, str) or name not in OPTIMIZERS:
        raise ValueError(f"optimizer: expected one of {', '.join(map(repr, OPTIMIZERS))}, got {name!r}")
    if name == "sgd":
        return SGD(params, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
    return OPTIMIZERS[name](params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


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


def _adam_forward(w, g, m, v, **hyper):
    w = w.copy()                           # the table's ops leave their inputs alone
    m = None if m is None else m.copy()
    v = None if v is None else v.copy()
    return (w, *adam_update(w, g, m, v, **hyper)), None


def _adam_forward_ref(w, g, m, v, step, lr, beta1, beta2, eps, weight_decay, decoupled):
    w, g = w.astype(np.float64), g.astype(np.float64)
    m = np.zeros_like(w) if m is None else m.astype(np.float64)
    v = np.zeros_like(w) if v is None else v.astype(np.float64)
    if decoupled:
        w = w - lr * weight_decay * w
    else:
        g = g + weight_decay * w
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g ** 2
    m_hat, v_hat = m / (1 - beta1 ** step), v / (1 - beta2 ** step)
    return (w - lr * m_hat / (np.sqrt(v_hat) + eps), m, v), None


def _adam_sample(draw, dtype):
    shape = cases.any_shape(draw, max_rank=3)
    step = draw.choice([1, 2, 10])
    if step == 1 and draw.bool():
        m = v = None                       # the state before the first step
    else:
        m = cases.values(draw, shape, dtype, scale=0.1)
        v = cases.values(draw, shape, dtype, scale=0.1) ** 2
    decoupled = draw.bool()
    return ops.Case((cases.values(draw, shape, dtype), cases.values(draw, shape, dtype), m, v),
                    dict(step=step, lr=draw.choice([1e-3, 0.1]), beta1=draw.choice([0.9, 0.5]),
                         beta2=draw.choice([0.999, 0.9]), eps=draw.choice([1e-8, 1e-3]),
                         weight_decay=draw.choice([0.0, 1e-2]), decoupled=decoupled))


ops.register(ops.Op(
    "adam_update", "Adam / AdamW step: bias-corrected moments, L2 or decoupled weight decay, in place",
    forward=_adam_forward, backward=None, reference=(_adam_forward_ref, None), cpu=ops.XP, gpu=ops.XP,
    sample=_adam_sample))
