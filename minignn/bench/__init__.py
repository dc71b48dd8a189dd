"""Benchmarks: ``minignn bench [NAME ...]`` (or ``python -m minignn.bench``) prints tables.

Names: ``layers`` (each layer's forward+backward vs PyTorch CPU and, for poolings, vs the
memory-traffic floor), ``maxent`` (the fused max-entropy pooling kernel vs the floor and vs
PyTorch's max pooling), ``vgg`` (one VGG-11 CIFAR training step, max vs GFGP pooling, vs PyTorch),
``conv`` (every VGG-11 convolution vs PyTorch).
PyTorch is optional: without it the comparison columns print '-'.

``--tiny`` runs every chosen benchmark through the same code at small shapes (batch 2, a few
channels; VGG-11 at 1/8 of its widths), one repeat unless ``--repeats`` says otherwise, with the
copy bandwidth and GEMM rate measured on small arrays: a check that the benchmarks run (a few
seconds once the kernels are compiled), not a measurement.

``--device gpu`` (or ``gpu-sim``) runs ``maxent`` and ``vgg`` on that device instead
(:mod:`minignn.bench.device`: CUDA-event timing, against the device's copy bandwidth and PyTorch
with cuDNN on the same GPU).
"""
from __future__ import annotations

import argparse
import importlib

from minignn.backend import DEVICES
from minignn.checks import OneLineParser, int_at_least

BENCHMARKS = {
    "layers": ("minignn.bench.layers", "bench_layers"),
    "maxent": ("minignn.bench.maxent", "bench_maxent"),
    "vgg": ("minignn.bench.vgg", "bench_vgg"),
    "conv": ("minignn.bench.layers_conv", "bench_conv"),
}

#: timed repeats per measurement: the default, and the default of tiny mode
REPEATS, TINY_REPEATS = 5, 1


def unknown_names(names) -> list[str]:
    """The entries of ``names`` that are not benchmark names (in order, each once)."""
    return list(dict.fromkeys(n for n in names if n not in BENCHMARKS))


def _unknown_message(unknown) -> str:
    which = ", ".join(repr(n) for n in unknown)
    return (f"unknown benchmark{'s' if len(unknown) > 1 else ''} {which}; "
            f"expected some of {', '.join(BENCHMARKS)}")


def _not_on_device(device, names) -> str:
    """'' when every one of ``names`` has a benchmark on the GPU device ``device``, else the
    usage message naming those that do not."""
    from .device import BENCHMARKS as ON_DEVICE
    other = [n for n in names if n not in ON_DEVICE]
    return "" if not other else (f"--device {device}: benchmarks on a GPU device are {', '.join(ON_DEVICE)};"
                                 f" got {', '.join(other)} (run those with --device cpu)")


def build_parser(p: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = p or OneLineParser(prog="minignn bench", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("names", nargs="*", metavar="NAME",
                   help=f"benchmarks to run (default: all): {', '.join(BENCHMARKS)}")
    p.add_argument("--repeats", type=int_at_least(1), default=None,
                   help=f"timed repeats per measurement, median reported (default: {REPEATS}; "
                        f"{TINY_REPEATS} with --tiny)")
    p.add_argument("--batch-size", type=int_at_least(1), default=None,
                   help="batch size for the vgg benchmark (default: 128; 2 with --tiny)")
    p.add_argument("--device", choices=DEVICES, default="cpu",
                   help="cpu (default): every benchmark; gpu or gpu-sim: the maxent and vgg benchmarks on that"
                        " device (CUDA-event timing on gpu; gpu-sim runs the GPU code on the CPU)")
    p.add_argument("--tiny", action="store_true",
                   help="small shapes and one repeat: checks that the benchmarks run, in seconds")
    return p


def run(args) -> int:
    """Run the benchmarks named in ``args`` (a namespace of :func:`build_parser`); returns 0.

    Raises ValueError for an unknown name (:func:`main` reports it as a usage error instead)."""
    from .harness import TINY_GEMM, bandwidth, gemm_rate
    names = args.names or list(BENCHMARKS)
    unknown = unknown_names(names)
    if unknown:
        raise ValueError(_unknown_message(unknown))
    tiny = bool(getattr(args, "tiny", False))
    repeats = args.repeats if args.repeats is not None else (TINY_REPEATS if tiny else REPEATS)
    device = getattr(args, "device", "cpu")
    if device != "cpu":
        return _run_on_device(device, args.names, repeats, tiny, args.batch_size)
    import numba
    gemm = gemm_rate(**TINY_GEMM) if tiny else gemm_rate()
    print(f"threads: {numba.config.NUMBA_NUM_THREADS}; copy bandwidth {bandwidth(tiny) / 1e9:.1f} GB/s "
          f"(read+write); float32 GEMM {gemm / 1e9:.0f} GFLOP/s", flush=True)
    from minignn import _runtime
    print(f"runtime settings: {_runtime.applied or 'none (MINIGNN_NO_TUNING)'}", flush=True)
    if tiny:
        print("tiny mode: small shapes, a check that the benchmarks run, not a measurement", flush=True)
    for name in names:
        mod, fn = BENCHMARKS[name]
        kwargs = {"repeats": repeats}
        if tiny:
            kwargs["tiny"] = True
        if name == "vgg" and args.batch_size is not None:
            kwargs["batch_size"] = args.batch_size
        print(flush=True)
        getattr(importlib.import_module(mod), fn)(**kwargs)
    return 0


def _run_on_device(device, names, repeats, tiny, batch_size) -> int:
    from minignn import backend

    from . import device as dev
    names = names or list(dev.BENCHMARKS)
    problem = _not_on_device(device, names)
    if problem:
        raise ValueError(problem)
    backend.check_device(device)
    print(f"device: {dev.describe(device)}", flush=True)
    if tiny:
        print("tiny mode: small shapes, a check that the benchmarks run, not a measurement", flush=True)
    for name in names:
        kw = dict(device=device, repeats=repeats, tiny=tiny)
        if name == "vgg":
            kw["batch_size"] = batch_size
        print(flush=True)
        dev.BENCHMARKS[name](**kw)
    return 0


def main(argv=None) -> int:
    """Entry point of ``minignn bench``: parses ``argv`` and runs; returns the exit status (a usage
    error exits with status 2 through argparse, naming the flag or the unknown benchmark)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    unknown = unknown_names(args.names)
    if unknown:
        parser.error(_unknown_message(unknown))
    if args.device != "cpu":            # a benchmark not on devices, a device that cannot run here
        from minignn import backend

        problem = _not_on_device(args.device, args.names)
        if problem:
            parser.error(problem)
        try:
            backend.check_device(args.device)
        except RuntimeError as e:
            parser.error(str(e))
    return run(args)
