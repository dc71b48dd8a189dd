"""The training batch on the GPU (``gpu`` and ``gpu-sim``): :func:`make_batch_gpu` launches
``kernels.cu`` over the device-resident uint8 training set, so a run copies only the batch's
indices and crop offsets to the device per step, never images. Same contract as
:func:`minignn.data.loader.make_batch_cpu`."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from minignn import backend, cuda, ops

SOURCE = cuda.Source(Path(__file__).with_name("kernels.cu"))


def make_batch_gpu(x, idx, dy, dx, flip, pad: int, mean, std):
    from .loader import _crop_params, _scale_shift
    xp = backend.get_array_module(x)
    n = len(idx)
    dy, dx, flip, pad = _crop_params(n, dy, dx, flip, pad)
    scale, shift = _scale_shift(mean, std)
    x = xp.ascontiguousarray(x)
    out = xp.empty((n,) + tuple(x.shape[1:]), dtype=np.float32)
    on = [xp.ascontiguousarray(xp.asarray(a, dtype=t)) for a, t in
          ((idx, np.int64), (dy, np.int64), (dx, np.int64), (flip, np.uint8), (scale, np.float32), (shift, np.float32))]
    C, H, W = (int(v) for v in x.shape[1:])
    cuda.launch(SOURCE, "augment_normalize_gpu", *cuda.grid_1d(out.size), x, *on[:4], np.int32(n), np.int32(C),
                np.int32(H), np.int32(W), np.int32(pad), on[4], on[5], out)
    return out


AUGMENT = ops.Kernels(make_batch_gpu)
