"""The in-memory dataset, CIFAR-style augmentation and deterministic, resumable batching.

Reproducibility contract
------------------------
Batch ``i`` of epoch ``e`` is a pure function of ``(seed, e, i)``:

* the epoch's order is ``permutation(N)`` drawn from a generator seeded with
  ``SeedSequence([seed, e, PERM_TAG])``;
* batch ``i``'s augmentation (crop offsets, flips) comes from a generator seeded with
  ``SeedSequence([seed, e, i, AUG_TAG])``.

So training can stop after any batch and resume exactly with ``batches(e, start=k)``, which
skips the first ``k`` batches without computing them. The tags keep the two streams apart:
NumPy's ``SeedSequence`` pads short entropy with zeros, so ``[seed, e]`` and ``[seed, e, 0]``
would otherwise seed the *same* stream.

Augmentation (the usual CIFAR recipe, as in torchvision)
--------------------------------------------------------
1. random crop of the original size from the image zero-padded by ``pad`` pixels on each side;
   the padding is 0 in *pixel* space (black), applied to the raw uint8 image before
   normalisation (so it becomes ``-mean/std`` after normalisation);
2. horizontal flip with probability ``flip_p`` (0.5), applied after the crop;
3. per-channel normalisation ``(x / 255 - mean[c]) / std[c]`` in float32.

Two implementations of one batch (gather + crop + flip + normalise), the kernels of the
``augment`` op of :mod:`minignn.ops`, chosen by array type (:func:`make_batch`): on the CPU one fused, parallel Numba kernel
(:func:`augment_normalize_cpu`, a single pass from the uint8 dataset to the float32 batch); on
``gpu`` and ``gpu-sim`` its CUDA twin (``kernels.cu``, launched by :mod:`minignn.data.gpu`) over
the training set held on the device. The same steps in device-agnostic ``xp`` code
(:func:`crop_flip`, :func:`normalize`, :func:`make_batch_xp`) are the readable version. All give
the same numbers (tested). ``NUMBA_DISABLE_JIT=1`` runs the
kernel as plain Python (slow, same results).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from minignn import ops
from minignn._numba import pjit, prange
from minignn.backend import get_array_module
from minignn.checks import check_positive_int, check_probability

PERM_TAG = 0x5045524D  # "PERM": the per-epoch permutation stream
AUG_TAG = 0x41554721   # "AUG!": the per-batch augmentation stream

__all__ = ["Dataset", "Split", "channel_stats", "BatchLoader", "epoch_permutation", "augment_params",
           "crop_flip", "normalize", "make_batch_xp", "make_batch_cpu", "augment_normalize_cpu",
           "PERM_TAG", "AUG_TAG"]


# --------------------------------------------------------------------------------------------
# the dataset container
# --------------------------------------------------------------------------------------------
@dataclass
class Dataset:
    """An image-classification dataset held in memory.

    Attributes
    ----------
    name : str
        ``"cifar10"``, ``"cifar100"`` or ``"synthetic"`` (never a real dataset's name for
        generated data).
    x_train, x_test : np.ndarray, uint8, shape (N, C, H, W)
        Raw pixels, NCHW, C-contiguous.
    y_train, y_test : np.ndarray, int64, shape (N,)
        Class indices in ``[0, len(classes))``.
    classes : tuple of str
        Class names, index = label.
    mean, std : np.ndarray, float32, shape (C,)
        Per-channel mean and standard deviation of the *training* pixels on the [0, 1] scale
        (``pixel / 255``), used by :class:`BatchLoader` to normalise.
    source : str
        Where the data came from (a folder, or how it was generated).
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: tuple
    mean: np.ndarray
    std: np.ndarray
    source: str = field(default="")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple:
        """(C, H, W) of one image."""
        return tuple(self.x_train.shape[1:])

    def limit(self, n_train: int | None = None, n_test: int | None = None, seed: int = 0) -> "Dataset":
        """A fixed random subset of ``n_train`` training and ``n_test`` test images (None keeps
        all), in their original order. Random, not the first n: a split stored sorted by class
        (as some CIFAR copies are) would otherwise give a subset of one or two classes. Mean and
        std stay those of the full training set, so a quick run normalises like a full one."""
        for v, nm in ((n_train, "n_train"), (n_test, "n_test")):
            if v is not None:
                check_positive_int(v, nm, where="Dataset.limit")
        def pick(n, total, stream):   # one generator per split: a test subset never depends on n_train
            if n is None or n >= total:
                return slice(None)
            return np.sort(np.random.default_rng((seed, stream)).choice(total, size=n, replace=False))

        tr = pick(n_train, len(self.y_train), 0)
        te = pick(n_test, len(self.y_test), 1)
        return replace(self, x_train=self.x_train[tr], y_train=self.y_train[tr],
                       x_test=self.x_test[te], y_test=self.y_test[te])

    # --- the sequence protocol: a Dataset behaves like its training split -------------------
    @property
    def train(self) -> "Split":
        """The training images and labels as a :class:`Split` (``len``, indexing, ``loader``)."""
        return Split(self, "train", self.x_train, self.y_train)

    @property
    def test(self) -> "Split":
        """The test images and labels as a :class:`Split`."""
        return Split(self, "test", self.x_test, self.y_test)

    def __len__(self) -> int:
        """The number of training images (``len(ds.test)`` for the test set)."""
        return len(self.y_train)

    def __getitem__(self, index):
        """``ds[i]``: training image ``i`` and its label, ``(uint8 (C, H, W), int)``; see
        :meth:`Split.__getitem__` (``ds.test[i]`` for the test set)."""
        return self.train[index]

    def loader(self, split: str = "train", batch_size: int = 128, *, augment: bool | None = None,
               seed: int = 0, drop_last: bool = False) -> "BatchLoader":
        """A :class:`BatchLoader` over ``split`` ("train" or "test"), normalised with this dataset's
        mean and std: for "train" shuffled each epoch and (by default) augmented, for "test" in the
        stored order and not augmented."""
        if split not in ("train", "test"):
            raise ValueError(f"Dataset.loader: split: expected 'train' or 'test', got {split!r}")
        return getattr(self, split).loader(batch_size, augment=augment, seed=seed, drop_last=drop_last)

    def __repr__(self) -> str:  # the arrays are too big for the default repr
        return (f"Dataset(name={self.name!r}, train={self.x_train.shape}, test={self.x_test.shape},"
                f" classes={self.num_classes}, source={self.source!r})")


class Split:
    """One split of a :class:`Dataset` (``ds.train`` or ``ds.test``): a sequence of
    ``(image, label)`` pairs over the dataset's arrays (nothing is copied).

    ``len(split)`` is its number of images; ``split[i]`` is ``(uint8 (C, H, W), int)`` with
    ``i`` an integer (negative counts from the end); ``split[a:b]`` or ``split[[i, j, ...]]`` is
    ``(uint8 (n, C, H, W), int64 (n,))``. Iterating yields the pairs one by one; for batches of
    normalised float32 images use :meth:`loader`.
    """

    def __init__(self, dataset: Dataset, name: str, x: np.ndarray, y: np.ndarray):
        self.dataset, self.name, self.x, self.y = dataset, name, x, y
        self.classes = dataset.classes

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index):
        where = f"Dataset.{self.name}[index]"
        n = len(self.y)
        if isinstance(index, (bool, np.bool_)):
            raise TypeError(f"{where}: expected an integer, a slice or a list of integers, got {index!r}")
        if isinstance(index, (int, np.integer)):
            if not -n <= index < n:
                raise IndexError(f"{where}: expected -{n} <= index < {n} ({n} {self.name} images), got {index}")
            return self.x[index], int(self.y[index])
        if isinstance(index, slice):
            return self.x[index], self.y[index]
        idx = np.asarray(index)
        if idx.ndim != 1 or (idx.size and idx.dtype.kind not in "iu"):
            raise TypeError(f"{where}: expected an integer, a slice or a list of integers, got {index!r}")
        idx = idx.astype(np.int64)
        if idx.size and not ((-n <= idx) & (idx < n)).all():
            raise IndexError(f"{where}: indices must lie in [-{n}, {n}) ({n} {self.name} images); got"
                             f" {int(idx.min())}..{int(idx.max())}")
        return self.x[idx], self.y[idx]

    def __iter__(self):
        for i in range(len(self.y)):
            yield self.x[i], int(self.y[i])

    def loader(self, batch_size: int = 128, *, augment: bool | None = None, seed: int = 0,
               drop_last: bool = False) -> "BatchLoader":
        """A :class:`BatchLoader` over this split, normalised with the dataset's mean and std;
        the training split is shuffled every epoch and, unless ``augment=False``, augmented."""
        train = self.name == "train"
        return BatchLoader(self.x, self.y, batch_size, train=train, augment=train if augment is None else augment,
                           mean=self.dataset.mean, std=self.dataset.std, seed=seed, drop_last=drop_last)

    def __repr__(self) -> str:
        return f"Split({self.dataset.name!r}, {self.name!r}, images={tuple(self.x.shape)})"


def channel_stats(x: np.ndarray, chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and (population) standard deviation of uint8 images on the [0, 1] scale.

    Parameters
    ----------
    x : np.ndarray, uint8, shape (N, C, H, W)

    Returns
    -------
    mean, std : np.ndarray, float32, shape (C,)

    Sums are accumulated exactly in integers, chunk by chunk (no float64 copy of the whole set).
    """
    if x.ndim != 4 or x.dtype != np.uint8 or x.shape[0] == 0:
        raise ValueError(f"channel_stats: expected a non-empty uint8 array (N, C, H, W), got {x.dtype} {x.shape}")
    n, c = x.shape[:2]
    s1 = np.zeros(c, np.int64)
    s2 = np.zeros(c, np.int64)
    for i in range(0, n, chunk):
        # (chunk, C, HW) -> per-channel sums; int32 squares are exact (255**2 * HW fits easily)
        part = x[i:i + chunk].reshape(min(chunk, n - i), c, -1).astype(np.int32)
        s1 += part.sum(axis=(0, 2), dtype=np.int64)
        s2 += np.einsum("nck,nck->c", part, part, dtype=np.int64)
    count = n * x.shape[2] * x.shape[3]
    mean = s1 / count
    var = np.maximum(s2 / count - mean * mean, 0.0)
    return (mean / 255.0).astype(np.float32), (np.sqrt(var) / 255.0).astype(np.float32)


# --------------------------------------------------------------------------------------------
# the building blocks, each a plain function (testable on its own)
# --------------------------------------------------------------------------------------------
def _check_seed(v, name: str, where: str) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
        raise ValueError(f"{where}: {name}: expected an integer >= 0, got {v!r}")
    return int(v)


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """The order of the ``n`` samples in ``epoch``: int64 (n,), a function of (seed, epoch) only."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, epoch, PERM_TAG]))
    return rng.permutation(n)


def augment_params(rng: np.random.Generator, n: int, pad: int, flip_p: float = 0.5):
    """Draw crop offsets and flips for ``n`` images.

    Returns
    -------
    dy, dx : np.ndarray, int64, shape (n,)
        Top-left corner of the crop in the padded image, in ``[0, 2 * pad]``
        (``pad`` means "no shift").
    flip : np.ndarray, bool, shape (n,)
    """
    dy = rng.integers(0, 2 * pad + 1, size=n)
    dx = rng.integers(0, 2 * pad + 1, size=n)
    flip = rng.random(n) < flip_p
    return dy, dx, flip


def crop_flip(x, dy, dx, flip, pad: int):
    """Random-crop-with-padding then horizontal flip, vectorised over the batch.

    ``y[n] = flip_w(pad0(x[n])[:, dy[n]:dy[n] + H, dx[n]:dx[n] + W])`` if ``flip[n]`` else
    without the flip, where ``pad0`` zero-pads ``pad`` pixels on every side.

    Parameters
    ----------
    x : array, shape (N, C, H, W), any dtype (uint8 pixels in the loader)
    dy, dx : int arrays, shape (N,), values in ``[0, 2 * pad]``
    flip : bool array, shape (N,)
    pad : int >= 0

    Returns
    -------
    y : array, shape (N, C, H, W), dtype of ``x``, C-contiguous
    """
    xp = get_array_module(x)
    n, c, h, w = x.shape
    if n == 0:
        return x.copy()
    xpad = xp.zeros((n, c, h + 2 * pad, w + 2 * pad), dtype=x.dtype)
    xpad[:, :, pad:pad + h, pad:pad + w] = x
    # (N, C, 2p+1, 2p+1, H, W) view of every crop; pick image n's crop at (dy[n], dx[n]).
    windows = xp.lib.stride_tricks.sliding_window_view(xpad, (h, w), axis=(2, 3))
    dy, dx, flip = xp.asarray(dy), xp.asarray(dx), xp.asarray(flip, dtype=bool)
    y = windows[xp.arange(n), :, dy, dx]  # advanced indices split by a slice -> (N, C, H, W), a copy
    if bool(flip.any()):
        y[flip] = y[flip][..., ::-1]
    return y


def normalize(x, mean, std, dtype=np.float32):
    """``(x / 255 - mean[c]) / std[c]`` per channel.

    Parameters
    ----------
    x : array, uint8, shape (N, C, H, W)
    mean, std : array-like, shape (C,), on the [0, 1] scale

    Returns
    -------
    array of ``dtype`` (float32), shape (N, C, H, W)
    """
    xp = get_array_module(x)
    scale, shift = _scale_shift(mean, std, dtype)
    scale = xp.asarray(scale).reshape(1, -1, 1, 1)
    shift = xp.asarray(shift).reshape(1, -1, 1, 1)
    y = x.astype(dtype)
    y *= scale
    y += shift
    return y


def _scale_shift(mean, std, dtype=np.float32):
    mean = np.asarray(mean, np.float64)
    std = np.asarray(std, np.float64)
    return (1.0 / (255.0 * std)).astype(dtype), (-mean / std).astype(dtype)


def _crop_params(n, dy, dx, flip, pad):
    """(dy, dx, flip, pad) as the kernels take them: no augmentation (``dy`` None) is offset 0,
    no flip and no padding for each of the ``n`` images."""
    if dy is None:
        return np.zeros(n, np.int64), np.zeros(n, np.int64), np.zeros(n, np.bool_), 0
    return dy, dx, flip, pad


def make_batch_xp(x, idx, dy, dx, flip, pad: int, mean, std):
    """One batch in device-agnostic ``xp`` code: ``normalize(crop_flip(x[idx], ...))``, or
    ``normalize(x[idx])`` when ``dy`` is None (no augmentation). Returns float32 (B, C, H, W)."""
    xb = x[get_array_module(x).asarray(idx)]
    if dy is not None:
        xb = crop_flip(xb, dy, dx, flip, pad)
    return normalize(xb, mean, std)


@pjit
def augment_normalize_cpu(x, idx, dy, dx, flip, pad, scale, shift, out):
    """Fused gather + padded crop + flip + normalisation, parallel over the batch's images.

    ``out[b, c, i, j] = scale[c] * pix + shift[c]`` with
    ``pix = x[idx[b], c, i + dy[b] - pad, j' + dx[b] - pad]`` (0 outside the image) and
    ``j' = W - 1 - j`` if ``flip[b]`` else ``j``. Each image writes only its own ``out[b]``.
    """
    n = idx.shape[0]
    nc, h, w = x.shape[1], x.shape[2], x.shape[3]
    for b in prange(n):
        src = idx[b]
        oy = dy[b] - pad
        ox = dx[b] - pad
        f = flip[b]
        # output columns [lo, hi) read inside the source row; the rest is padding
        lo = min(w, max(0, ox) if f else max(0, -ox))
        hi = max(lo, min(w, w + ox) if f else min(w, w - ox))
        for c in range(nc):
            sc = scale[c]
            sh = shift[c]
            for i in range(h):
                row = out[b, c, i]
                si = i + oy
                if si < 0 or si >= h:
                    row[:] = sh
                    continue
                srow = x[src, c, si]
                for j in range(lo):
                    row[j] = sh
                if f:
                    base = w - 1 + ox
                    for j in range(lo, hi):
                        row[j] = np.float32(srow[base - j]) * sc + sh
                else:
                    for j in range(lo, hi):
                        row[j] = np.float32(srow[j + ox]) * sc + sh
                for j in range(hi, w):
                    row[j] = sh


def make_batch_cpu(x, idx, dy, dx, flip, pad: int, mean, std):
    """One batch on the CPU through :func:`augment_normalize_cpu` (same contract as
    :func:`make_batch_xp`)."""
    n = idx.shape[0]
    dy, dx, flip, pad = _crop_params(n, dy, dx, flip, pad)
    scale, shift = _scale_shift(mean, std)
    out = np.empty((n,) + tuple(x.shape[1:]), np.float32)
    augment_normalize_cpu(x, np.ascontiguousarray(idx, np.int64), np.ascontiguousarray(dy, np.int64),
                          np.ascontiguousarray(dx, np.int64), np.ascontiguousarray(flip, np.bool_), int(pad),
                          scale, shift, out)
    return out


# --------------------------------------------------------------------------------------------
# the loader
# --------------------------------------------------------------------------------------------
def make_batch(x, idx, dy, dx, flip, pad: int, mean, std):
    """One float32 batch ``normalize(crop_flip(x[idx], dy, dx, flip, pad), mean, std)`` (no crop
    and flip when ``dy`` is None) on x's device: :func:`make_batch_cpu`, or on a GPU device
    :func:`minignn.data.gpu.make_batch_gpu` (its CUDA kernel; :func:`make_batch_xp` is the same
    batch in plain ``xp`` code)."""
    return ops.kernels("augment", x).forward(x, idx, dy, dx, flip, pad, mean, std)


def _augment_ref(x, idx, dy, dx, flip, pad, mean, std):
    """The recipe image by image: zero-pad, slice, maybe flip, then (x / 255 - mean) / std."""
    out = np.empty((len(idx),) + x.shape[1:])
    h, w = x.shape[2:]
    for k, src in enumerate(idx):
        img = x[src].astype(np.float64)
        if dy is not None:
            img = np.pad(img, ((0, 0), (pad, pad), (pad, pad)))[:, dy[k]:dy[k] + h, dx[k]:dx[k] + w]
            img = img[:, :, ::-1] if flip[k] else img
        out[k] = (img / 255.0 - np.asarray(mean)[:, None, None]) / np.asarray(std)[:, None, None]
    return (out.astype(np.float32),), None


def _sample_augment(draw, dtype):
    n, c, h, w = draw.int(0, 6), draw.int(1, 3), draw.int(1, 7), draw.int(1, 7)
    rng = draw.rng
    x = rng.integers(1, 256, (n + 3, c, h, w), dtype=np.uint8)  # no zeros: the padding is visible
    idx = rng.permutation(n + 3)[:n]
    pad = draw.int(0, 9)
    dy, dx, flip = augment_params(rng, n, pad) if draw.bool() else (None, None, None)
    mean, std = rng.uniform(0.2, 0.8, c), rng.uniform(0.1, 0.4, c)
    return ops.Case((x, idx, dy, dx, flip), dict(pad=pad, mean=mean, std=std))


ops.register(ops.Op(
    "augment", "a training batch: gather, zero-padded random crop, horizontal flip, normalise (uint8 -> float32)",
    forward=lambda *inputs, **kw: ((make_batch(*inputs, **kw),), None), backward=None,
    reference=(_augment_ref, None), cpu=ops.Kernels(make_batch_cpu), gpu="minignn.data.gpu:AUGMENT",
    sample=_sample_augment, tol=lambda dtype: dict(rtol=1e-6, atol=1e-5)))


class BatchLoader:
    """Deterministic, resumable mini-batches of normalised (and optionally augmented) images.

    Parameters
    ----------
    x : np.ndarray, uint8, shape (N, C, H, W)
    y : array-like of int, shape (N,)
    batch_size : int >= 1
    train : bool
        True: a fresh permutation every epoch (from ``(seed, epoch)``). False: the stored order.
    augment : bool
        True: random crop with ``pad``-pixel zero padding + horizontal flip (``flip_p``), the
        randomness of batch ``i`` from ``(seed, epoch, i)``. Independent of ``train`` (pass
        ``augment=False`` for evaluation).
    mean, std : array-like, shape (C,)
        Per-channel statistics on the [0, 1] scale (see :func:`normalize`).
    seed : int >= 0
    drop_last : bool
        Drop the last incomplete batch.
    pad : int >= 0, default 4
    flip_p : float in [0, 1], default 0.5

    Iterating (``for xb, yb in loader``) runs one epoch; each new loop runs the next epoch
    (:attr:`epoch`, :meth:`set_epoch`). :meth:`batches` ``(epoch, start)`` gives any epoch's
    batches from any point, and :meth:`batch` one batch on its own.

    Yields (from :meth:`batches` and iteration)
    ------
    xb : np.ndarray, float32, shape (B, C, H, W), normalised
    yb : np.ndarray, int64, shape (B,)
    """

    def __init__(self, x, y, batch_size: int, train: bool, augment: bool, mean, std, seed: int = 0,
                 drop_last: bool = False, pad: int = 4, flip_p: float = 0.5):
        where = "BatchLoader"
        if not hasattr(x, "dtype") or x.dtype != np.uint8 or x.ndim != 4:
            raise TypeError(f"{where}: x: expected a uint8 array (N, C, H, W) of raw pixels, got "
                            f"{getattr(x, 'dtype', type(x).__name__)} {getattr(x, 'shape', '')}")
        y = np.asarray(y)
        if y.ndim != 1 or y.shape[0] != x.shape[0]:
            raise ValueError(f"{where}: y: expected shape ({x.shape[0]},) (one label per image), got {y.shape}")
        if y.size and not np.issubdtype(y.dtype, np.integer):
            raise TypeError(f"{where}: y: expected integer class labels, got dtype {y.dtype}")
        c = x.shape[1]
        mean = np.asarray(mean, np.float64).reshape(-1)
        std = np.asarray(std, np.float64).reshape(-1)
        if mean.shape != (c,) or std.shape != (c,):
            raise ValueError(f"{where}: mean, std: expected {c} values each (one per channel), got "
                             f"{mean.shape[0]} and {std.shape[0]}")
        if not np.all(std > 0) or not np.all(np.isfinite(mean)):
            raise ValueError(f"{where}: std must be > 0 and mean finite, got mean={mean}, std={std}")
        self.x = x
        self.y = y.astype(np.int64, copy=False)
        self.batch_size = check_positive_int(batch_size, "batch_size", where)
        self.train = bool(train)
        self.augment = bool(augment)
        self.mean, self.std = mean, std
        self.seed = _check_seed(seed, "seed", where)
        self.drop_last = bool(drop_last)
        self.pad = check_positive_int(pad, "pad", where, minimum=0)
        self.flip_p = check_probability(flip_p, "flip_p", where, upper_open=False)

    def __len__(self) -> int:
        """Batches per epoch."""
        return self.num_batches(0)

    @property
    def epoch(self) -> int:
        """The epoch the next ``for xb, yb in loader`` runs (0 at first)."""
        return self.__dict__.get("_epoch", 0)

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration run ``epoch`` (its shuffle and augmentation), as PyTorch's
        ``DistributedSampler.set_epoch``: ``for e in range(E): loader.set_epoch(e); for ...``."""
        self._epoch = _check_seed(epoch, "epoch", "BatchLoader.set_epoch")

    def __iter__(self):
        """``for xb, yb in loader``: the batches of epoch :attr:`epoch`, after which the loader moves on
        to the next epoch, so each loop over it draws a fresh shuffle and augmentation (the same
        batches as ``batches(epoch)``; call :meth:`set_epoch` to choose the epoch)."""
        epoch = self.epoch
        self._epoch = epoch + 1     # advanced when the iteration starts: a loop broken early still moves on
        return self.batches(epoch)

    @property
    def num_samples(self) -> int:
        return int(self.x.shape[0])

    def num_batches(self, epoch: int = 0) -> int:
        """Batches per epoch (the same for every epoch)."""
        n, b = self.num_samples, self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def order(self, epoch: int) -> np.ndarray:
        """Sample indices of ``epoch`` in batch order, int64 (N,)."""
        epoch = _check_seed(epoch, "epoch", "BatchLoader.order")
        if self.train:
            return epoch_permutation(self.num_samples, self.seed, epoch)
        return np.arange(self.num_samples)

    def batch(self, epoch: int, i: int, order: np.ndarray | None = None):
        """Batch ``i`` of ``epoch``, computed on its own: ``(xb float32, yb int64)``."""
        nb = self.num_batches(epoch)
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not 0 <= i < nb:
            raise IndexError(f"BatchLoader.batch: i: expected 0 <= i < {nb} (batches per epoch), got {i!r}")
        if order is None:
            order = self.order(epoch)
        idx = order[i * self.batch_size:(i + 1) * self.batch_size]
        dy = dx = flip = None
        if self.augment:
            rng = np.random.default_rng(np.random.SeedSequence([self.seed, int(epoch), int(i), AUG_TAG]))
            dy, dx, flip = augment_params(rng, len(idx), self.pad, self.flip_p)
        return make_batch(self.x, idx, dy, dx, flip, self.pad, self.mean, self.std), self.y[idx]

    def batches(self, epoch: int, start: int = 0):
        """Yield the batches of ``epoch`` from batch ``start`` on (the first ``start`` are skipped
        without being computed: resuming mid-epoch gives exactly the batches an uninterrupted
        epoch would have)."""
        epoch = _check_seed(epoch, "epoch", "BatchLoader.batches")
        nb = self.num_batches(epoch)
        if isinstance(start, bool) or not isinstance(start, (int, np.integer)) or not 0 <= start <= nb:
            raise ValueError(f"BatchLoader.batches: start: expected 0 <= start <= {nb}, got {start!r}")
        order = self.order(epoch)
        for i in range(int(start), nb):
            yield self.batch(epoch, i, order)
