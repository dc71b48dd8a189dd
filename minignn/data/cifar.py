"""CIFAR-10 and CIFAR-100 from their canonical "python version" archives.

Where the data are looked for
-----------------------------
One *data root* folder, chosen by :func:`resolve_data_root`: the ``data_dir`` argument
(``--data-dir`` on the command line), else the environment variable ``MINIGNN_DATA``, else a
per-user cache (``$XDG_CACHE_HOME/minignn/data`` or ``~/.cache/minignn/data``). In that root:

1. an already-extracted folder (``cifar-10-batches-py/`` or ``cifar-100-python/``) is loaded as
   it is: no download and no archive checksum (a user's own copy may differ from the canonical
   archive). The root may also *be* that folder;
2. else the archive (``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz``) is verified
   against its published MD5 and extracted;
3. else, with ``download=True``, the archive is downloaded from the official address, with a
   progress bar, into ``<archive>.part``; it is renamed to its final name only once complete
   and its MD5 verified, so an interrupted or corrupt download never leaves a file that looks
   complete. A mismatch removes the file and raises :class:`ChecksumError`.

Extraction is safe and atomic: every archive member must be a plain file or folder inside the
root (no absolute paths, ``..``, links or devices); it is unpacked into a temporary folder in
the root and moved into place in one rename, so a half-extracted folder never looks complete.

Files are read with a restricted unpickler that only rebuilds NumPy arrays, so a tampered batch
file cannot run code. Every file is validated (keys, array size, label type, count and range); a
problem raises :class:`CorruptDataError` naming the file and what is wrong.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .loader import Dataset, channel_stats

ENV_VAR = "MINIGNN_DATA"

# The URL opener, a module attribute so tests can replace it (there is no network in CI).
urlopen = urllib.request.urlopen

__all__ = ["CifarSpec", "SPECS", "ENV_VAR", "DatasetNotFoundError", "CorruptDataError", "ChecksumError",
           "default_cache_dir", "resolve_data_root", "md5sum", "download", "safe_extract", "prepare",
           "read_batch", "read_meta", "load_cifar"]


class DatasetNotFoundError(FileNotFoundError):
    """The data are not in the data root and could not be downloaded."""


class CorruptDataError(ValueError):
    """A data file or archive is truncated, corrupted or not in the expected format."""


class ChecksumError(CorruptDataError):
    """An archive's MD5 differs from the published one."""


@dataclass(frozen=True)
class CifarSpec:
    """Everything that differs between CIFAR-10 and CIFAR-100."""

    name: str
    title: str
    url: str
    md5: str
    archive: str
    folder: str
    train_files: tuple
    test_files: tuple
    meta_file: str
    label_key: bytes
    names_key: bytes
    num_classes: int
    n_train: int = 50000
    n_test: int = 10000
    image_shape: tuple = (3, 32, 32)


SPECS = {
    "cifar10": CifarSpec(
        name="cifar10", title="CIFAR-10",
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
        archive="cifar-10-python.tar.gz", folder="cifar-10-batches-py",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)), test_files=("test_batch",),
        meta_file="batches.meta", label_key=b"labels", names_key=b"label_names", num_classes=10),
    "cifar100": CifarSpec(
        name="cifar100", title="CIFAR-100",
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
        archive="cifar-100-python.tar.gz", folder="cifar-100-python",
        train_files=("train",), test_files=("test",),
        meta_file="meta", label_key=b"fine_labels", names_key=b"fine_label_names", num_classes=100),
}
# CIFAR-100 with its 20 superclasses ("coarse" labels): the same archive and files, other labels
SPECS["cifar100-coarse"] = dataclasses.replace(SPECS["cifar100"], name="cifar100-coarse",
                                               title="CIFAR-100 (coarse labels)", label_key=b"coarse_labels",
                                               names_key=b"coarse_label_names", num_classes=20)


def _spec(name: str) -> CifarSpec:
    if name not in SPECS:
        raise ValueError(f"dataset name: expected one of {tuple(SPECS)}, got {name!r}")
    return SPECS[name]


# --------------------------------------------------------------------------------------------
# the data root
# --------------------------------------------------------------------------------------------
def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/minignn/data``, or ``~/.cache/minignn/data``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "minignn" / "data"


def _root_and_source(data_dir=None) -> tuple[Path, str]:
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir).expanduser(), "the data_dir argument (--data-dir)"
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser(), f"the environment variable {ENV_VAR}"
    return default_cache_dir(), f"the per-user cache (no --data-dir given and {ENV_VAR} not set)"


def resolve_data_root(data_dir=None) -> Path:
    """The data root: ``data_dir`` if given, else ``$MINIGNN_DATA``, else :func:`default_cache_dir`.
    The folder need not exist yet."""
    return _root_and_source(data_dir)[0]


# --------------------------------------------------------------------------------------------
# download, checksum, extraction
# --------------------------------------------------------------------------------------------
def md5sum(path, chunk: int = 1 << 20) -> str:
    """Hex MD5 of a file, read in chunks."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def download(url: str, dest, md5: str, progress: bool = True, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` through ``dest + ".part"``, verifying ``md5`` on the fly.

    ``dest`` appears only when the download is complete and verified. On any failure (network
    error, interruption, short read, checksum mismatch) the ``.part`` file is removed and the
    error re-raised; a mismatch raises :class:`ChecksumError` with both checksums. The folder of
    ``dest`` is created only once the server has answered: a download that cannot start (no
    network, a mistyped data root with no internet) leaves the disk as it was.
    """
    from tqdm.auto import tqdm

    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    h = hashlib.md5()
    got = 0
    resp = urlopen(url, timeout=timeout)  # before anything is created: no folder for a download that never starts
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with resp, open(part, "wb") as f:
            length = resp.headers.get("Content-Length") if getattr(resp, "headers", None) else None
            total = int(length) if length else None
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=dest.name,
                      disable=not progress) as bar:
                while True:
                    block = resp.read(1 << 20)
                    if not block:
                        break
                    f.write(block)
                    h.update(block)
                    got += len(block)
                    bar.update(len(block))
        if total is not None and got != total:
            raise CorruptDataError(f"download of {url} is incomplete: got {got} of {total} bytes")
        if h.hexdigest() != md5:
            raise ChecksumError(f"download of {url}: MD5 mismatch: expected {md5}, got {h.hexdigest()}"
                                f" ({got} bytes); the corrupt file was removed, try again")
        os.replace(part, dest)
    except BaseException:  # KeyboardInterrupt included: never leave a partial file behind
        part.unlink(missing_ok=True)
        raise
    return dest


def _check_member(m: tarfile.TarInfo, into: Path, archive: Path) -> None:
    name = m.name
    parts = Path(name).parts
    if os.path.isabs(name) or ".." in parts or name.startswith(("/", "\\")):
        raise CorruptDataError(f"{archive}: unsafe member {name!r} (absolute path or '..'); refusing to extract")
    if not (m.isfile() or m.isdir()):
        kind = "link" if (m.issym() or m.islnk()) else "special file"
        raise CorruptDataError(f"{archive}: member {name!r} is a {kind}; only plain files and folders are"
                               f" extracted")
    target = (into / name).resolve()
    if target != into and into not in target.parents:
        raise CorruptDataError(f"{archive}: member {name!r} would land outside {into}; refusing to extract")


def safe_extract(archive, root, folder: str) -> Path:
    """Extract ``folder/`` of a tar archive into ``root`` (see the module docstring); returns
    ``root / folder``. Members are all checked before anything is written."""
    archive, root = Path(archive), Path(root)
    root.mkdir(parents=True, exist_ok=True)
    dest = root / folder
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder}.extracting-", dir=root)).resolve()
    try:
        try:
            with tarfile.open(archive, "r:*") as tar:
                members = tar.getmembers()
                for m in members:
                    _check_member(m, tmp, archive)
                kw = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
                tar.extractall(tmp, members=members, **kw)
        except (tarfile.TarError, EOFError, OSError) as e:
            raise CorruptDataError(f"{archive}: cannot be extracted ({type(e).__name__}: {e})") from e
        src = tmp / folder
        if not src.is_dir():
            raise CorruptDataError(f"{archive}: has no {folder}/ folder; is it the right archive?")
        if not dest.exists():  # another process may have finished first
            os.replace(src, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _find_folder(spec: CifarSpec, root: Path) -> Path | None:
    if root.name == spec.folder and root.is_dir():
        return root
    if (root / spec.folder).is_dir():
        return root / spec.folder
    return None


def prepare(name: str, data_dir=None, download_ok: bool = True, progress: bool = True) -> Path:
    """Make sure the extracted folder of ``name`` exists in the data root; return its path.

    Raises
    ------
    DatasetNotFoundError
        Not there and not downloadable (``download_ok=False``, or no network); the message lists
        every place looked at and how to point minignn at a folder.
    ChecksumError, CorruptDataError
        A bad archive or download.
    """
    spec = _spec(name)
    root, source = _root_and_source(data_dir)
    found = _find_folder(spec, root)
    if found is not None:
        return found
    archive = root / spec.archive
    if archive.is_file():
        got = md5sum(archive)
        if got != spec.md5:
            raise ChecksumError(f"{archive}: MD5 mismatch: expected {spec.md5} (the published {spec.title}"
                                f" archive), got {got}; delete the file to download it again, or put the"
                                f" extracted {spec.folder}/ folder in {root}")
        return safe_extract(archive, root, spec.folder)
    if download_ok:
        try:
            download(spec.url, archive, spec.md5, progress=progress)
        except (OSError, TimeoutError) as e:  # URLError is an OSError; not a ChecksumError
            raise DatasetNotFoundError(_not_found_message(spec, root, source, f"failed: {e}")) from e
        return safe_extract(archive, root, spec.folder)
    raise DatasetNotFoundError(_not_found_message(spec, root, source, "not tried (download=False)"))


def _not_found_message(spec: CifarSpec, root: Path, source: str, download_note: str) -> str:
    return (
        f"{spec.title} was not found. Looked in:\n"
        f"  {root / spec.folder}/  (extracted folder: absent)\n"
        f"  {root / spec.archive}  (archive: absent)\n"
        f"  {spec.url}  (download: {download_note})\n"
        f"The data root {root} came from {source}.\n"
        f"Point minignn at a folder that contains {spec.folder}/ (or {spec.archive}) with\n"
        f"  --data-dir DIR   (command line; load_dataset(..., data_dir=DIR) in Python), or\n"
        f"  {ENV_VAR}=DIR    (environment variable),\n"
        f"or download {spec.url} on a machine with internet access and copy it into {root}.")


# --------------------------------------------------------------------------------------------
# reading and validating the batch files
# --------------------------------------------------------------------------------------------
def _multiarray():
    try:
        from numpy._core import multiarray  # NumPy >= 2
    except ImportError:  # pragma: no cover - NumPy 1.x
        from numpy.core import multiarray
    return multiarray


_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"), ("codecs", "encode"),
}


class _RefusedClass(pickle.UnpicklingError):
    """A pickle asked for something other than a NumPy array."""


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, bytes, numbers and NumPy arrays, and nothing that could run code."""

    def find_class(self, module, name):
        if (module, name) not in _ALLOWED:
            raise _RefusedClass(f"refusing to load {module}.{name}: only NumPy arrays are allowed in a CIFAR"
                                f" batch file")
        if module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            return getattr(_multiarray(), name)  # old pickles name numpy.core, a deprecated alias
        return super().find_class(module, name)


def _unpickle(path: Path):
    if not path.is_file():
        raise CorruptDataError(f"{path}: missing; the folder {path.parent} is incomplete (restore the file,"
                               f" or delete the folder to extract it again)")
    try:
        with open(path, "rb") as f:
            obj = _ArrayUnpickler(f, encoding="bytes").load()
    except _RefusedClass as e:
        raise CorruptDataError(f"{path}: not a CIFAR batch file ({e}); it may have been tampered with") from e
    except Exception as e:  # truncated or garbage bytes raise many different types
        raise CorruptDataError(f"{path}: cannot be unpickled ({type(e).__name__}: {e}); the file is truncated"
                               f" or corrupted (restore it, or delete {path.parent} to extract it again)") from e
    if not isinstance(obj, dict):
        raise CorruptDataError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    return obj


def read_batch(path, spec: CifarSpec) -> tuple[np.ndarray, np.ndarray]:
    """Read and validate one batch file.

    The labels must be integers in ``0..num_classes - 1`` (a float copy holding whole numbers is
    accepted); 2.7, NaN, bools, strings or None raise :class:`CorruptDataError` naming the file,
    the first bad label and its index.

    Returns
    -------
    x : np.ndarray, uint8, shape (n, 3, 32, 32)
    y : np.ndarray, int64, shape (n,)
    """
    path = Path(path)
    d = _unpickle(path)
    missing = [k for k in (b"data", spec.label_key) if k not in d]
    if missing:
        raise CorruptDataError(f"{path}: missing key(s) {missing}; has {sorted(d)}")
    data, labels = d[b"data"], d[spec.label_key]
    size = int(np.prod(spec.image_shape))
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != size:
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise CorruptDataError(f"{path}: b'data' has the wrong size: expected a uint8 array (n, {size}),"
                               f" got {got}")
    key, top = spec.label_key, spec.num_classes - 1
    try:
        raw = np.asarray(labels)
    except (TypeError, ValueError) as e:  # ragged lists
        raise CorruptDataError(f"{path}: {key!r} is not a list of integers ({e})") from e
    if raw.dtype.kind not in "iuf":  # bool, str, bytes, object (None, mixed types) ...
        raise CorruptDataError(f"{path}: {key!r} is not a list of integers: expected integer labels 0..{top},"
                               f" got {raw.dtype} values")
    if raw.ndim != 1 or raw.shape[0] != data.shape[0]:
        raise CorruptDataError(f"{path}: label count mismatch: {data.shape[0]} images but {raw.shape} labels"
                               f" in {key!r}")
    if raw.dtype.kind == "f":  # a float copy is fine as long as every value is a whole number
        bad = np.flatnonzero(~np.isfinite(raw) | (raw != np.round(raw)))
        if bad.size:
            i = int(bad[0])
            raise CorruptDataError(f"{path}: non-integer labels in {key!r}: expected integers 0..{top}, got"
                                   f" {raw[i].item()!r} at index {i} ({bad.size} of {raw.size} labels are not"
                                   f" integers)")
    if raw.size and (raw.min() < 0 or raw.max() > top):
        i = int(np.flatnonzero((raw < 0) | (raw > top))[0])
        raise CorruptDataError(f"{path}: labels out of range in {key!r}: expected 0..{top}, got"
                               f" {raw.min():g}..{raw.max():g} (first bad: {raw[i]:g} at index {i})")
    return data.reshape((-1,) + tuple(spec.image_shape)), raw.astype(np.int64)


def read_meta(path, spec: CifarSpec) -> tuple:
    """Class names from the meta file, as a tuple of str."""
    path = Path(path)
    d = _unpickle(path)
    if spec.names_key not in d:
        raise CorruptDataError(f"{path}: missing key {spec.names_key!r}; has {sorted(d)}")
    names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in d[spec.names_key])
    if len(names) != spec.num_classes:
        raise CorruptDataError(f"{path}: expected {spec.num_classes} class names, got {len(names)}")
    return names


def _read_split(folder: Path, files, spec: CifarSpec):
    xs, ys = zip(*(read_batch(folder / f, spec) for f in files))
    if len(xs) == 1:
        return np.ascontiguousarray(xs[0]), ys[0]
    return np.concatenate(xs), np.concatenate(ys)


def load_cifar(name: str, data_dir=None, download: bool = True, check_counts: bool = True,
               progress: bool = True) -> Dataset:
    """Load CIFAR-10 (``"cifar10"``) or CIFAR-100 (``"cifar100"``: the 100 fine labels;
    ``"cifar100-coarse"``: the 20 superclasses, from the same files).

    Parameters
    ----------
    name : {"cifar10", "cifar100", "cifar100-coarse"}
    data_dir : path, optional
        The data root (see the module docstring for the lookup order).
    download : bool
        Download the archive when it is not in the data root.
    check_counts : bool
        Require the canonical 50000 training and 10000 test images. ``False`` accepts any
        consistent files in the canonical layout (smaller copies, the tests' fixtures); on the
        command line it is ``minignn train --allow-partial-data``.
    progress : bool
        Show a progress bar while downloading.

    Returns
    -------
    Dataset
        uint8 images (N, 3, 32, 32), int64 labels, class names from the meta file, mean/std
        computed from the training images.
    """
    spec = _spec(name)
    folder = prepare(name, data_dir, download_ok=download, progress=progress)
    classes = read_meta(folder / spec.meta_file, spec)
    x_train, y_train = _read_split(folder, spec.train_files, spec)
    x_test, y_test = _read_split(folder, spec.test_files, spec)
    if check_counts and (len(y_train), len(y_test)) != (spec.n_train, spec.n_test):
        raise CorruptDataError(
            f"{folder}: expected the canonical {spec.title} with {spec.n_train} training and {spec.n_test} test"
            f" images, got {len(y_train)} and {len(y_test)}; to load a smaller copy, pass check_counts=False"
            f" (load_dataset / load_cifar) or --allow-partial-data (minignn train)")
    if len(y_train) == 0:
        raise CorruptDataError(f"{folder}: the training files hold no images")
    mean, std = channel_stats(x_train)
    return Dataset(name=spec.name, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
                   classes=classes, mean=mean, std=std, source=str(folder))
