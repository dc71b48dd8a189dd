"""Save a trained model in one file and load it back in one call.

>>> import minignn
>>> from minignn.models import build_model
>>> model = build_model("tiny", pool="gfgp")
>>> minignn.save(model, "tiny-gfgp.npz", classes=["cat", "dog", ...], mean=ds.mean, std=ds.std)  # doctest: +SKIP
>>> model = minignn.load("tiny-gfgp.npz")          # or a run's best.npz, checkpoint.npz, or its folder
>>> model.classes, model.mean, model.std            # what predicting on new images needs

A model file is a minignn checkpoint (:mod:`minignn.checkpoint`: an ``.npz`` archive read without
pickles) holding

* ``spec``: how to rebuild the architecture, ``build_model(spec["model"], pool=spec["pool"],
  num_classes=spec["num_classes"], width=spec["width"], **spec["pool_kw"])``;
* ``model``: the parameters and buffers (``Module.state_dict``);
* ``classes``, ``mean``, ``std``, ``image_shape``: the class names (index = label) and what the
  training images were normalised with, ``(pixel / 255 - mean[c]) / std[c]``, so that new images
  can be fed to the model as the training images were (:mod:`minignn.predict` does this).

Only models made by :func:`minignn.models.build_model` can be saved this way (it records
``model.build_spec``); for a model of your own, save ``model.state_dict()`` with
:func:`minignn.checkpoint.save_checkpoint` and load it into a freshly built instance.

:func:`load` also reads what a training run writes: ``best.npz`` (the best epoch's weights) and
``checkpoint.npz`` (the latest position), whose saved config names the architecture, or the run
folder itself (its ``best.npz``, else its ``checkpoint.npz``).
"""
from __future__ import annotations

import os

import numpy as np

from . import backend
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .module import Module

KIND = "model"
#: the run files :func:`load` looks for in a run folder, in this order
RUN_FILES = ("best.npz", "checkpoint.npz")

__all__ = ["save", "load", "resolve_model_file", "KIND"]


def _float_list(v, name: str, channels: int | None) -> list[float] | None:
    if v is None:
        return None
    try:
        arr = np.asarray(backend.to_numpy(v) if hasattr(v, "dtype") else v, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as e:
        raise TypeError(f"save: {name}: expected a sequence of numbers (one per channel), got {v!r}") from e
    if channels is not None and arr.shape[0] != channels:
        raise ValueError(f"save: {name}: expected {channels} values (one per image channel), got {arr.shape[0]}")
    if not np.isfinite(arr).all() or (name == "std" and not (arr > 0).all()):
        raise ValueError(f"save: {name}: expected finite values{' > 0' if name == 'std' else ''}, got {arr.tolist()}")
    return [float(x) for x in arr]


def save(model: Module, path, *, classes=None, mean=None, std=None, image_shape=None) -> str:
    """Write ``model`` and what is needed to use it to ``path`` (an ``.npz`` file, written
    atomically: an interrupted save leaves an earlier file at ``path`` intact); returns the path.

    Parameters
    ----------
    model : Module
        Built by :func:`minignn.models.build_model` (or loaded by :func:`load`): it must carry
        ``model.build_spec``.
    classes : sequence of str, optional
        Class names, index = label (default: the model's ``classes`` if it has them, else
        ``"0"``, ``"1"``...). Their number must be the model's number of outputs.
    mean, std : sequence of float, optional
        Per-channel statistics the training images were normalised with, on the [0, 1] pixel
        scale (``Dataset.mean`` / ``Dataset.std``). Default: the model's own, if it has them;
        without them :func:`minignn.predict` cannot prepare images.
    image_shape : (C, H, W), optional
        The image size the model was trained on (default: the model's ``image_shape`` if it has
        one, else CIFAR's (3, 32, 32)).
    """
    if not isinstance(model, Module):
        raise TypeError(f"save: model: expected a minignn Module, got {type(model).__name__}")
    spec = getattr(model, "build_spec", None)
    if not isinstance(spec, dict):
        raise TypeError(f"save: model: a {type(model).__name__} without build_spec (it was not made by"
                        f" minignn.models.build_model), so the file could not say how to rebuild it; save its"
                        f" state_dict() with minignn.checkpoint.save_checkpoint and load that into a new instance")
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise TypeError(f"save: path: expected a file path, got {path!r}")
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"save: path: {path!r} is a folder; give a file name such as"
                                f" {os.path.join(path, 'model.npz')!r}")
    if image_shape is None:
        image_shape = getattr(model, "image_shape", None) or (3, 32, 32)
    try:
        shape = [int(v) for v in image_shape]
    except (TypeError, ValueError) as e:
        raise TypeError(f"save: image_shape: expected (C, H, W), got {image_shape!r}") from e
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"save: image_shape: expected three sizes >= 1 (C, H, W), got {tuple(shape)}")
    n = int(spec["num_classes"])
    classes = getattr(model, "classes", None) if classes is None else classes
    if classes is None:
        classes = [str(i) for i in range(n)]
    if isinstance(classes, str) or not all(isinstance(c, str) for c in classes):
        raise TypeError(f"save: classes: expected a sequence of class names (str), got {classes!r}")
    classes = list(classes)
    if len(classes) != n:
        raise ValueError(f"save: classes: the model has {n} outputs but {len(classes)} class names were given")
    mean = _float_list(getattr(model, "mean", None) if mean is None else mean, "mean", shape[0])
    std = _float_list(getattr(model, "std", None) if std is None else std, "std", shape[0])
    if (mean is None) != (std is None):
        raise ValueError("save: mean, std: give both (the normalisation of the training images) or neither")
    from . import __version__
    state = {"kind": KIND, "spec": dict(spec), "model": model.state_dict(), "classes": classes,
             "mean": mean, "std": std, "image_shape": shape, "minignn_version": __version__}
    return save_checkpoint(path, state)


def resolve_model_file(path) -> str:
    """The file :func:`load` reads for ``path``: the path itself, or for a run folder its
    ``best.npz``, else its ``checkpoint.npz`` (a CheckpointError when it has neither)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        for name in RUN_FILES:
            if os.path.isfile(os.path.join(path, name)):
                return os.path.join(path, name)
        raise CheckpointError(f"load: {path!r} is a folder without {' or '.join(RUN_FILES)} (not a run folder?)")
    return path


def _spec_of(state: dict, path: str) -> dict:
    """The build spec of a model file, or of a run's best.npz / checkpoint.npz (from its config)."""
    if state.get("kind") == KIND:
        spec = state.get("spec")
        if not isinstance(spec, dict) or not {"model", "pool", "num_classes"} <= set(spec):
            raise CheckpointError(f"load: {path!r}: the model file's spec is incomplete ({spec!r})")
        return spec
    config = state.get("config")
    if not isinstance(config, dict) or "model" not in state:
        raise CheckpointError(f"load: {path!r} is a minignn checkpoint but holds no model (expected a file written"
                              f" by minignn.save, or a run's best.npz or checkpoint.npz)")
    n = state.get("num_classes", len(state.get("classes") or ()) or None)
    if n is None:
        raise CheckpointError(f"load: {path!r}: the checkpoint does not say how many classes the model has")
    return {"model": config.get("model"), "pool": config.get("pool"), "num_classes": int(n),
            "width": config.get("width", 1.0), "pool_kw": dict(config.get("pool_kw") or {}),
            "pool_at": config.get("pool_at"), "other_pool": config.get("other_pool", "max")}


def load(path, device: str = "cpu") -> Module:
    """Rebuild a saved model with its weights; returns it in evaluation mode on ``device``.

    ``path`` is a file written by :func:`save`, a training run's ``best.npz`` or
    ``checkpoint.npz``, or a run folder (its ``best.npz``, else ``checkpoint.npz``). The model
    comes back with ``build_spec`` (so it can be saved again) and, as the file has them,
    ``classes`` (tuple of str), ``mean`` and ``std`` (float32 arrays of shape (C,)) and
    ``image_shape`` ((C, H, W)). Raises CheckpointError for a file that is not a minignn model
    or checkpoint, or whose weights do not fit the architecture it names.
    """
    from .models import build_model

    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise TypeError(f"load: path: expected a file or run-folder path, got {path!r}")
    backend.check_device(device)
    path = resolve_model_file(path)
    state = load_checkpoint(path)
    spec = _spec_of(state, path)
    try:
        model = build_model(spec["model"], pool=spec["pool"], num_classes=int(spec["num_classes"]),
                            width=float(spec.get("width", 1.0)), pool_at=spec.get("pool_at"),
                            other_pool=spec.get("other_pool", "max"), **dict(spec.get("pool_kw") or {}))
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"load: {path!r}: cannot rebuild the model it describes ({e})") from e
    try:
        model.load_state_dict(state["model"])
    except KeyError as e:
        raise CheckpointError(f"load: {path!r}: the weights do not fit the {spec['model']} (pool={spec['pool']}) it"
                              f" names: {e.args[0] if e.args else e}") from e
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"load: {path!r}: {e}") from e
    n = int(spec["num_classes"])
    classes = state.get("classes")
    model.classes = tuple(str(c) for c in classes) if classes else tuple(str(i) for i in range(n))
    if len(model.classes) != n:
        raise CheckpointError(f"load: {path!r}: {len(model.classes)} class names for a model with {n} outputs")
    for key in ("mean", "std"):
        v = state.get(key)
        setattr(model, key, None if v is None else np.asarray(v, np.float32).reshape(-1))
    shape = state.get("image_shape")
    model.image_shape = tuple(int(v) for v in shape) if shape else None
    model.eval()
    if device != "cpu":
        model.to(device)
    return model

