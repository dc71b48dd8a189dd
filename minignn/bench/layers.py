"""Forward+backward of each layer at a VGG-11/CIFAR shape, against PyTorch CPU on the same input
and, for the poolings, against the memory-traffic floor.

The floor counts the bytes a pooling must move at least: forward reads x and writes y; backward
reads gy and writes gx (max/avg), and max-entropy pooling reads x once more in backward (its
weights depend on x) plus once for the GFGP statistics. Divided by the measured copy bandwidth.
"""
from __future__ import annotations

import numpy as np

from .harness import copy_bandwidth, median_time, print_table, torch_or_none


def _cases():
    from minignn.layers import (AvgPool2d, BatchNorm2d, Conv2d, GlobalAvgPool2d, Linear, MaxEntPool2d,
                                MaxPool2d, ReLU)
    big = (128, 64, 32, 32)
    # name, module factory, input shape, floor as (passes over x-sized arrays, passes over y-sized
    # arrays) or None, torch builder
    return [
        ("Conv2d 64->128 3x3 p1", lambda: Conv2d(64, 128, 3, padding=1), (128, 64, 16, 16), None,
         lambda nn: nn.Conv2d(64, 128, 3, padding=1)),
        ("BatchNorm2d(64)", lambda: BatchNorm2d(64), big, None, lambda nn: nn.BatchNorm2d(64)),
        ("ReLU", lambda: ReLU(), big, None, lambda nn: nn.ReLU()),
        ("Linear 512->512", lambda: Linear(512, 512), (128, 512), None, lambda nn: nn.Linear(512, 512)),
        ("MaxPool2d 2x2", lambda: MaxPool2d(2), big, (2, 2), lambda nn: nn.MaxPool2d(2)),
        ("AvgPool2d 2x2", lambda: AvgPool2d(2), big, (2, 2), lambda nn: nn.AvgPool2d(2)),
        ("MaxPool2d 3x3 s2 p1", lambda: MaxPool2d(3, 2, 1), big, (2, 2),
         lambda nn: nn.MaxPool2d(3, 2, 1)),
        ("GlobalAvgPool2d", lambda: GlobalAvgPool2d(), big, (2, 2),
         lambda nn: nn.AdaptiveAvgPool2d(1)),
        ("MaxEntPool2d 2x2 GFGP", lambda: MaxEntPool2d(64, 2), big, (4, 2), None),
    ]


def bench_layers(repeats: int = 5):
    torch = torch_or_none()
    bw = copy_bandwidth()
    rng = np.random.default_rng(0)
    rows = []
    for name, make, shape, floor, tmake in _cases():
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
        rows.append([name, str(shape), t * 1e3, None if t_torch is None else t_torch * 1e3,
                     None if t_torch is None else t / t_torch,
                     None if t_floor is None else t_floor * 1e3, None if t_floor is None else t / t_floor])
    return print_table(["layer (fwd+bwd, float32)", "input", "ms", "torch ms", "x torch", "floor ms", "x floor"],
                       rows, title=f"Per-layer forward+backward (median of {repeats}; "
                                   f"floor at {bw / 1e9:.1f} GB/s copy bandwidth)")
