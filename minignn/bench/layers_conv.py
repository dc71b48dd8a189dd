"""Forward+backward of every convolution of the VGG-11/CIFAR net (batch 128, 3x3, padding 1)
against PyTorch CPU's conv2d on the same shapes, float32.

The minignn side is a :class:`Conv2d` (weight and bias gradients, and the input gradient except
for the first layer, as in a training step); the torch side is ``nn.Conv2d`` with the input
requiring a gradient except for the first layer. Both run one thread per Numba thread. Each
figure is a median of repeats; compare the ratio column, measured in the same run.

    minignn bench conv
    minignn bench --tiny conv     # the same eight layers at 1/8 of the widths, batch 2, one repeat
"""
from __future__ import annotations

import numpy as np

from .harness import median_time, ms, print_table, ratio, torch_or_none

#: (in_channels, out_channels, H=W) of each VGG-11 convolution at CIFAR resolution.
VGG11_CONVS = [(3, 64, 32), (64, 128, 16), (128, 256, 8), (256, 256, 8), (256, 512, 4), (512, 512, 4),
               (512, 512, 2), (512, 512, 2)]
#: the same eight convolutions at 1/8 of the widths (tiny mode)
TINY_CONVS = [(cin if cin == 3 else cin // 8, cout // 8, hw) for cin, cout, hw in VGG11_CONVS]
#: the batch of tiny mode
TINY_BATCH = 2


def bench_conv(repeats: int = 5, batch: int | None = None, layers=None, tiny: bool = False):
    """Time fwd+bwd of each layer; returns the table rows
    ``[layer, minignn ms, torch ms, ratio, GFLOP/s]``.

    ``layers`` defaults to :data:`VGG11_CONVS` and ``batch`` to 128, or to :data:`TINY_CONVS` and
    :data:`TINY_BATCH` when ``tiny``."""
    from minignn.layers.conv import Conv2d

    if layers is None:
        layers = TINY_CONVS if tiny else VGG11_CONVS
    if batch is None:
        batch = TINY_BATCH if tiny else 128

    torch = torch_or_none()
    rng = np.random.default_rng(0)
    rows = []
    tot = [0.0, 0.0]
    for li, (cin, cout, hw) in enumerate(layers):
        x = rng.standard_normal((batch, cin, hw, hw)).astype(np.float32)
        m = Conv2d(cin, cout, 3, padding=1, rng=rng)
        first = li == 0
        m.needs_input_grad = not first
        gy = rng.standard_normal((batch, cout, hw, hw)).astype(np.float32)

        def step():
            m.forward(x)
            m.backward(gy)

        t = median_time(step, repeats=repeats, warmup=2)
        flops = 2.0 * batch * cout * hw * hw * cin * 9 * (2 if first else 3)
        t_torch = None
        if torch is not None:
            tm = torch.nn.Conv2d(cin, cout, 3, padding=1)
            tx = torch.from_numpy(x).requires_grad_(not first)
            tgy = torch.from_numpy(gy)

            def tstep():
                tx.grad = None
                tm.zero_grad(set_to_none=True)
                tm(tx).backward(tgy)

            t_torch = median_time(tstep, repeats=repeats, warmup=2)
            tot[1] += t_torch
        tot[0] += t
        rows.append([f"{cin}->{cout} @{hw}x{hw}", ms(t), ms(t_torch), ratio(t, t_torch), flops / t / 1e9])
    t_torch_total = tot[1] if torch is not None else None
    rows.append(["total", ms(tot[0]), ms(t_torch_total), ratio(tot[0], t_torch_total), None])
    print_table(["Conv2d 3x3 p1 fwd+bwd (N=%d)" % batch, "ms", "torch ms", "x torch", "GFLOP/s"], rows,
                title=f"VGG-11/CIFAR convolutions, float32, median of {repeats}")
    return rows


if __name__ == "__main__":
    bench_conv()
