"""Module, Parameter and Sequential: the explicit, autograd-free layer API.

A module's ``forward(x)`` computes ``y`` and caches what its backward needs; ``backward(gy)``
returns ``gx`` and *adds* the parameter gradients into each ``Parameter.grad``. A module with
children (a residual block, Sequential) writes its backward from its children's backwards.

Attributes that are Modules or Parameters are registered automatically (as in PyTorch), in the
order they are set; arrays registered with :meth:`Module.register_buffer` (batch-norm running
statistics) travel in ``state_dict`` but are not trained.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Iterator

import numpy as np

from . import backend


class Parameter:
    """A trainable array and its gradient (same shape, dtype and device)."""

    def __init__(self, data):
        self.data = data
        self.grad = backend.get_array_module(data).zeros_like(data)

    @property
    def shape(self):
        return self.data.shape

    @property
    def dtype(self):
        return self.data.dtype

    def zero_grad(self):
        self.grad[...] = 0

    def __repr__(self):
        return f"Parameter(shape={tuple(self.data.shape)}, dtype={self.data.dtype}, device={backend.device_of(self.data)})"


def _checked_value(name: str, value, target) -> np.ndarray:
    """``value`` as a host array of ``target``'s dtype, or a ValueError naming ``name`` (see
    :meth:`Module.load_state_dict` for the rules)."""
    where = f"load_state_dict: {name}"
    want = np.dtype(target.dtype)
    try:
        arr = backend.to_numpy(value)
    except Exception as e:  # ragged lists and the like
        raise ValueError(f"{where}: expected a numeric array of shape {tuple(target.shape)}, got a"
                         f" {type(value).__name__} that is not an array ({type(e).__name__}: {e})") from e
    if want.kind == "f":
        ok, allowed = arr.dtype.kind in "iuf", "an integer or float"
    elif want.kind in "iu":
        ok, allowed = arr.dtype.kind in "iu", "an integer"
    else:
        ok, allowed = arr.dtype == want, f"a {want}"
    if not ok:  # bool, complex, strings, objects (None, mixed lists) ...
        raise ValueError(f"{where}: expected {allowed} array (to load as {want}), got dtype {arr.dtype}"
                         f" ({type(value).__name__})")
    if tuple(arr.shape) != tuple(target.shape):
        raise ValueError(f"{where}: expected shape {tuple(target.shape)}, got {tuple(arr.shape)}")
    with np.errstate(over="ignore", invalid="ignore"):
        out = arr.astype(want, copy=False)
    if want.kind == "f" and not np.isfinite(out).all():
        n_nan, n_inf = int(np.isnan(out).sum()), int(np.isinf(out).sum())
        overflow = (f" after casting from {arr.dtype} (values beyond {want}'s range)" if np.isfinite(arr).all()
                    else "")
        raise ValueError(f"{where}: expected finite values, got non-finite values{overflow}: {n_nan} NaN and"
                         f" {n_inf} inf of {out.size} (a diverged or corrupted state?)")
    return out


class Module:
    """Base class of every layer and model."""

    def __init__(self):
        object.__setattr__(self, "_params", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "training", True)

    # --- registration -------------------------------------------------------------------
    def __setattr__(self, name, value):
        if "_params" not in self.__dict__:
            raise RuntimeError(f"{type(self).__name__}: call super().__init__() before setting attributes")
        for d in (self._params, self._modules, self._buffers):
            d.pop(name, None)
        if isinstance(value, Parameter):
            self._params[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        elif name in self.__dict__.get("_buffer_names", ()):
            self._buffers[name] = value
        object.__setattr__(self, name, value)

    def register_buffer(self, name: str, value):
        """A non-trained array saved in state_dict (e.g. batch-norm running statistics)."""
        names = self.__dict__.setdefault("_buffer_names", set())
        names.add(name)
        setattr(self, name, value)

    # --- the two passes -----------------------------------------------------------------
    def forward(self, x):
        raise NotImplementedError(f"{type(self).__name__}.forward")

    def backward(self, gy):
        raise NotImplementedError(f"{type(self).__name__}.backward")

    def __call__(self, x):
        return self.forward(x)

    def _saved_or_raise(self, saved):
        """Return what forward cached, or raise the error for backward-before-forward."""
        if saved is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward (nothing cached);"
                               f" run forward(x) first")
        return saved

    # --- traversal ----------------------------------------------------------------------
    def children(self) -> Iterator["Module"]:
        return iter(self._modules.values())

    def named_modules(self, prefix: str = ""):
        yield prefix, self
        for name, m in self._modules.items():
            yield from m.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self):
        for _, m in self.named_modules():
            yield m

    def named_parameters(self, prefix: str = ""):
        for name, p in self._params.items():
            yield (f"{prefix}.{name}" if prefix else name), p
        for name, m in self._modules.items():
            yield from m.named_parameters(f"{prefix}.{name}" if prefix else name)

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def named_buffers(self, prefix: str = ""):
        for name, b in self._buffers.items():
            yield (f"{prefix}.{name}" if prefix else name), b
        for name, m in self._modules.items():
            yield from m.named_buffers(f"{prefix}.{name}" if prefix else name)

    def zero_grad(self):
        for p in self.parameters():
            p.zero_grad()

    def train(self, mode: bool = True):
        for m in self.modules():
            object.__setattr__(m, "training", bool(mode))
        return self

    def eval(self):
        return self.train(False)

    # --- state --------------------------------------------------------------------------
    def state_dict(self) -> "OrderedDict[str, np.ndarray]":
        """Parameters and buffers by dotted name, as host (numpy) copies."""
        out = OrderedDict()
        for name, p in self.named_parameters():
            out[name] = backend.to_numpy(p.data).copy()
        for name, b in self.named_buffers():
            out[name] = backend.to_numpy(b).copy()
        return out

    def load_state_dict(self, state, strict: bool = True):
        """Copy arrays into parameters and buffers in place (keeping each one's device and dtype).

        Every entry is checked before anything is written, so a state that fails leaves the module
        as it was. With ``strict`` the keys must be exactly the module's (a KeyError lists the
        missing and the unexpected ones); without it, unexpected keys are ignored and missing ones
        left as they are. Each value must be a numeric array of its target's shape whose dtype casts
        safely in kind to the target's (integers or floats into a float target, integers into an
        integer one; not bool, complex, strings or objects), and a float target's values must be
        finite after the cast (no NaN or inf, including float64 values that overflow float32).
        A bad value raises ValueError naming the key, what was expected and what was given.
        """
        if not hasattr(state, "items"):
            raise TypeError(f"load_state_dict: state: expected a mapping of names to arrays, got"
                            f" {type(state).__name__}")
        targets = {name: (p, None) for name, p in self.named_parameters()}
        for mod_name, m in self.named_modules():
            for bname in m._buffers:
                targets[f"{mod_name}.{bname}" if mod_name else bname] = (m, bname)
        missing, unexpected = set(targets) - set(state), set(state) - set(targets)
        if strict and (missing or unexpected):
            raise KeyError(f"load_state_dict: missing keys {sorted(missing)}, unexpected keys {sorted(unexpected)}")
        staged = []
        for name, value in state.items():
            if name not in targets:
                continue
            owner, bname = targets[name]
            target = owner.data if bname is None else getattr(owner, bname)
            staged.append((target, _checked_value(name, value, target)))
        for target, value in staged:  # nothing is written until every entry has passed
            target[...] = backend.get_array_module(target).asarray(value)
        return self

    def to(self, device: str | None = None, dtype=None):
        """Move (and/or cast) every parameter and buffer in place; each gradient is moved and cast
        with its parameter, keeping its values. Returns self."""
        if device is not None:
            backend.check_device(device)
        if dtype is not None and np.dtype(dtype) not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise TypeError(f"Module.to: dtype: expected float32 or float64, got {np.dtype(dtype)}")

        def conv(a):
            if device is not None:
                a = backend.to_device(a, device)
            if dtype is not None and a.dtype != np.dtype(dtype) and a.dtype.kind == "f":
                a = a.astype(dtype)
            return a

        for m in self.modules():
            for p in m._params.values():
                p.data = conv(p.data)
                p.grad = conv(p.grad)
            for bname in list(m._buffers):
                setattr(m, bname, conv(getattr(m, bname)))
            m._moved(device, dtype)
        return self

    def _moved(self, device, dtype):
        """Hook for modules that keep other arrays (caches, RNG state) to follow a move."""

    def summary(self, input_shape, dtype=np.float32):
        """Print and return the :class:`minignn.summary.Summary` of one forward pass on an input of
        ``input_shape`` ((C, H, W), batch 1, or (N, C, H, W)): every leaf layer's output shape,
        parameters and FLOPs per sample. The module is left unchanged; see :mod:`minignn.summary`."""
        from .summary import summarize
        s = summarize(self, input_shape, dtype=dtype)
        print(s)
        return s

    def extra_repr(self) -> str:
        return ""

    def __repr__(self):
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        for name, m in self._modules.items():
            sub = repr(m).replace("\n", "\n  ")
            lines.append(f"  ({name}): {sub}")
        if len(lines) == 1:
            return lines[0] + ")"
        return "\n".join(lines) + "\n)"


class Sequential(Module):
    """Children applied in order; backward runs them in reverse."""

    def __init__(self, *layers: Module):
        super().__init__()
        for i, layer in enumerate(layers):
            if not isinstance(layer, Module):
                raise TypeError(f"Sequential: argument {i}: expected a Module, got {type(layer).__name__}")
            setattr(self, str(i), layer)

    def __len__(self):
        return len(self._modules)

    def __getitem__(self, i):
        return list(self._modules.values())[i]

    def __iter__(self):
        return iter(self._modules.values())

    def append(self, layer: Module):
        setattr(self, str(len(self._modules)), layer)
        return self

    def forward(self, x):
        for layer in self._modules.values():
            x = layer.forward(x)
        return x

    def backward(self, gy):
        for layer in reversed(self._modules.values()):
            gy = layer.backward(gy)
        return gy
