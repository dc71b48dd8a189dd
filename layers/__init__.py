"""The layer library, installed as ``minignn.layers``.

One module or folder per layer family; every layer has a forward and a hand-written backward.
Folders with fast kernels hold ``reference.py`` (plain NumPy, the test oracle), ``cpu.py``
(Numba) and a GPU slot chosen through :func:`minignn.backend.pick`.
"""
from .activation import Dropout, Flatten, ReLU
from .linear import Linear
from .conv import Conv2d
from .batchnorm import BatchNorm2d
from .pooling import AvgPool2d, GlobalAvgPool2d, MaxPool2d
from .maxent import maxent_pool2d_backward, maxent_pool2d_forward
from .gfgp import GFGPMapping, global_stats_backward, global_stats_forward
from .maxent.layer import MaxEntPool2d

__all__ = [
    "Conv2d", "BatchNorm2d", "ReLU", "Linear", "Flatten", "Dropout",
    "MaxPool2d", "AvgPool2d", "GlobalAvgPool2d",
    "maxent_pool2d_forward", "maxent_pool2d_backward", "MaxEntPool2d",
    "GFGPMapping", "global_stats_forward", "global_stats_backward",
]
