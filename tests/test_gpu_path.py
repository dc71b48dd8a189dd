"""The GPU path end to end, on gpu-sim (always) and on a real GPU (when one is usable): a whole
training run, and the per-kernel coverage of the race check.

* ``minignn train --device gpu-sim`` (and ``--device gpu``) for one epoch on a few hundred images
  gives the losses and accuracies of ``--device cpu`` to float32 tolerance, for a max-pooling, a
  max-entropy and a GFGP network, and its run files say which device ran it;
* every CUDA kernel of minignn is launched (and so order-checked twice, ``MINIGNN_SIM_CHECK=1``)
  by the ops of the table on small inputs: none escapes the race check.
"""
import json

import numpy as np
import pytest

from helpers import SeededDraw
from minignn import backend

SIM = backend.sim_unavailable_reason()
needs_sim = pytest.mark.skipif(bool(SIM), reason=f"no gpu-sim: {SIM or 'n/a'}")
GPU_DEVICES = [pytest.param("gpu-sim", id="gpu-sim", marks=[needs_sim]),
               pytest.param("gpu", id="gpu", marks=[pytest.mark.gpu, pytest.mark.skipif(
                   not backend.gpu_available(), reason=f"no usable GPU: {backend.gpu_unavailable_reason() or 'n/a'}")])]

RUN = ["train", "--dataset", "synthetic", "--limit-train", "256", "--limit-test", "64", "--batch-size", "32",
       "--epochs", "1", "--width", "0.25", "--no-progress", "--no-plots", "--seed", "3"]


def _history(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("device", GPU_DEVICES)
@pytest.mark.parametrize("pool", ["max", "maxent", "gfgp"])
def test_one_epoch_on_a_gpu_device_gives_the_cpu_losses(pool, device, tmp_path, capsys):
    from minignn.cli import main
    runs = {}
    for device in ("cpu", device):
        out = tmp_path / device
        assert main([*RUN, "--model", "tiny", "--pool", pool, "--device", device, "--out", str(out)]) == 0
        runs[device] = _history(out)
        assert json.loads((out / "config.json").read_text())["device"] == device
    capsys.readouterr()
    (cpu,), (sim,) = runs["cpu"], runs[device]
    for key in ("train_loss", "test_loss"):
        np.testing.assert_allclose(sim[key], cpu[key], rtol=2e-4, err_msg=f"{pool}: {key}")
    for key in ("train_acc", "test_acc"):   # a logit within rounding of a tie may flip one image
        assert abs(sim[key] - cpu[key]) <= 100 / 64 + 1e-9, (key, sim[key], cpu[key])


def test_running_out_of_memory_is_one_line_naming_the_batch_size(tmp_path, capsys, monkeypatch):
    from minignn.cli import main
    from minignn.train import Trainer

    def oom(self, x, y):
        raise MemoryError("Out of memory allocating 1,073,741,824 bytes (allocated so far: 0 bytes).")

    monkeypatch.setattr(Trainer, "train_step", oom)
    assert main([*RUN, "--model", "tiny", "--pool", "max", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "out of host memory at batch size 32" in err and "lower --batch-size (e.g. --batch-size 16)" in err


def _forward_backward(op, case, device):
    dev = [backend.to_device(a, device) if isinstance(a, np.ndarray) else a for a in case.inputs]
    outs, saved = op.forward(*dev, **case.params)
    if op.backward is not None:
        xp = backend.xp_for(device)
        gys = [xp.ones(y.shape, dtype=y.dtype) if hasattr(y, "shape") and y.ndim > 0 else 1.0   # a scalar loss: a float
               for y in outs[:op.grad_outputs]]
        op.backward(saved, *gys)


@needs_sim
def test_every_cuda_kernel_is_launched_and_order_checked(monkeypatch):
    """Every op of the table, forward and backward, on gpu-sim over a fixed sweep of its sample
    cases (both dtypes), plus the geometries a sweep of small cases rarely reaches (max pooling
    over windows of more than 127 cells, whose argmax is int32, and mixed, gated and stochastic pooling over them): every extern "C" kernel of
    every .cu file of minignn runs, each launch twice in two block and thread orders."""
    from minignn.cuda import SIM_CHECK_ENV, sim, toolchain
    from minignn.layers.mixpool import (gated_pool2d_backward, gated_pool2d_forward, mixed_pool2d_backward,
                                        mixed_pool2d_forward)
    from minignn.layers.pooling import max_pool2d_backward, max_pool2d_forward
    from minignn.layers.stochastic import stochastic_pool2d_backward, stochastic_pool2d_forward
    from minignn.ops import OPS

    monkeypatch.setenv(SIM_CHECK_ENV, "1")
    sim.launched.clear()
    for name, op in OPS.items():
        for seed in range(16):
            for dtype in (np.float32, np.float64):
                _forward_backward(op, op.sample(SeededDraw([seed, len(name)]), dtype), "gpu-sim")
    for dtype in (np.float32, np.float64):
        x = backend.to_device(np.random.default_rng(0).standard_normal((1, 2, 13, 12)).astype(dtype), "gpu-sim")
        y, arg = max_pool2d_forward(x, kernel_size=12, stride=1)
        max_pool2d_backward(backend.xp_for("gpu-sim").ones(y.shape, dtype=dtype), arg, x.shape, 12, 1)
        ones = backend.xp_for("gpu-sim").ones(y.shape, dtype=dtype)
        y, saved = mixed_pool2d_forward(x, 0.25, kernel_size=12, stride=1)
        mixed_pool2d_backward(ones, saved)
        y, saved = gated_pool2d_forward(x, backend.xp_for("gpu-sim").zeros(144, dtype=dtype), kernel_size=12, stride=1)
        gated_pool2d_backward(ones, saved)
        u = backend.to_device(np.random.default_rng(1).random(y.shape), "gpu-sim")
        y, saved = stochastic_pool2d_forward(abs(x), u, kernel_size=12, stride=1)
        stochastic_pool2d_backward(ones, saved)
    every = {(str(src.path), k) for src in toolchain.sources() for k in src.kernels}
    missing = sorted(f"{p.rsplit('/', 2)[-2]}/{k}" for p, k in every - sim.launched)
    assert len(every) > 30 and not missing, f"kernels never launched on gpu-sim: {missing}"
