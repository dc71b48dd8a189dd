"""One VGG-11 CIFAR training step (batch 128, 32x32, BN, five 2x2 pools, widths
64-128-256-256-512-512-512-512, global average pool, linear 10): forward, softmax cross-entropy,
backward, SGD (momentum 0.9, Nesterov, weight decay 5e-4), with max pooling and with GFGP at all
five pools; against PyTorch CPU eager for the same model and step, measured in the same run
(PyTorch's GFGP is the straightforward composite: global average -> MLP -> sigmoid for lam,
unfold + softmax for the pooling, autograd for the backward).

``--tiny`` runs the same step on the same 11-layer net at 1/8 of the widths (8-16-32-32-64-64-64-64),
batch 2 unless ``--batch-size`` says otherwise, one repeat.
"""
from __future__ import annotations

import numpy as np

from .harness import median_time, ms, print_table, ratio, torch_or_none

VGG11 = [64, "P", 128, "P", 256, 256, "P", 512, 512, "P", 512, 512, "P"]
#: tiny mode: the channel scale (minignn's ``build_model(width=...)``) and the default batch
TINY_WIDTH = 0.125
TINY_BATCH = 2


def _torch_vgg(torch, pool: str, width: float = 1.0):
    nn = torch.nn

    class GFGPPool(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.mlp = nn.Sequential(nn.Linear(c, c // 2, bias=False), nn.ReLU(), nn.Linear(c // 2, c, bias=False))

        def forward(self, x):
            n, c, h, w = x.shape
            lam = torch.sigmoid(self.mlp(x.mean(dim=(2, 3))))  # (N, C)
            win = x.reshape(n, c, h // 2, 2, w // 2, 2).permute(0, 1, 2, 4, 3, 5).reshape(n, c, h // 2, w // 2, 4)
            wts = torch.softmax(lam[:, :, None, None, None] * win, dim=-1)
            return (wts * win).sum(-1)

    layers, c = [], 3
    for v in VGG11:
        if v == "P":
            layers.append(nn.MaxPool2d(2) if pool == "max" else GFGPPool(c))
        else:
            v = max(1, int(round(v * width)))                  # as minignn.models scales widths
            layers += [nn.Conv2d(c, v, 3, padding=1, bias=False), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
            c = v
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 10)]
    return nn.Sequential(*layers)


def minignn_step(pool: str, width: float, x, labels, device: str = "cpu"):
    """The benchmarked step of minignn's VGG-11 on ``device`` (``x``, ``labels`` already there),
    as a function of no arguments: forward, softmax cross-entropy, backward, SGD."""
    from minignn import SGD, SoftmaxCrossEntropy
    from minignn.models import build_model

    model = build_model("vgg11", pool=pool, width=width).to(device)
    opt = SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    ce = SoftmaxCrossEntropy()

    def step():
        opt.zero_grad()
        ce.forward(model.forward(x), labels)
        model.backward(ce.backward())
        opt.step()
    return step


def torch_step(torch, pool: str, width: float, x, labels):
    """The same step in PyTorch eager, on the device of the tensors ``x`` and ``labels``."""
    tm = _torch_vgg(torch, pool, width).to(x.device)
    topt = torch.optim.SGD(tm.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)

    def tstep():
        topt.zero_grad()
        torch.nn.functional.cross_entropy(tm(x), labels).backward()
        topt.step()
    return tstep


def bench_vgg(repeats: int = 5, batch_size: int | None = None, tiny: bool = False):
    """Print (and return) the VGG-11 training-step table; ``batch_size`` defaults to 128, or to
    :data:`TINY_BATCH` when ``tiny`` (which also scales every width by :data:`TINY_WIDTH`)."""
    if batch_size is None:
        batch_size = TINY_BATCH if tiny else 128
    width = TINY_WIDTH if tiny else 1.0

    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch_size, 3, 32, 32)).astype(np.float32)
    labels = rng.integers(0, 10, batch_size)
    torch = torch_or_none()
    times = {}
    for pool in ("max", "gfgp"):
        times[("minignn", pool)] = median_time(minignn_step(pool, width, x, labels), repeats=repeats, warmup=2)
        if torch is not None:
            tstep = torch_step(torch, pool, width, torch.from_numpy(x), torch.from_numpy(labels))
            times[("torch", pool)] = median_time(tstep, repeats=repeats, warmup=2)
    rows = []
    for pool in ("max", "gfgp"):
        ours, ref = times[("minignn", pool)], times.get(("torch", pool))
        rows.append([f"VGG-11 step, {pool} pooling", ms(ours), ms(ref), ratio(ours, ref),
                     ratio(ours, times[("minignn", "max")]), ratio(ref, times.get(("torch", "max")))])
    return print_table(["batch %d, float32" % batch_size, "minignn ms", "torch ms", "x torch", "x own max",
                        "torch x own max"], rows,
                       title=f"VGG-11 CIFAR training step (median of {repeats})"
                             + (f", widths x{width}" if tiny else ""))
