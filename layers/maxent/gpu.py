"""Max-entropy pooling on the GPU: the glue that launches ``kernels.cu``, written against ``xp`` and
:func:`minignn.cuda.launch` so that it runs unchanged on ``gpu`` and ``gpu-sim``. Same calling
convention as the CPU kernels of ``__init__.py`` (``_forward_cpu``, ``_backward_cpu``).

Forward: one thread per output window. Backward: one thread per window (its softmax statistics,
its dlam and, when rho is learned, its drho per offset), then one thread per input cell gathering
its gradient over the windows that hold it; the per-window dlam and drho are summed over the
plane's positions here, with xp reductions accumulated in float64.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from minignn import backend, cuda, ops

SOURCE = cuda.Source(Path(__file__).with_name("kernels.cu"))


def _args(x_shape, y_shape, geometry, lam4, rho3):
    """(N, C, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw, Nl, Cl, Hl, Wl, Nr, Cr) as int32."""
    return tuple(np.int32(v) for v in (*x_shape, *y_shape[2:], *geometry, *lam4.shape, *rho3.shape[:2]))


def maxent_pool2d_fwd_gpu(x, lam4, rho3, geometry, y_shape):
    xp = backend.get_array_module(x)
    x, lam4, rho3 = (xp.ascontiguousarray(a) for a in (x, lam4, rho3))
    y = xp.empty(y_shape, dtype=x.dtype)
    cuda.launch(SOURCE, "maxent_pool2d_fwd_gpu" + cuda.suffix(x.dtype), *cuda.grid_1d(y.size),
                x, lam4, rho3, *_args(x.shape, y_shape, geometry, lam4, rho3), y)
    return y


def maxent_pool2d_bwd_gpu(x, lam4, rho3, gy, geometry, want_grho):
    """(gx (N, C, H, W), glam (N, C, Hl, Wl), grho (N, C, K)); grho is zeros without ``want_grho``."""
    xp = backend.get_array_module(x)
    x, lam4, rho3, gy = (xp.ascontiguousarray(a) for a in (x, lam4, rho3, gy))
    N, C = x.shape[:2]
    Ho, Wo = gy.shape[2:]
    K = geometry[0] * geometry[1]
    dt = x.dtype
    sfx = cuda.suffix(dt)
    args = _args(x.shape, gy.shape, geometry, lam4, rho3)
    stats = xp.empty((N, C, Ho, Wo, 4), dtype=dt)      # per window: X_r, max logit, gy / sum e, Y - X_r
    gl = xp.empty((N, C, Ho, Wo), dtype=dt)
    gr = xp.empty((N, C, Ho, Wo, K) if want_grho else (1,), dtype=dt)
    cuda.launch(SOURCE, "maxent_pool2d_bwd_win_gpu" + sfx, *cuda.grid_1d(gl.size),
                x, lam4, rho3, gy, *args, np.int32(1 if want_grho else 0), stats, gl, gr)
    gx = xp.empty(x.shape, dtype=dt)
    cuda.launch(SOURCE, "maxent_pool2d_bwd_gx_gpu" + sfx, *cuda.grid_1d(gx.size),
                x, lam4, rho3, stats, *args, gx)
    if tuple(lam4.shape[2:]) == (Ho, Wo):               # lam per position: its gradient per position
        glam = gl
    else:                                               # one lam per plane: summed over positions
        glam = gl.sum(axis=(2, 3), keepdims=True, dtype=np.float64).astype(dt)
    if want_grho:
        grho = gr.sum(axis=(2, 3), dtype=np.float64).astype(dt)
    else:
        grho = xp.zeros((N, C, K), dtype=dt)
    return gx, glam, grho


KERNELS = ops.Kernels(maxent_pool2d_fwd_gpu, maxent_pool2d_bwd_gpu)
