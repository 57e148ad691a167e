"""Writing files so that no reader ever sees a partial one, and no two runs write into one folder at once.

* :func:`write_atomic` / :func:`write_together`: each file is written under a hidden temporary name in its own
  folder (``.NAME.una-tmp-PID-XXXXXXXX.EXT``, same extension so writers that go by it still work), flushed to disk
  (``fsync``), renamed onto its final name and the folder entry synced. A crash at any moment leaves either the old
  file or the complete new one under the final name, never a partial one. The files are created with mode ``0o666``
  less the umask (``0644`` under the usual ``022``), as ``open()`` would, not ``mkstemp``'s ``0600``.
* :func:`remove_stale_temps`: the temporary files a killed process left behind (its PID is gone).
* :func:`claim_folder`: an exclusive claim on a folder (``flock`` on a hidden lock file, released when the holder
  exits or dies), so a second run into the same folder fails at once instead of replacing the first one's files.
"""

from __future__ import annotations

import errno
import os
import secrets
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows: no flock, a claim then only writes the lock file
    fcntl = None

__all__ = [
    "TEMP_TAG",
    "LOCK_NAME",
    "FolderInUseError",
    "new_temp",
    "commit",
    "write_atomic",
    "write_together",
    "remove_stale_temps",
    "claim_folder",
]

#: marks the temporary files of this module: ``.NAME`` + ``TEMP_TAG`` + ``PID-RANDOM`` + extension
TEMP_TAG = ".una-tmp-"
#: the lock file :func:`claim_folder` creates in the folder it claims
LOCK_NAME = ".una.lock"


class FolderInUseError(FileExistsError):
    """Another live process holds the claim on a folder (see :func:`claim_folder`)."""


def _extension(name: str) -> str:
    for ext in (".nii.gz", ".tar.gz"):
        if name.endswith(ext):
            return ext
    return Path(name).suffix


def new_temp(target: str | os.PathLike) -> Path:
    """Create (empty, exclusively) and return a hidden temporary file next to ``target``, with its extension."""
    target = Path(target)
    while True:
        tmp = target.parent / f".{target.name}{TEMP_TAG}{os.getpid()}-{secrets.token_hex(4)}{_extension(target.name)}"
        try:
            fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)  # 0o666 less the umask, as open() does
        except FileExistsError:  # pragma: no cover - 32 random bits collided
            continue
        os.close(fd)
        return tmp


def _fsync(path: Path, directory: bool = False) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    except OSError:
        if directory:  # some platforms cannot open folders; the rename itself is still atomic
            return
        raise
    try:
        os.fsync(fd)
    except OSError as err:
        if not directory or err.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def commit(tmp: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Flush ``tmp`` to disk, rename it onto ``target`` (atomically replacing it) and sync the folder entry."""
    tmp, target = Path(tmp), Path(target)
    _fsync(tmp)
    os.replace(tmp, target)
    _fsync(target.parent, directory=True)
    return target


def write_atomic(path: str | os.PathLike, writer: Callable[[Path], object]) -> Path:
    """``writer(tmp)`` writes the content to a temporary path, which then replaces ``path`` atomically.

    On any failure (or interrupt) the temporary file is removed and ``path`` is left as it was.
    """
    return write_together({Path(path): writer})[0]


def write_together(files: Mapping[str | os.PathLike, Callable[[Path], object]]) -> list[Path]:
    """Write several files (``{final path: writer(tmp)}``) under temporary names, then rename them all.

    Nothing is renamed before every writer has succeeded; on failure every temporary file and every file already
    renamed by this call is removed, so a failed call leaves none of its files under a final name.
    """
    temps: dict[Path, Path] = {}
    renamed: list[Path] = []
    try:
        for target, writer in files.items():
            target = Path(target)
            temps[target] = new_temp(target)
            writer(temps[target])
        for target, tmp in temps.items():
            commit(tmp, target)
            renamed.append(target)
    except BaseException:
        for path in list(temps.values()) + renamed:
            if path.exists():
                path.unlink()
        raise
    return renamed


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    except (OverflowError, ValueError):  # not a PID at all
        return False
    return True


def remove_stale_temps(folder: str | os.PathLike, names: Iterable[str] = ()) -> list[Path]:
    """Remove the temporary files a killed process left in ``folder``; returns those removed.

    Temporary files of :func:`new_temp` are removed when the process that made them is gone. For each of ``names``
    (final file names; only for a caller that holds :func:`claim_folder` on the folder, so nobody else writes them)
    any hidden ``.NAME.*`` file is removed as well, whatever made it (e.g. ``tempfile.mkstemp`` of older versions).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    prefixes = tuple(f".{name}." for name in names)
    removed = []
    for path in sorted(folder.iterdir()):
        name = path.name
        if not name.startswith(".") or not path.is_file() or path.is_symlink():
            continue
        stale = bool(prefixes) and name.startswith(prefixes) and os.getpid() != _temp_pid(name)
        if not stale and TEMP_TAG in name:
            pid = _temp_pid(name)
            stale = pid is not None and not _pid_alive(pid)
        if stale:
            try:
                path.unlink()
                removed.append(path)
            except FileNotFoundError:  # its owner finished it meanwhile
                pass
    return removed


def _temp_pid(name: str) -> int | None:
    if TEMP_TAG not in name:
        return None
    pid = name.rsplit(TEMP_TAG, 1)[1].split("-", 1)[0]
    return int(pid) if pid.isdigit() else None


class _Claim:
    """The claim :func:`claim_folder` returns; ``release()`` (or leaving the ``with`` block) gives it up."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path, self._fd = path, fd

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink()  # while still locked: a process waiting on this file sees it is gone and retries
        except FileNotFoundError:
            pass
        finally:
            os.close(self._fd)  # releases the lock
            self._fd = None

    def __enter__(self) -> _Claim:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def claim_folder(folder: str | os.PathLike, what: str = "output_dir", hint: str = "") -> _Claim:
    """Claim ``folder`` (which must exist) exclusively for this process; raise :class:`FolderInUseError` at once
    when another live process holds it. The claim ends with ``release()``, the ``with`` block, or the process
    (even a killed one: the operating system drops the lock)."""
    path = Path(folder) / LOCK_NAME
    while True:
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o666)
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            raise FolderInUseError(
                f"{what} {folder} is in use by another run ({_holder(path)}, lock file {path}); wait for it to finish "
                f"or choose another folder{hint}."
            ) from None
        try:  # the holder may have released (and removed) the file between our open and our lock: retry on a new one
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return _Claim(path, fd)


def _holder(path: Path) -> str:
    try:
        pid = path.read_text().strip()
    except OSError:
        pid = ""
    return f"pid {pid}" if pid.isdigit() else "another process"
