"""Max-entropy pooling at (N, C, H, W) = (128, 64, 32, 32) float32, 2x2 stride 2, with a
GFGP-shaped lam (one per sample and channel): the fused kernel's forward, backward and
forward+backward against the memory-traffic floor, the whole GFGP layer (statistics + MLP +
pooling), and PyTorch CPU in the same run: ``max_pool2d`` forward+backward, and the same max-entropy
pooling written as PyTorch users would (unfold + softmax + weighted sum, autograd backward).

The floor counts the bytes that must move at least, over the measured copy bandwidth:
forward reads x, writes y (and reads lam); backward reads x (the weights depend on it) and gy,
writes gx (and reads lam, writes glam); max pooling's backward needs gy and the argmax instead of x
(counted as gy + gx, the argmax's bytes left out); the GFGP layer reads x once more for its
statistics. Run it with ``minignn bench maxent`` (``--tiny``: the same cases at (2, 8, 8, 8), one
repeat).
"""
from __future__ import annotations

import numpy as np

from .harness import bandwidth, median_time, ms, print_table, ratio, torch_or_none

SHAPE = (128, 64, 32, 32)
#: the input shape of tiny mode
TINY_SHAPE = (2, 8, 8, 8)


def _torch_maxent(torch, x, lam, k=2, s=2):
    """Max-entropy pooling with PyTorch ops (autograd differentiates it): x (N, C, H, W), lam (N, C)."""
    N, C = x.shape[:2]
    win = x.unfold(2, k, s).unfold(3, k, s)                       # (N, C, Ho, Wo, k, k) view
    win = win.reshape(N, C, win.shape[2], win.shape[3], k * k)
    w = torch.softmax(lam[:, :, None, None, None] * win, dim=-1)
    return (w * win).sum(dim=-1)


def bench_maxent(repeats: int = 5, tiny: bool = False):
    """Print (and return) the max-entropy pooling table at :data:`SHAPE`, or at
    :data:`TINY_SHAPE` when ``tiny`` (with the copy bandwidth measured on a small array)."""
    from minignn.layers import MaxEntPool2d, maxent_pool2d_backward, maxent_pool2d_forward

    torch = torch_or_none()
    bw = bandwidth(tiny)
    rng = np.random.default_rng(0)
    shape = TINY_SHAPE if tiny else SHAPE
    N, C, H, W = shape
    x = rng.standard_normal(shape).astype(np.float32)
    lam = rng.uniform(0, 1, (N, C)).astype(np.float32)            # GFGP: sigmoid output per (n, c)
    y, saved = maxent_pool2d_forward(x, lam)
    gy = rng.standard_normal(y.shape).astype(np.float32)
    maxent_pool2d_backward(gy, saved)                              # compile before timing

    def fwd():
        return maxent_pool2d_forward(x, lam)

    def bwd():
        return maxent_pool2d_backward(gy, saved)

    def fwd_bwd():
        maxent_pool2d_backward(gy, maxent_pool2d_forward(x, lam)[1])

    t_f = median_time(fwd, repeats=repeats)
    t_b = median_time(bwd, repeats=repeats)
    t_fb = median_time(fwd_bwd, repeats=repeats)

    layer = MaxEntPool2d(C, rng=np.random.default_rng(1))         # GFGP: avg stats, D = C/2, sigmoid

    def layer_step():
        layer.forward(x)
        layer.backward(gy)

    t_layer = median_time(layer_step, repeats=repeats)

    nx, ny, nl = x.nbytes, y.nbytes, lam.nbytes
    floor_f = (nx + ny + nl) / bw
    floor_b = (2 * nx + ny + 2 * nl) / bw
    floor_fb = floor_f + floor_b
    floor_layer = floor_fb + nx / bw
    floor_max = (nx + ny + ny + nx) / bw                           # x -> y; gy -> gx

    t_tmax = t_tme = None
    if torch is not None:
        tx = torch.from_numpy(x).requires_grad_(True)
        tgy = torch.from_numpy(gy)
        tlam = torch.from_numpy(lam).requires_grad_(True)

        def torch_max():
            tx.grad = None
            torch.nn.functional.max_pool2d(tx, 2).backward(tgy)

        def torch_maxent():
            tx.grad = tlam.grad = None
            _torch_maxent(torch, tx, tlam).backward(tgy)

        with torch.no_grad():                                       # same numbers as ours
            ty = _torch_maxent(torch, tx, tlam).numpy()
        err = float(np.max(np.abs(ty - y)))
        if err > 1e-4:
            print(f"warning: torch max-entropy pooling differs from ours by {err:.3g}")
        t_tmax = median_time(torch_max, repeats=repeats)
        t_tme = median_time(torch_maxent, repeats=repeats)

    rows = [
        ["maxent forward (fused kernel)", ms(t_f), ms(floor_f), ratio(t_f, floor_f), None, None],
        ["maxent backward (fused kernel)", ms(t_b), ms(floor_b), ratio(t_b, floor_b), None, None],
        ["maxent forward+backward", ms(t_fb), ms(floor_fb), ratio(t_fb, floor_fb), ratio(t_fb, t_tmax),
         ratio(t_fb, t_tme)],
        [f"MaxEntPool2d({C}) GFGP layer fwd+bwd", ms(t_layer), ms(floor_layer), ratio(t_layer, floor_layer),
         ratio(t_layer, t_tmax), ratio(t_layer, t_tme)],
        # torch's own rows: '-' throughout without torch (t_tmax, t_tme None), the floors still shown
        ["torch max_pool2d fwd+bwd", ms(t_tmax), ms(floor_max), ratio(t_tmax, floor_max), None, None],
        ["torch maxent unfold+softmax+autograd", ms(t_tme), ms(floor_fb), ratio(t_tme, floor_fb), None, None],
    ]
    import numba
    return print_table(
        ["case (float32, 2x2 s2)", "ms", "floor ms", "x floor", "x torch max", "x torch maxent"], rows,
        title=f"Max-entropy pooling, (N, C, H, W) = {shape}, GFGP lam (N, C); median of {repeats}, "
              f"{numba.config.NUMBA_NUM_THREADS} threads; floor at {bw / 1e9:.1f} GB/s copy bandwidth"
              + ("" if torch is not None else " (torch not installed: '-')"))
