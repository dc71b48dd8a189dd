"""Learning-rate schedules as pure functions of the global step.

A schedule never keeps state: the learning rate of step ``t`` (0-based, counted over the whole
run) is a function of ``t`` and the schedule's settings only. Resuming a run therefore needs
nothing but the step counter, which the checkpoint stores.

Three schedules, as usually defined (``T`` = total number of steps, ``lr0`` = the peak rate):

* ``cosine``: ``lr(t) = min_lr + (lr0 - min_lr) * (1 + cos(pi * t / T)) / 2``, after an optional
  linear warm-up from ``lr0 / warmup_div`` over ``warmup_steps`` steps (then the cosine runs over
  the remaining ``T - warmup_steps`` steps).
* ``step``: ``lr(t) = lr0 * gamma ** (number of milestones <= t)``.
* ``onecycle`` (PyTorch's ``OneCycleLR`` with ``anneal_strategy="cos"``, two phases): from
  ``lr0 / div_factor`` up to ``lr0`` over the first ``pct_start * T - 1`` steps, then down to
  ``lr0 / (div_factor * final_div_factor)`` at step ``T - 1``, each phase a half cosine:
  ``anneal(a, b, p) = b + (a - b) * (1 + cos(pi * p)) / 2``.

Use :func:`make_schedule` to get a :class:`Schedule`; ``schedule.apply(optimizer, t)`` sets
``optimizer.lr`` for step ``t`` and returns it.
"""
from __future__ import annotations

import math
from typing import Sequence

from .checks import check_real

SCHEDULES = ("onecycle", "cosine", "step", "constant")


def _anneal_cos(start: float, end: float, pct: float) -> float:
    """Half-cosine from ``start`` (pct = 0) to ``end`` (pct = 1)."""
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1.0)


def _check_step(step, total_steps=None, where=""):
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"{where}: step: expected an integer >= 0, got {step!r}")
    if total_steps is not None and (isinstance(total_steps, bool) or not isinstance(total_steps, int)
                                    or total_steps < 1):
        raise ValueError(f"{where}: total_steps: expected an integer >= 1, got {total_steps!r}")


def constant_lr(step: int, base_lr: float) -> float:
    """The same rate at every step."""
    _check_step(step, where="constant_lr")
    return float(base_lr)


def cosine_lr(step: int, total_steps: int, base_lr: float, min_lr: float = 0.0, warmup_steps: int = 0,
              warmup_div: float = 25.0) -> float:
    """Cosine decay from ``base_lr`` to ``min_lr`` over ``total_steps`` (after an optional linear
    warm-up from ``base_lr / warmup_div``). Steps past the end keep ``min_lr``."""
    _check_step(step, total_steps, "cosine_lr")
    if not 0 <= warmup_steps < total_steps:
        raise ValueError(f"cosine_lr: warmup_steps: expected an integer in [0, total_steps={total_steps}),"
                         f" got {warmup_steps!r}")
    if step < warmup_steps:
        lo = base_lr / warmup_div
        return lo + (base_lr - lo) * step / warmup_steps
    span = total_steps - warmup_steps
    pct = min(1.0, (step - warmup_steps) / span)
    return _anneal_cos(base_lr, min_lr, pct)


def step_lr(step: int, base_lr: float, milestones: Sequence[int], gamma: float = 0.1) -> float:
    """``base_lr * gamma ** k`` where ``k`` is the number of milestones (steps) already reached."""
    _check_step(step, where="step_lr")
    k = sum(1 for m in milestones if step >= m)
    return base_lr * gamma ** k


def one_cycle_lr(step: int, total_steps: int, max_lr: float, pct_start: float = 0.3, div_factor: float = 25.0,
                 final_div_factor: float = 1e4) -> float:
    """PyTorch ``OneCycleLR`` (two phases, cosine annealing) at step ``step`` (0-based).

    Warm-up from ``max_lr / div_factor`` to ``max_lr`` ending at step ``pct_start * T - 1``, then
    annealing to ``max_lr / div_factor / final_div_factor`` at step ``T - 1``; later steps keep
    the final rate."""
    _check_step(step, total_steps, "one_cycle_lr")
    if not 0.0 < pct_start < 1.0:
        raise ValueError(f"one_cycle_lr: pct_start: expected a number in (0, 1), got {pct_start!r}")
    initial = max_lr / div_factor
    final = initial / final_div_factor
    end_up = float(pct_start * total_steps) - 1.0
    end_down = float(total_steps - 1)
    if step <= end_up:
        # PyTorch: pct = step / end_up (end_up may be <= 0 for very short runs)
        pct = step / end_up if end_up > 0 else 1.0
        return _anneal_cos(initial, max_lr, pct)
    span = end_down - end_up
    pct = min(1.0, (step - end_up) / span) if span > 0 else 1.0
    return _anneal_cos(max_lr, final, pct)


class Schedule:
    """A named schedule bound to its settings: ``lr_at(step)`` and ``apply(optimizer, step)``.

    Parameters
    ----------
    name : {"onecycle", "cosine", "step", "constant"}
    base_lr : float
        The peak rate (one-cycle's ``max_lr``; cosine's and step's starting rate).
    total_steps : int
        Steps in the whole run (epochs * steps per epoch).
    **options
        Passed to the schedule function (``pct_start``, ``div_factor``, ``final_div_factor`` for
        one-cycle; ``min_lr``, ``warmup_steps`` for cosine; ``milestones``, ``gamma`` for step).
    """

    def __init__(self, name: str, base_lr: float, total_steps: int, **options):
        if name not in SCHEDULES:
            raise ValueError(f"schedule: expected one of {SCHEDULES}, got {name!r}")
        base_lr = check_real(base_lr, "base_lr", "schedule", low=0, low_open=True)
        _check_step(0, total_steps, f"schedule {name!r}")
        self.name, self.base_lr, self.total_steps, self.options = name, base_lr, int(total_steps), dict(options)
        self.lr_at(0)  # validate the options now, not at the first step

    def lr_at(self, step: int) -> float:
        if self.name == "onecycle":
            return one_cycle_lr(step, self.total_steps, self.base_lr, **self.options)
        if self.name == "cosine":
            return cosine_lr(step, self.total_steps, self.base_lr, **self.options)
        if self.name == "step":
            return step_lr(step, self.base_lr, **self.options)
        return constant_lr(step, self.base_lr, **self.options)

    def apply(self, optimizer, step: int) -> float:
        """Set ``optimizer.lr`` to the rate of ``step`` and return it."""
        lr = self.lr_at(step)
        optimizer.lr = lr
        return lr

    def __repr__(self):
        opts = "".join(f", {k}={v!r}" for k, v in self.options.items())
        return f"Schedule({self.name!r}, base_lr={self.base_lr}, total_steps={self.total_steps}{opts})"


def make_schedule(name: str, base_lr: float, epochs: int, steps_per_epoch: int, **options) -> Schedule:
    """A :class:`Schedule` for ``epochs * steps_per_epoch`` steps.

    For ``"step"`` without ``milestones`` the rate drops by ``gamma`` (0.1) at 50% and 75% of the
    run; milestones given in ``milestone_epochs`` are converted to steps.
    """
    total = int(epochs) * int(steps_per_epoch)
    if name == "step":
        if "milestone_epochs" in options:
            options["milestones"] = [int(e) * steps_per_epoch for e in options.pop("milestone_epochs")]
        options.setdefault("milestones", [total // 2, (3 * total) // 4])
    return Schedule(name, base_lr, total, **options)
