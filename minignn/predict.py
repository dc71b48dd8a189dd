"""Classify image files with a saved model: ``minignn predict CHECKPOINT IMAGES...``.

>>> import minignn
>>> from minignn.predict import predict
>>> model = minignn.load("runs/tiny-max")                     # doctest: +SKIP
>>> predict(model, ["cat.png", "dog.jpg"], top=3)            # doctest: +SKIP
[[('cat', 0.71), ('dog', 0.15), ('frog', 0.04)], [('dog', 0.64), ...]]

How an image file becomes the model's input, as the training images were prepared:

1. Pillow reads it (PNG, JPEG and whatever else Pillow reads) and converts it to RGB (or to
   grey levels for a one-channel model); an alpha channel is dropped.
2. If its size is not the model's (32x32 for CIFAR), the largest centred square is cut out and
   resized to the model's size (bilinear, antialiased when shrinking), so the aspect ratio is kept.
3. The uint8 pixels are normalised per channel with the training set's statistics saved with the
   model: ``(pixel / 255 - mean[c]) / std[c]``.

The model runs in evaluation mode (batch-norm running statistics, no dropout of any kind), and
the class probabilities are the softmax of its outputs, computed in float64.
"""
from __future__ import annotations

import os

import numpy as np

from . import backend
from .data.loader import normalize
from .loss import _log_softmax

__all__ = ["read_image", "prepare", "probabilities", "predict", "add_parser", "cmd_predict"]

PIL_HINT = "pip install pillow (matplotlib, a minignn dependency, normally brings it)"


def _pil():
    try:
        from PIL import Image
    except ImportError as e:  # pragma: no cover - matplotlib depends on Pillow
        raise RuntimeError(f"predict: reading images needs Pillow, which is not installed: {PIL_HINT}") from e
    return Image


def read_image(path, image_shape=(3, 32, 32)) -> tuple[np.ndarray, tuple[int, int]]:
    """The image file at ``path`` as a uint8 array of ``image_shape`` (C, H, W), and its original
    (width, height). C must be 3 (RGB) or 1 (grey levels). Raises FileNotFoundError for a missing
    file and ValueError naming the file for one that is not an image Pillow can read."""
    Image = _pil()
    c, h, w = (int(v) for v in image_shape)
    if c not in (1, 3):
        raise ValueError(f"predict: the model takes {c}-channel images; image files give 1 (grey) or 3 (RGB)")
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"predict: {path!r} is a folder, not an image file")
    if not os.path.exists(path):
        raise FileNotFoundError(f"predict: no image file at {path!r}")
    try:
        with Image.open(path) as im:
            im.load()
            img = im.convert("RGB" if c == 3 else "L")
    except OSError as e:   # PIL.UnidentifiedImageError is an OSError
        raise ValueError(f"predict: {path!r} is not an image file Pillow can read (PNG, JPEG, ...): "
                         f"{type(e).__name__}") from e
    size = img.size
    if size != (w, h):
        sw, sh = size
        side_w, side_h = (sw, sw * h // w) if sw * h <= sh * w else (sh * w // h, sh)  # largest centred box
        left, top = (sw - side_w) // 2, (sh - side_h) // 2
        resample = getattr(getattr(Image, "Resampling", Image), "BILINEAR")
        img = img.crop((left, top, left + side_w, top + side_h)).resize((w, h), resample)
    arr = np.asarray(img, dtype=np.uint8)
    arr = arr[None] if c == 1 else arr.transpose(2, 0, 1)
    return np.ascontiguousarray(arr), size


def prepare(images: np.ndarray, mean, std) -> np.ndarray:
    """uint8 images (N, C, H, W) -> float32 ``(images / 255 - mean[c]) / std[c]``, checked, then
    computed by :func:`minignn.data.loader.normalize` (as the training batches are)."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise TypeError(f"prepare: images: expected uint8 pixels (N, C, H, W), got {images.dtype} {images.shape}")
    mean = np.asarray(mean, np.float64).reshape(1, -1, 1, 1)
    std = np.asarray(std, np.float64).reshape(1, -1, 1, 1)
    if mean.shape[1] != images.shape[1] or std.shape[1] != images.shape[1]:
        raise ValueError(f"prepare: mean, std: expected {images.shape[1]} values each (one per channel), got"
                         f" {mean.shape[1]} and {std.shape[1]}")
    return normalize(images, mean.reshape(-1), std.reshape(-1))   # the training batches' arithmetic


def probabilities(model, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Softmax of ``model``'s outputs on the prepared float32 batch ``x`` (N, C, H, W), float64
    (N, classes), in evaluation mode (the model's mode is restored afterwards)."""
    params = model.parameters()
    device = backend.device_of(params[0].data) if params else "cpu"
    was_training = model.training
    model.eval()
    try:
        out = []
        for i in range(0, len(x), batch_size):
            logits = backend.to_numpy(model.forward(backend.to_device(x[i:i + batch_size], device)))
            out.append(np.exp(_log_softmax(logits.astype(np.float64), np)))
    finally:
        model.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, 0))


def _model_inputs(model):
    mean, std = getattr(model, "mean", None), getattr(model, "std", None)
    if mean is None or std is None:
        raise ValueError("predict: the model file holds no normalisation statistics (mean, std), so new images"
                         " cannot be prepared as the training images were; save it with minignn.save(model, path,"
                         " mean=..., std=...)")
    return tuple(getattr(model, "image_shape", None) or (3, 32, 32)), mean, std


def predict(model, images, top: int = 5) -> list[list[tuple[str, float]]]:
    """The ``top`` most probable classes of each image, as (class name, probability) pairs from
    the most probable down.

    ``model`` comes from :func:`minignn.load` (it carries ``classes``, ``mean``, ``std`` and
    ``image_shape``); ``images`` is a list of image-file paths or a uint8 array (N, C, H, W).
    """
    shape, mean, std = _model_inputs(model)
    if isinstance(images, np.ndarray):
        pixels = images
    else:
        pixels = np.stack([read_image(p, shape)[0] for p in images]) if len(images) else np.zeros((0, *shape), np.uint8)
    probs = probabilities(model, prepare(pixels, mean, std))
    classes = getattr(model, "classes", None) or tuple(str(i) for i in range(probs.shape[1]))
    return [[(classes[i], float(row[i])) for i in _top(row, top)] for row in probs]


def _top(row: np.ndarray, k: int) -> np.ndarray:
    """The labels of the ``k`` largest probabilities, largest first (ties: the lower label first)."""
    return np.argsort(-row, kind="stable")[:k]


# --- the command ---------------------------------------------------------------------------------
def add_parser(sub):
    """Add the ``predict`` command to ``sub`` (an argparse subparsers object); returns its parser."""
    from .cli import _pos_int
    p = sub.add_parser("predict", help="the most probable classes of image files (PNG, JPEG) under a saved model",
                       description="Classify image files with a saved model: a run folder (its best.npz, else"
                                   " checkpoint.npz), a run's .npz file, or a file written by minignn.save. Each"
                                   " image is converted to RGB, centre-cropped to a square and resized to the"
                                   " model's input size when needed (32x32 for CIFAR), and normalised with the"
                                   " training set's mean and std saved with the model.")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="a run folder, its best.npz or checkpoint.npz, or a"
                   " minignn.save file")
    p.add_argument("images", metavar="IMAGE", nargs="+", help="image files (PNG, JPEG, anything Pillow reads)")
    p.add_argument("--top", type=_pos_int, default=3, metavar="K",
                   help="how many classes to print per image (default 3; at most the number of classes)")
    p.add_argument("--device", choices=backend.DEVICES, default="cpu", help="(default cpu)")
    p.add_argument("--json", action="store_true", help="print one JSON object: the checkpoint and, per image, its"
                   " top classes with label and probability")
    p.set_defaults(func=cmd_predict)
    return p


def cmd_predict(args) -> int:
    from .checkpoint import dumps_json
    from .saving import load, resolve_model_file

    checkpoint = resolve_model_file(args.checkpoint)     # a run folder: its best.npz, else checkpoint.npz
    model = load(checkpoint, device=args.device)
    shape, mean, std = _model_inputs(model)
    read = [read_image(p, shape) for p in args.images]     # every file checked before the model runs
    probs = probabilities(model, prepare(np.stack([r[0] for r in read]), mean, std))
    k = min(args.top, probs.shape[1])
    classes = model.classes
    if args.json:
        preds = []
        for path, (_, size), row in zip(args.images, read, probs):
            preds.append({"image": path, "size": list(size),
                          "top": [{"class": classes[i], "label": int(i), "prob": float(row[i])} for i in _top(row, k)]})
        print(dumps_json({"checkpoint": checkpoint, "predictions": preds}))
        return 0
    for path, (_, size), row in zip(args.images, read, probs):
        resized = "" if tuple(size) == (shape[2], shape[1]) else f"  (resized from {size[0]}x{size[1]})"
        print(f"{path}: " + ", ".join(f"{classes[i]} {100 * row[i]:.1f}%" for i in _top(row, k)) + resized)
    return 0
