"""Benchmarks on a GPU device: ``minignn bench --device gpu`` (or ``gpu-sim``) [maxent] [vgg].

* ``maxent``: max-entropy pooling forward+backward at (N, C, H, W) = (256, 128, 32, 32) float32,
  2x2 stride 2, with a GFGP lam (one per sample and channel), against the memory-traffic floor
  (the bytes that must move over the measured device-to-device copy bandwidth: forward reads x
  and writes y, backward reads x and gy and writes gx) and against PyTorch's ``max_pool2d``
  forward+backward on the same GPU in the same run; our max pooling too.
* ``vgg``: one VGG-11 CIFAR-10 training step (batch 128; max and GFGP pooling) and the epoch it
  implies (50,000 images), against PyTorch eager with cuDNN on the same GPU.

GPU times are CUDA events recorded around each repeat after a synchronise (the median of the
repeats), never the host clock; PyTorch's with ``torch.cuda.Event``. On ``gpu-sim`` the same code
runs on the CPU with the host clock: a check that the GPU path runs (and how slowly a simulator
does), not a GPU measurement. ``--tiny`` uses small shapes (for gpu-sim, or a quick check).
"""
from __future__ import annotations

import time

import numpy as np

from minignn import backend

from .harness import ms, print_table, ratio

SHAPE = (256, 128, 32, 32)
TINY_SHAPE = (2, 8, 8, 8)
EPOCH_IMAGES = 50_000


def device_time(fn, device: str, repeats: int = 5, warmup: int = 1) -> float:
    """Median seconds of ``fn()`` on ``device``: CUDA events on ``gpu`` (after a synchronise),
    the host clock elsewhere."""
    for _ in range(warmup):
        fn()
    times = []
    if device == "gpu":
        cp = backend._import_cupy()
        cp.cuda.Device().synchronize()
        for _ in range(repeats):
            start, end = cp.cuda.Event(), cp.cuda.Event()
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(cp.cuda.get_elapsed_time(start, end) / 1e3)
    else:
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return float(np.median(times))


def torch_time(torch, fn, repeats: int = 5, warmup: int = 1) -> float:
    """Median seconds of ``fn()`` on PyTorch's current CUDA device, with torch.cuda.Event."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return float(np.median(times))


def _torch_cuda():
    """torch with a usable CUDA device, or None."""
    try:
        import torch
    except ImportError:
        return None
    return torch if torch.cuda.is_available() else None


def device_bandwidth(device: str, tiny: bool = False, repeats: int = 7) -> float:
    """Measured device-to-device copy bandwidth in bytes/s (bytes read plus bytes written)."""
    xp = backend.xp_for(device)
    n = (8 if tiny else 512) * 2**20 // 4
    src = xp.ones(n, dtype=np.float32)
    dst = xp.empty_like(src)
    t = device_time(lambda: xp.copyto(dst, src), device, repeats=repeats, warmup=2)
    return 2.0 * src.nbytes / t


def describe(device: str) -> str:
    if device == "gpu":
        cp = backend._import_cupy()
        props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
        name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        return f"{name}, CuPy {cp.__version__}, CUDA runtime {cp.cuda.runtime.runtimeGetVersion()}"
    from minignn.cuda import sim
    return f"gpu-sim: the CUDA kernels compiled by {sim.compiler()} and run on the CPU (not a GPU measurement)"


def bench_maxent(device: str = "gpu", repeats: int = 5, tiny: bool = False):
    from minignn.layers import maxent_pool2d_backward, maxent_pool2d_forward
    from minignn.layers.pooling import max_pool2d_backward, max_pool2d_forward

    bw = device_bandwidth(device, tiny)
    shape = TINY_SHAPE if tiny else SHAPE
    N, C, H, W = shape
    rng = np.random.default_rng(0)
    x = backend.to_device(rng.standard_normal(shape).astype(np.float32), device)
    lam = backend.to_device(rng.uniform(0, 1, (N, C)).astype(np.float32), device)
    y, saved = maxent_pool2d_forward(x, lam)
    gy = backend.to_device(rng.standard_normal(y.shape).astype(np.float32), device)

    def me():
        maxent_pool2d_backward(gy, maxent_pool2d_forward(x, lam)[1])

    def mx():
        ym, arg = max_pool2d_forward(x, 2)
        max_pool2d_backward(gy, arg, x.shape, 2)

    t_me = device_time(me, device, repeats)
    t_mx = device_time(mx, device, repeats)
    floor = (x.nbytes + y.nbytes + 2 * x.nbytes + y.nbytes) / bw
    t_torch = None
    torch = _torch_cuda() if device == "gpu" else None
    if torch is not None:
        tx = torch.as_tensor(backend.to_numpy(x), device="cuda").requires_grad_(True)
        tgy = torch.as_tensor(backend.to_numpy(gy), device="cuda")

        def tmax():
            tx.grad = None
            torch.nn.functional.max_pool2d(tx, 2).backward(tgy)

        t_torch = torch_time(torch, tmax, repeats)
    rows = [["maxent fwd+bwd, GFGP lam (N, C)", ms(t_me), ms(floor), ratio(floor, t_me), ratio(t_me, t_torch)],
            ["max_pool2d fwd+bwd (ours)", ms(t_mx), ms(floor), ratio(floor, t_mx), ratio(t_mx, t_torch)],
            ["torch max_pool2d fwd+bwd", ms(t_torch), ms(floor), ratio(floor, t_torch), None]]
    return print_table(["case (float32, 2x2 s2)", "ms", "floor ms", "of copy bw", "x torch max"], rows,
                       title=f"{device}: max-entropy pooling at {shape}; median of {repeats}; floor = bytes moved"
                             f" at {bw / 1e9:.1f} GB/s device copy bandwidth"
                             + ("" if torch is not None else " (no PyTorch on this device: '-')"))


def bench_vgg(device: str = "gpu", repeats: int = 5, tiny: bool = False, batch_size: int | None = None):
    from .vgg import TINY_BATCH, TINY_WIDTH, minignn_step, torch_step

    batch_size = batch_size or (TINY_BATCH if tiny else 128)
    width = TINY_WIDTH if tiny else 1.0
    rng = np.random.default_rng(0)
    xh = rng.standard_normal((batch_size, 3, 32, 32)).astype(np.float32)
    yh = rng.integers(0, 10, batch_size)
    x, labels = backend.to_device(xh, device), backend.to_device(yh, device)
    torch = _torch_cuda() if device == "gpu" else None
    if torch is not None:
        torch.backends.cudnn.benchmark = True
    times = {}
    for pool in ("max", "gfgp"):
        times[("minignn", pool)] = device_time(minignn_step(pool, width, x, labels, device), device, repeats, warmup=2)
        if torch is not None:
            tstep = torch_step(torch, pool, width, torch.as_tensor(xh, device="cuda"), torch.as_tensor(yh, device="cuda"))
            times[("torch", pool)] = torch_time(torch, tstep, repeats, warmup=2)
    steps = -(-EPOCH_IMAGES // batch_size)
    rows = []
    for pool in ("max", "gfgp"):
        ours, ref = times[("minignn", pool)], times.get(("torch", pool))
        rows.append([f"VGG-11 step, {pool} pooling", ms(ours), ms(ref), ratio(ours, ref),
                     None if ours is None else ours * steps, None if ref is None else ref * steps])
    return print_table([f"batch {batch_size}, float32", "ms", "torch ms", "x torch", "epoch s", "torch epoch s"],
                       rows, title=f"{device}: VGG-11 CIFAR-10 training step, median of {repeats}; an epoch is"
                                   f" {steps} steps" + (f"; widths x{width}" if tiny else "")
                                   + ("" if torch is not None else " (no PyTorch on this device: '-')"))


BENCHMARKS = {"maxent": bench_maxent, "vgg": bench_vgg}
