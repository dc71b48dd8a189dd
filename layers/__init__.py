"""The layer library, installed as ``minignn.layers``.

One module or folder per layer family; every layer has a forward and a hand-written backward.
Folders with fast kernels hold ``reference.py`` (plain NumPy, the test oracle) and ``cpu.py``
(Numba); each family registers its ops in :data:`minignn.ops.OPS` (reference, CPU and GPU
kernels, input generator), and :func:`minignn.ops.kernels` picks the device's kernels.
``_window.py`` is the geometry of a pooling window, shared by every pooling.

* ``maxent/``: the max-entropy pooling functionals (plain pooling, given lam and rho).
* ``gfgp/``: the global statistics, the GFGP mapping and the :class:`MaxEntPool2d` layer
  (``gfgp/layer.py``) that forms lam from them.
* ``mixpool/``: mixed and gated max-average pooling (and the GFGP-gated form), ``lppool/``:
  power-average pooling, ``softpool.py``: SoftPool (max-entropy pooling at lam = 1),
  ``stochastic/``: stochastic pooling and S3 (they draw in train mode), ``lip/``: local
  importance pooling and instance norm, ``dpp/``: detail-preserving pooling (and its GFGP form),
  ``gaussian/``: Gaussian-based pooling (mean + eta std, eta from global statistics).
* ``shape.py``: parameter-free layers that only move values (Subsample2d, ShortcutA, Identity).
* ``registry.py``: :data:`POOLINGS`, every ``--pool`` name and how it becomes a layer.
"""
from .activation import Dropout, Flatten, ReLU
from .linear import Linear
from .conv import Conv2d
from .batchnorm import BatchNorm2d
from .pooling import AvgPool2d, GlobalAvgPool2d, MaxPool2d
from .lppool import LPPool2d, lp_pool2d_backward, lp_pool2d_forward
from .mixpool import gated_pool2d_backward, gated_pool2d_forward, mixed_pool2d_backward, mixed_pool2d_forward
from .mixpool.layer import GatedPool2d, MixedPool2d
from .softpool import SoftPool2d
from .stochastic import s3_pool2d_backward, s3_pool2d_forward, stochastic_pool2d_backward, stochastic_pool2d_forward
from .stochastic.layer import S3Pool2d, StochasticPool2d
from .lip import (InstanceNorm2d, LIPPool2d, instance_norm2d_backward, instance_norm2d_forward, lip_pool2d_backward,
                  lip_pool2d_forward)
from .dpp import DPPool2d, dpp_pool2d_backward, dpp_pool2d_forward
from .gaussian import GaussianPool2d, gaussian_pool2d_backward, gaussian_pool2d_forward
from .maxent import maxent_pool2d_backward, maxent_pool2d_forward
from .gfgp import GFGPMapping, global_stats_backward, global_stats_forward
from .gfgp.layer import MaxEntPool2d
from .shape import Identity, ShortcutA, Subsample2d
from .registry import POOLINGS, PoolingSpec, register_pooling, validate_options

__all__ = [
    "Conv2d", "BatchNorm2d", "ReLU", "Linear", "Flatten", "Dropout",
    "MaxPool2d", "AvgPool2d", "GlobalAvgPool2d",
    "LPPool2d", "lp_pool2d_forward", "lp_pool2d_backward",
    "SoftPool2d", "MixedPool2d", "GatedPool2d", "StochasticPool2d", "S3Pool2d", "LIPPool2d", "InstanceNorm2d", "DPPool2d",
    "dpp_pool2d_forward", "dpp_pool2d_backward", "GaussianPool2d", "gaussian_pool2d_forward", "gaussian_pool2d_backward",
    "lip_pool2d_forward", "lip_pool2d_backward", "instance_norm2d_forward", "instance_norm2d_backward",
    "stochastic_pool2d_forward", "stochastic_pool2d_backward", "s3_pool2d_forward", "s3_pool2d_backward",
    "mixed_pool2d_forward", "mixed_pool2d_backward", "gated_pool2d_forward", "gated_pool2d_backward",
    "maxent_pool2d_forward", "maxent_pool2d_backward", "MaxEntPool2d",
    "GFGPMapping", "global_stats_forward", "global_stats_backward",
    "Subsample2d", "ShortcutA", "Identity",
    "POOLINGS", "PoolingSpec", "register_pooling", "validate_options",
]
