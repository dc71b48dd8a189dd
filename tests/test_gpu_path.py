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
