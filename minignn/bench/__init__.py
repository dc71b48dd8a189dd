"""Benchmarks: ``minignn bench [NAME ...]`` (or ``python -m minignn.bench``) prints tables.

Names: ``layers`` (each layer's forward+backward vs PyTorch CPU and, for poolings, vs the
memory-traffic floor), ``maxent`` (the fused max-entropy pooling kernel vs the floor and vs
PyTorch's max pooling), ``vgg`` (one VGG-11 CIFAR training step, max vs GFGP pooling, vs PyTorch),
``conv`` (every VGG-11 convolution vs PyTorch).
PyTorch is optional: without it the comparison columns print '-'.
"""
from __future__ import annotations

import argparse
import importlib

BENCHMARKS = {
    "layers": ("minignn.bench.layers", "bench_layers"),
    "maxent": ("minignn.bench.maxent", "bench_maxent"),
    "vgg": ("minignn.bench.vgg", "bench_vgg"),
    "conv": ("minignn.bench.layers_conv", "bench_conv"),
}


def build_parser(p: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = p or argparse.ArgumentParser(prog="minignn bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("names", nargs="*",
                   help=f"benchmarks to run (default: all): {', '.join(BENCHMARKS)}")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per measurement (median reported)")
    p.add_argument("--batch-size", type=int, default=128, help="batch size for the vgg benchmark")
    return p


def run(args) -> int:
    from .harness import copy_bandwidth, gemm_rate
    names = args.names or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise SystemExit(f"minignn bench: unknown benchmark(s) {unknown}; expected some of {list(BENCHMARKS)}")
    import numba
    print(f"threads: {numba.config.NUMBA_NUM_THREADS}; copy bandwidth {copy_bandwidth() / 1e9:.1f} GB/s "
          f"(read+write); float32 GEMM {gemm_rate() / 1e9:.0f} GFLOP/s", flush=True)
    from minignn import _runtime
    print(f"runtime settings: {_runtime.applied or 'none (MINIGNN_NO_TUNING)'}", flush=True)
    for name in names:
        mod, fn = BENCHMARKS[name]
        kwargs = {"repeats": args.repeats}
        if name == "vgg":
            kwargs["batch_size"] = args.batch_size
        print(flush=True)
        getattr(importlib.import_module(mod), fn)(**kwargs)
    return 0


def main(argv=None) -> int:
    return run(build_parser().parse_args(argv))
