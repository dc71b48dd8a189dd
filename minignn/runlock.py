"""The run-folder lock: while a run trains, it owns its folder, and a second run on the same
folder refuses to start instead of mixing its files in.

The lock is the file ``.minignn.lock`` in the run folder, holding the owner's process id, with an
exclusive ``fcntl.flock`` on it for as long as the run lasts. The kernel drops the flock when the
process ends, however it ends (``kill -9`` and crashes included), so a lock file left behind by a
dead process is stale: the next run takes it over (and the trainer then clears that process's
temporary files). Releasing deletes the file. Where ``fcntl`` is missing (Windows), the file
alone is the lock (created with ``O_EXCL``); a stale one is reported with its path, to delete by
hand.

    with RunLock("runs/tiny-max"):      # RunFolderLocked if another live process holds it
        ...
"""
from __future__ import annotations

import errno
import os

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

__all__ = ["LOCK_NAME", "RunFolderError", "RunFolderLocked", "RunLock", "check_unlocked"]

LOCK_NAME = ".minignn.lock"


class RunFolderError(RuntimeError):
    """A run folder that this run may not use (busy, or holding another run): a user's choice to
    make, reported as one line."""


class RunFolderLocked(RunFolderError):
    """The run folder is owned by another live run (``folder``, ``pid``: its process id or None)."""

    def __init__(self, folder: str, pid: int | None, lock_path: str | None = None):
        self.folder, self.pid = folder, pid
        who = f"process {pid}" if pid is not None else "a process that has not written its id yet"
        msg = (f"run folder {folder} is in use by another minignn run ({who}); wait for it to end or stop it,"
               f" or choose another --out")
        if lock_path is not None:  # no flock here: the file may be stale
            msg += f" (if that process is gone, delete {lock_path})"
        super().__init__(msg)


def _read_pid(fd) -> int | None:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 64).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _locked_elsewhere(e: OSError) -> bool:
    return e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)


class RunLock:
    """An exclusive, process-wide lock on a run folder (see the module docstring).

    ``acquire()`` creates the folder if needed and raises :class:`RunFolderLocked` (naming the
    folder and the owner's pid) when another live process holds it; ``release()`` deletes the
    lock file. Also a context manager. Not re-entrant: a second RunLock on the same folder in the
    same process is refused too.
    """

    def __init__(self, folder: str):
        self.folder = folder
        self.path = os.path.join(folder, LOCK_NAME)
        self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> "RunLock":
        if self._fd is not None:
            return self
        os.makedirs(self.folder, exist_ok=True)
        if fcntl is None:  # pragma: no cover - Windows
            return self._acquire_exclusive_create()
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
        for _ in range(100):  # retried only while other runs release the file under us
            fd = os.open(self.path, flags, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                pid = _read_pid(fd)
                os.close(fd)
                if _locked_elsewhere(e):
                    raise RunFolderLocked(self.folder, pid) from None
                raise
            # locked; but is it still the file at self.path (not one its owner unlinked meanwhile)?
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode("ascii"))
            self._fd = fd
            return self
        raise RunFolderLocked(self.folder, None)  # pragma: no cover - a storm of competing runs

    def _acquire_exclusive_create(self):  # pragma: no cover - Windows
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            with open(self.path, "rb") as f:
                pid = _read_pid(f.fileno())
            raise RunFolderLocked(self.folder, pid, self.path) from None
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        self._fd = fd
        return self

    def release(self):
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            try:
                if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                    os.unlink(self.path)  # while still holding the flock: see acquire()
            except FileNotFoundError:
                pass
        finally:
            os.close(fd)

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
        return False

    def __del__(self):  # a lock object dropped without release() (the flock goes with the fd)
        try:
            self.release()
        except Exception:
            pass


def check_unlocked(folder: str):
    """Raise :class:`RunFolderLocked` if a live run holds ``folder``'s lock (a missing or stale
    lock file passes). Only looks: takes nothing, creates nothing; the answer can change at once,
    so this is an early, friendly check and :meth:`RunLock.acquire` the real one."""
    path = os.path.join(folder, LOCK_NAME)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except (FileNotFoundError, NotADirectoryError):
        return
    try:
        if fcntl is None:  # pragma: no cover - Windows: the file alone is the lock
            raise RunFolderLocked(folder, _read_pid(fd), path)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # shared: a probe, released on close
        except OSError as e:
            if _locked_elsewhere(e):
                raise RunFolderLocked(folder, _read_pid(fd)) from None
            raise
    finally:
        os.close(fd)
