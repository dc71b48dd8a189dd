"""Datasets and the input pipeline.

``load_dataset(name)`` gives a :class:`Dataset` of raw uint8 images (N, 3, 32, 32) with int64
labels, class names and per-channel mean/std; :class:`BatchLoader` turns it into deterministic,
resumable mini-batches of normalised float32 images, with CIFAR augmentation (4-pixel padded
random crop + horizontal flip) for training.

>>> from minignn.data import load_dataset, BatchLoader
>>> ds = load_dataset("synthetic")                   # or "cifar10", "cifar100"
>>> loader = BatchLoader(ds.x_train, ds.y_train, batch_size=128, train=True, augment=True,
...                      mean=ds.mean, std=ds.std, seed=0)
>>> xb, yb = next(loader.batches(epoch=0))
>>> xb.shape, xb.dtype, yb.dtype
((128, 3, 32, 32), dtype('float32'), dtype('int64'))
>>> len(ds), ds[0][0].shape, len(ds.test)             # a Dataset is a sequence of its training pairs
(2048, (3, 32, 32), 512)
>>> for xb, yb in ds.loader("train", batch_size=128):  # one epoch; the next loop runs the next epoch
...     pass

CIFAR data are looked for in one data root: ``data_dir`` (``--data-dir``), else ``$MINIGNN_DATA``,
else ``~/.cache/minignn/data`` (``$XDG_CACHE_HOME`` honoured); see :mod:`minignn.data.cifar`.
"""
from __future__ import annotations

from .cifar import (ENV_VAR, SPECS, ChecksumError, CorruptDataError, DatasetNotFoundError, load_cifar,
                    resolve_data_root)
from .loader import BatchLoader, Dataset, Split, augment_params, channel_stats, crop_flip, normalize
from .synthetic import synthetic_dataset

DATASETS = ("cifar10", "cifar100", "cifar100-coarse", "synthetic")
_BY_KEY = {d.replace("-", ""): d for d in DATASETS}  # "CIFAR-100-coarse", "cifar100_coarse": the same

__all__ = ["DATASETS", "load_dataset", "Dataset", "Split", "BatchLoader", "synthetic_dataset", "load_cifar",
           "resolve_data_root", "channel_stats", "augment_params", "crop_flip", "normalize",
           "DatasetNotFoundError", "CorruptDataError", "ChecksumError", "ENV_VAR", "SPECS"]


def load_dataset(name: str, data_dir=None, download: bool = True, *, check_counts: bool = True,
                 progress: bool = True, **synthetic_options) -> Dataset:
    """Load a dataset by name.

    Parameters
    ----------
    name : {"cifar10", "cifar100", "cifar100-coarse", "synthetic"}
        ``"cifar-10"`` / ``"CIFAR10"`` spellings are accepted. ``cifar100`` has the 100 fine labels,
        ``cifar100-coarse`` the 20 superclasses of the same images.
    data_dir : path, optional
        CIFAR data root (else ``$MINIGNN_DATA``, else the per-user cache). Ignored for synthetic.
    download : bool
        Download a CIFAR archive that is not in the data root (never needed for synthetic).
    check_counts : bool
        CIFAR only: require the canonical 50000/10000 images (False: any consistent smaller copy;
        ``minignn train --allow-partial-data`` on the command line).
    progress : bool
        Progress bar while downloading.
    **synthetic_options
        ``n_train``, ``n_test``, ``num_classes``, ``image_size``, ``seed`` for
        :func:`synthetic_dataset`; an error for CIFAR.

    Returns
    -------
    Dataset
    """
    key = _BY_KEY.get(str(name).lower().replace("-", "").replace("_", ""))
    if key is None:
        raise ValueError(f"load_dataset: name: expected one of {DATASETS}, got {name!r}")
    if key == "synthetic":
        return synthetic_dataset(**synthetic_options)
    if synthetic_options:
        raise TypeError(f"load_dataset: options {sorted(synthetic_options)} apply to 'synthetic' only, not {name!r}")
    return load_cifar(key, data_dir=data_dir, download=download, check_counts=check_counts, progress=progress)
