"""Forward+backward of each layer at a VGG-11/CIFAR shape, against PyTorch CPU on the same input
and, for the poolings, against the memory-traffic floor.

The floor counts the bytes a pooling must move at least: forward reads x and writes y; backward
reads gy and writes gx (max/avg), and max-entropy pooling reads x once more in backward (its
weights depend on x) plus once for the GFGP statistics. Divided by the measured copy bandwidth.

A second table has one row per pooling of the ``--pool`` registry (2x2, stride 2, as the models
use them): its forward+backward against its own floor (:data:`POOL_FLOORS`) and against PyTorch's
``max_pool2d`` forward+backward on the same input, timed in the same run.
"""
from __future__ import annotations

import time

import numpy as np

from .harness import bandwidth, median_time, ms, print_table, ratio, torch_or_none, transcendental_pass


#: (N, C, H=W) of the pooling/BatchNorm/ReLU input, (N, C, H=W) of the convolution's input and the
#: Linear width: the VGG-11/CIFAR shapes, and the small ones of tiny mode
SHAPES = {"full": ((128, 64, 32), (128, 64, 16), 512), "tiny": ((2, 8, 8), (2, 8, 4), 32)}


def _cases(tiny: bool = False):
    """The benchmarked layers at the full (VGG-11/CIFAR) or tiny shapes, as
    ``(name, module factory, input shape, floor, torch builder)``; the floor is (passes over
    x-sized arrays, passes over y-sized arrays) or None."""
    from minignn.layers import (AvgPool2d, BatchNorm2d, Conv2d, GlobalAvgPool2d, Linear, MaxEntPool2d,
                                MaxPool2d, ReLU)
    (n, c, hw), (cn, cc, chw), f = SHAPES["tiny" if tiny else "full"]
    big = (n, c, hw, hw)
    return [
        (f"Conv2d {cc}->{2 * cc} 3x3 p1", lambda: Conv2d(cc, 2 * cc, 3, padding=1), (cn, cc, chw, chw), None,
         lambda nn: nn.Conv2d(cc, 2 * cc, 3, padding=1)),
        (f"BatchNorm2d({c})", lambda: BatchNorm2d(c), big, None, lambda nn: nn.BatchNorm2d(c)),
        ("ReLU", lambda: ReLU(), big, None, lambda nn: nn.ReLU()),
        (f"Linear {f}->{f}", lambda: Linear(f, f), (n, f), None, lambda nn: nn.Linear(f, f)),
        ("MaxPool2d 2x2", lambda: MaxPool2d(2), big, (2, 2), lambda nn: nn.MaxPool2d(2)),
        ("AvgPool2d 2x2", lambda: AvgPool2d(2), big, (2, 2), lambda nn: nn.AvgPool2d(2)),
        ("MaxPool2d 3x3 s2 p1", lambda: MaxPool2d(3, 2, 1), big, (2, 2),
         lambda nn: nn.MaxPool2d(3, 2, 1)),
        ("GlobalAvgPool2d", lambda: GlobalAvgPool2d(), big, (2, 2),
         lambda nn: nn.AdaptiveAvgPool2d(1)),
        ("MaxEntPool2d 2x2 GFGP", lambda: MaxEntPool2d(c, 2), big, (4, 2), None),
    ]


#: each registry pooling's floor as (passes over x-sized arrays, passes over y-sized arrays): what
#: its forward and backward must read and write at least. skip reads and writes y-sized arrays and
#: writes gx; max/avg read x, write y, read gy, write gx; max-entropy pooling (and softpool, and
#: lppool, which needs y too) reads x again in backward; mixed writes and reads back max - avg;
#: gated also the gate, and reads x again for omega's gradient; the GFGP forms read x once more
#: for their statistics; stochastic and s3 (train mode) read x, write y and their choices, read
#: gy and write gx (their small index arrays are left out); lip's pooling kernel (a row of its
#: own, "lip (kernel)") reads x and the logits L and writes y, then reads x, L and gy and writes
#: gx and gL; the whole lip layer gets the kernel's floor, a loose bound (its logit network, a
#: 3x3 conv and an instance norm, is compute-bound); dpp reads x, writes y, reads x
#: and gy, writes gx (gfgp-dpp: and x once more for its statistics); gaussian (train mode) as
#: gfgp-dpp, plus its per-window eta read in forward and backward and its gradient written.
POOL_FLOORS = {"skip": (1, 3), "avg": (2, 2), "max": (2, 2), "maxent": (3, 2), "maxent-param": (3, 2),
               "gfgp": (4, 2), "gfgp-local": (4, 2), "softpool": (3, 2), "mixed": (2, 4), "gated": (3, 6),
               "gfgp-gated": (3, 4), "lppool": (3, 3),
               "stochastic": (2, 2), "s3": (2, 2), "lip": (6, 2), "lip (kernel)": (6, 2),
               "dpp": (3, 2), "gfgp-dpp": (4, 2), "gaussian": (4, 5),
               # the kernels alone: their layer's floor less the statistics' pass over x; gfgp-local's
               # per-window lam is read twice and its gradient written, as gaussian's eta
               "gfgp (kernel)": (3, 2), "gfgp-local (kernel)": (3, 5), "gfgp-gated (kernel)": (2, 4),
               "gfgp-dpp (kernel)": (3, 2), "gaussian (kernel)": (3, 5)}

#: the poolings whose layer wraps its kernel in a small network (or, for gaussian, noise drawn
#: on the host): their kernel gets a row of its own, "NAME (kernel)", on the parameters the
#: layer's own forward gave it (lip: fixed logits in LIP's range (0, 12)).
KERNEL_ROWS = ("gfgp", "gfgp-local", "gfgp-gated", "gfgp-dpp", "lip", "gaussian")


def _pool_kernel_step(name, m, x, gy, rng):
    """One forward+backward of pooling ``name``'s kernel alone (None when it has no such row),
    with the per-sample parameters of the layer ``m``'s last forward."""
    if name not in KERNEL_ROWS:
        return None
    if name in ("gfgp", "gfgp-local"):
        from minignn.layers.maxent import maxent_pool2d_backward as bwd, maxent_pool2d_forward
        lam = m.last_lam

        def fwd():
            return maxent_pool2d_forward(x, lam, None, 2, 2)
    elif name == "gfgp-gated":
        from minignn.layers.mixpool import mixed_pool2d_backward as bwd, mixed_pool2d_forward
        a = m.last_a

        def fwd():
            return mixed_pool2d_forward(x, a, 2)
    elif name == "gfgp-dpp":
        from minignn.layers.dpp import dpp_pool2d_backward as bwd, dpp_pool2d_forward
        gamma, alpha = m.last_gamma, m.last_alpha

        def fwd():
            return dpp_pool2d_forward(x, gamma, alpha, 2)
    elif name == "gaussian":
        from minignn.layers.gaussian import gaussian_pool2d_backward as bwd, gaussian_pool2d_forward
        eta = m.last_eta

        def fwd():
            return gaussian_pool2d_forward(x, eta, 2)
    else:
        from minignn.layers.lip import lip_pool2d_backward as bwd, lip_pool2d_forward
        logit = (12 * rng.random(x.shape)).astype(x.dtype)

        def fwd():
            return lip_pool2d_forward(x, logit)

    def step():
        _, saved = fwd()
        bwd(gy, saved)
    return step


def _step(m, x, gy):
    def step():
        m.forward(x)
        m.backward(gy)
    return step


def bench_poolings(bw: float, repeats: int, tiny: bool, torch):
    """The per-pooling table: every name of the registry, built for the benchmark's channels."""
    from minignn.layers import POOLINGS
    n, c, hw = SHAPES["tiny" if tiny else "full"][0]
    rng = np.random.default_rng(0)
    # a ReLU's output, as every pooling of the models sees (lppool takes x >= 0)
    x = np.maximum(rng.standard_normal((n, c, hw, hw)), 0).astype(np.float32)
    t_max = None
    if torch is not None:
        tx = torch.from_numpy(x).requires_grad_(True)
        tgy = torch.from_numpy(rng.standard_normal((n, c, hw // 2, hw // 2)).astype(np.float32))

        def tstep():
            tx.grad = None
            torch.nn.functional.max_pool2d(tx, 2).backward(tgy)

        t_max = median_time(tstep, repeats=repeats)
        time.sleep(0.5)          # PyTorch's idle threads spin for a while and would slow the next row
    rows = []
    for name, spec in POOLINGS.items():
        m = spec.build(c)
        m.train()
        y = m.forward(x)
        gy = rng.standard_normal(y.shape).astype(np.float32)
        t = median_time(_step(m, x, gy), repeats=repeats)
        floor = POOL_FLOORS.get(name)
        t_floor = None if floor is None else (floor[0] * x.nbytes + floor[1] * y.nbytes) / bw
        rows.append([name, ms(t), ms(t_floor), ratio(t, t_floor), ratio(t, t_max)])
        kernel = _pool_kernel_step(name, m, x, gy, rng)
        if kernel is not None:       # the pooling kernel alone, on the parameters the layer gave it
            kernel()
            t = median_time(kernel, repeats=repeats)
            floor = POOL_FLOORS[f"{name} (kernel)"]
            t_floor = (floor[0] * x.nbytes + floor[1] * y.nbytes) / bw
            rows.append([f"{name} (kernel)", ms(t), ms(t_floor), ratio(t, t_floor), ratio(t, t_max)])
    t_exp, t_log = (transcendental_pass(x, w, repeats) for w in ("exp", "log"))
    return print_table(["pool (fwd+bwd, float32)", "ms", "floor ms", "x floor", "x torch max_pool2d"], rows,
                       title=f"Poolings of --pool, 2x2 stride 2, on {(n, c, hw, hw)} ReLU outputs (median of {repeats}; torch"
                             f" max_pool2d fwd+bwd {f'{ms(t_max):.2f}' if t_max is not None else '-'} ms; one float64 exp"
                             f" of every cell of x {ms(t_exp):.2f} ms, one log {ms(t_log):.2f} ms)")


def bench_layers(repeats: int = 5, tiny: bool = False):
    """Print (and return) the per-layer table; ``tiny`` runs the same cases at small shapes
    (and measures the copy bandwidth on a small array), for a quick check that it all runs."""
    torch = torch_or_none()
    bw = bandwidth(tiny)
    rng = np.random.default_rng(0)
    rows = []
    for name, make, shape, floor, tmake in _cases(tiny):
        m = make()
        x = rng.standard_normal(shape).astype(np.float32)
        y = m.forward(x)
        gy = rng.standard_normal(y.shape).astype(np.float32)

        def step():
            m.forward(x)
            m.backward(gy)

        t = median_time(step, repeats=repeats)
        t_floor = None
        if floor is not None:
            nx, ny = floor
            t_floor = (nx * x.nbytes + ny * y.nbytes) / bw
        t_torch = None
        if torch is not None and tmake is not None:
            tm = tmake(torch.nn)
            tx = torch.from_numpy(x).requires_grad_(True)
            tgy = torch.from_numpy(gy).reshape(tm(tx).shape)

            def tstep():
                tx.grad = None
                tm(tx).backward(tgy)

            t_torch = median_time(tstep, repeats=repeats)
        rows.append([name, str(shape), ms(t), ms(t_torch), ratio(t, t_torch), ms(t_floor), ratio(t, t_floor)])
    out = print_table(["layer (fwd+bwd, float32)", "input", "ms", "torch ms", "x torch", "floor ms", "x floor"],
                      rows, title=f"Per-layer forward+backward (median of {repeats}; "
                                  f"floor at {bw / 1e9:.1f} GB/s copy bandwidth)")
    print()
    return out + "\n\n" + bench_poolings(bw, repeats, tiny, torch)
