"""Checkpoints: a nested dict of arrays and plain values in one ``.npz`` file, written atomically.

Format: a NumPy ``.npz`` archive. Every array of the state goes in as its own entry (named by its
path in the dict, e.g. ``model/0.conv.weight``); everything else (numbers, strings, lists, dicts,
None, the big integers of a NumPy RNG state) goes in one JSON document stored as the entry
``__meta__``, in which each array is replaced by ``{"__array__": "<entry name>"}`` and each
non-finite float by ``{"__float__": "nan" | "inf" | "-inf"}`` (so the document is standard JSON
and the values come back exactly). Loading uses ``allow_pickle=False``, so opening a checkpoint
never runs code from the file.

Atomic writes: :func:`save_checkpoint` writes to a temporary file in the destination folder,
flushes and fsyncs it, then ``os.replace``-s it over the destination (an atomic rename on POSIX
and Windows) and fsyncs the folder. A crash, a full disk or a Ctrl-C during the write leaves the
previous checkpoint intact, and the temporary file is removed; an OSError without a file name
(a full disk, ``[Errno 28]``) is re-raised naming the destination. Only a hard kill (``kill -9``,
a power cut) mid-write leaves the temporary file (``.tmp-<name>-<random>.part``) behind:
:func:`remove_stale_temporaries` clears them from a folder whose writer is known to be gone.

Every JSON document minignn writes is standard JSON: :func:`dumps_json` (``allow_nan=False``,
non-finite floats written as ``null``) for the run files, the tagged floats above for checkpoints.
"""
from __future__ import annotations

import json
import math
import os
import stat
import tempfile
import zipfile

import numpy as np

from . import backend

FORMAT = "minignn-checkpoint"
VERSION = 1
_META = "__meta__"
TMP_PREFIX, TMP_SUFFIX = ".tmp-", ".part"  # atomic_write's temporary files: .tmp-<name>-<random>.part


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, truncated, corrupted or not a minignn checkpoint."""


def _pack(obj, path: str, arrays: dict):
    """Replace arrays in ``obj`` by references, collecting them in ``arrays`` (JSON-able result)."""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, str):
                raise TypeError(f"save_checkpoint: {path or 'state'}: keys must be strings, got {k!r}")
            out[k] = _pack(v, f"{path}/{k}" if path else k, arrays)
        return out
    if isinstance(obj, (list, tuple)):
        return [_pack(v, f"{path}/{i}", arrays) for i, v in enumerate(obj)]
    if hasattr(obj, "__array__") and hasattr(obj, "dtype") and hasattr(obj, "shape") and getattr(obj, "ndim", 0) >= 0 \
            and not isinstance(obj, np.generic):
        key = path
        if key in arrays or key == _META:
            raise ValueError(f"save_checkpoint: duplicate array entry {key!r}")
        arrays[key] = backend.to_numpy(obj)
        return {"__array__": key}
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return {"__float__": repr(obj)}  # 'nan', 'inf', '-inf'
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"save_checkpoint: {path or 'state'}: cannot store a {type(obj).__name__}"
                    f" (use arrays, numbers, strings, lists, dicts or None)")


def _unpack(obj, arrays):
    if isinstance(obj, dict):
        if set(obj) == {"__array__"}:
            return arrays[obj["__array__"]]
        if set(obj) == {"__float__"}:
            return float(obj["__float__"])
        return {k: _unpack(v, arrays) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_unpack(v, arrays) for v in obj]
    return obj


def _json_safe(obj):
    """``obj`` with every non-finite float (Python or NumPy) replaced by None, NumPy scalars by
    Python ones, tuples by lists."""
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def dumps_json(obj, **kw) -> str:
    """``json.dumps`` that always writes standard JSON: inf and NaN become ``null`` (never the bare
    ``NaN``/``Infinity`` other parsers reject); ``kw`` go to ``json.dumps``."""
    return json.dumps(_json_safe(obj), allow_nan=False, **kw)


def _fsync_dir(folder: str):
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str, write, mode: str = "wb") -> str:
    """Write a file so that an interruption never destroys the previous one: ``write(f)`` fills a
    temporary file beside ``path``, which is flushed, fsynced and renamed over ``path``; on any
    error (Ctrl-C included) the temporary file is removed and ``path`` is untouched; an OSError
    that names no file (``[Errno 28] No space left on device`` from a write) is re-raised as one
    naming ``path``. Text modes write UTF-8; the new file keeps the mode bits of the one it
    replaces (a new file gets the usual ``0o666 & ~umask``)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX + os.path.basename(path) + "-", suffix=TMP_SUFFIX, dir=folder)
    try:
        # mkstemp makes it 0600: give it the replaced file's mode, or a normal new file's
        os.chmod(tmp, stat.S_IMODE(os.stat(path).st_mode) if os.path.exists(path) else 0o666 & ~_umask())
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError) and e.filename is None:
            if e.errno is not None:
                raise OSError(e.errno, e.strerror or str(e), path) from e
            raise OSError(f"{e}: {path!r}") from e
        raise
    _fsync_dir(folder)
    return path


def remove_stale_temporaries(folder: str) -> list[str]:
    """Delete the temporary files :func:`atomic_write` left in ``folder`` when its writer was killed
    mid-write; returns their names. Call it only when no other process can be writing there (the
    trainer does, holding the run folder's lock)."""
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    removed = []
    for name in sorted(names):
        if name.startswith(TMP_PREFIX) and name.endswith(TMP_SUFFIX):
            try:
                os.unlink(os.path.join(folder, name))
                removed.append(name)
            except FileNotFoundError:
                pass
    return removed


def save_checkpoint(path: str, state: dict) -> str:
    """Write ``state`` (a dict of arrays and plain values) to ``path`` atomically; returns ``path``.

    The previous file at ``path`` stays complete and loadable until the new one is fully on disk.
    """
    if not isinstance(state, dict):
        raise TypeError(f"save_checkpoint: state: expected a dict, got {type(state).__name__}")
    arrays: dict = {}
    meta = {"format": FORMAT, "version": VERSION, "state": _pack(state, "", arrays)}
    meta_bytes = np.frombuffer(json.dumps(meta, allow_nan=False).encode("utf-8"), dtype=np.uint8)
    return atomic_write(path, lambda f: np.savez(f, **{_META: meta_bytes}, **arrays))


def load_checkpoint(path: str) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`; returns the state dict (arrays as
    numpy arrays). Raises :class:`CheckpointError` with the path and the reason when the file is
    missing, not an .npz archive, truncated, corrupted or of another format."""
    if os.path.isdir(path):
        raise CheckpointError(f"load_checkpoint: {path!r} is a folder; give the checkpoint file"
                              f" (e.g. {os.path.join(path, 'checkpoint.npz')!r})")
    if not os.path.exists(path):
        raise CheckpointError(f"load_checkpoint: no file at {path!r}")
    with open(path, "rb") as f:
        head = f.read(6)
    if not head.startswith(b"PK"):  # np.load would try other formats (and suggest loading pickles)
        what = ("it is a .npy array" if head.startswith(b"\x93NUMPY") else "the file is empty" if not head
                else "it is not an .npz archive")
        raise CheckpointError(f"load_checkpoint: {path!r} is not a minignn checkpoint: {what} (a checkpoint is the"
                              f" .npz file a run writes, its checkpoint.npz or best.npz)")
    try:
        with np.load(path, allow_pickle=False) as z:
            if _META not in z.files:
                raise CheckpointError(f"load_checkpoint: {path!r} is an .npz file but not a minignn checkpoint"
                                      f" (no {_META} entry)")
            meta = json.loads(z[_META].tobytes().decode("utf-8"))
            arrays = {k: z[k] for k in z.files if k != _META}
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError, UnicodeDecodeError) as e:
        raise CheckpointError(f"load_checkpoint: {path!r} is truncated or corrupted ({type(e).__name__}: {e})") from e
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"load_checkpoint: {path!r}: expected format {FORMAT!r}, got {meta.get('format')!r}")
    if meta.get("version", 0) > VERSION:
        raise CheckpointError(f"load_checkpoint: {path!r}: written by a newer minignn (format version"
                              f" {meta['version']}, this one reads up to {VERSION})")
    try:
        return _unpack(meta["state"], arrays)
    except KeyError as e:
        raise CheckpointError(f"load_checkpoint: {path!r} is corrupted (missing array entry {e})") from e
