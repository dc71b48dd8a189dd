"""im2col and col2im on the GPU: the glue that launches ``kernels.cu`` (one thread per column
entry, one per input cell), written against ``xp`` and :func:`minignn.cuda.launch` so that it runs
unchanged on ``gpu`` and ``gpu-sim``. Same calling convention as ``im2col_cpu`` and
``col2im_cpu`` of ``cpu.py`` (they fill ``cols`` and ``gx`` in place); the GEMMs around them are
``xp.matmul``, i.e. cuBLAS on a GPU."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from minignn import cuda, ops

SOURCE = cuda.Source(Path(__file__).with_name("kernels.cu"))


def _args(shape, kh, kw, sh, sw, ph, pw, ho, wo):
    return tuple(np.int32(v) for v in (*shape, kh, kw, sh, sw, ph, pw, ho, wo))


def im2col_gpu(x, kh, kw, sh, sw, ph, pw, ho, wo, cols):
    """Fill ``cols`` (C*kh*kw, N*ho*wo) from ``x`` (N, C, H, W), both C-contiguous."""
    cuda.launch(SOURCE, "im2col_gpu" + cuda.suffix(x.dtype), *cuda.grid_1d(cols.size),
                x, *_args(x.shape, kh, kw, sh, sw, ph, pw, ho, wo), cols)


def col2im_gpu(cols, kh, kw, sh, sw, ph, pw, ho, wo, gx):
    """Overwrite ``gx`` (N, C, H, W) with the adjoint of im2col applied to ``cols``."""
    cuda.launch(SOURCE, "col2im_gpu" + cuda.suffix(cols.dtype), *cuda.grid_1d(gx.size),
                cols, *_args(gx.shape, kh, kw, sh, sw, ph, pw, ho, wo), gx)


KERNELS = ops.Kernels(im2col_gpu, col2im_gpu)
