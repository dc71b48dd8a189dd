"""minignn: a from-scratch, autograd-free deep-learning engine built around max-entropy pooling
and Global Feature Guided Local Pooling (Kobayashi, ICCV 2019).

Numba kernels are compiled once and cached on disk. The cache lives in ``$NUMBA_CACHE_DIR`` when
set, else in a per-user folder (``~/.cache/minignn/numba``), so it works for read-only installs.
Set ``NUMBA_DISABLE_JIT=1`` to run every kernel as plain Python (slow, but steppable in a debugger).
Importing minignn also applies the thread and allocator settings of :mod:`minignn._runtime`
(``MINIGNN_NO_TUNING=1`` turns them off).
"""
import os as _os

if "NUMBA_CACHE_DIR" not in _os.environ:
    _os.environ["NUMBA_CACHE_DIR"] = _os.path.join(
        _os.environ.get("XDG_CACHE_HOME", _os.path.join(_os.path.expanduser("~"), ".cache")), "minignn", "numba")


class _SourceLayers:
    """Makes ``minignn.layers`` importable from a source checkout.

    Installed, ``layers/`` is the subpackage ``minignn.layers`` (setup.py maps it). In the
    repository's root folder, though, ``python -m minignn`` or ``import minignn`` finds the source
    folder ``minignn/`` first (the current folder comes first on ``sys.path``), and there
    ``layers/`` sits beside it, not inside. This finder, last on ``sys.meta_path`` (every other
    finder, an editable install's included, is asked first), maps ``minignn.layers`` to that
    folder; it is installed only when this package is a source checkout's ``minignn/``.
    """

    def __init__(self, folder: str):
        self.folder = folder

    def find_spec(self, name, path=None, target=None):
        if name != __name__ + ".layers":
            return None
        import importlib.util
        return importlib.util.spec_from_file_location(name, _os.path.join(self.folder, "__init__.py"),
                                                      submodule_search_locations=[self.folder])


def _map_source_layers():
    import sys
    here = _os.path.dirname(_os.path.abspath(__file__))
    root = _os.path.dirname(here)
    folder = _os.path.join(root, "layers")
    if (not _os.path.isdir(_os.path.join(here, "layers")) and _os.path.isfile(_os.path.join(folder, "registry.py"))
            and _os.path.isfile(_os.path.join(root, "setup.py"))
            and not any(isinstance(f, _SourceLayers) for f in sys.meta_path)):
        sys.meta_path.append(_SourceLayers(folder))


_map_source_layers()

from . import _runtime  # noqa: E402  (before NumPy is loaded: see _runtime's docstring)

_runtime.tune()

from . import backend  # noqa: E402
from .backend import get_array_module, gpu_available, to_device, to_numpy  # noqa: E402
from .module import Module, Parameter, Sequential  # noqa: E402
from .gradcheck import GradcheckError, check_gradients, gradcheck  # noqa: E402
from .loss import SoftmaxCrossEntropy  # noqa: E402
from .optim import SGD  # noqa: E402
from .saving import load, save  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "backend", "get_array_module", "gpu_available", "to_device", "to_numpy",
    "Module", "Parameter", "Sequential",
    "GradcheckError", "check_gradients", "gradcheck",
    "SoftmaxCrossEntropy", "SGD", "save", "load",
]
