"""Atomic file writes: a file is either its old self or completely the new one, never truncated.

:func:`atomic_write` calls ``write(tmp)`` on a temporary path in the destination's directory
(same file system, same suffix, so writers that choose a format by suffix still work), fsyncs
it, renames it over the destination with ``os.replace`` (atomic on POSIX) and fsyncs the
directory. When anything fails (a full disk, a read-only directory, a file size limit) the
temporary file is removed, the destination is left as it was, and an :class:`OSError` names the
destination, the cause and the free space on that disk.
"""
from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

__all__ = ["atomic_write", "WriteError"]


class WriteError(OSError):
    """A file could not be written; the destination is unchanged."""


def _free(directory: Path) -> str:
    try:
        return f"{shutil.disk_usage(directory).free / 2**20:.1f} MiB free there"
    except OSError:
        return "free space unknown"


def atomic_write(path, write) -> Path:
    """Write ``path`` atomically through ``write(tmp_path)``; returns ``path``."""
    path = Path(path)
    directory = path.parent
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WriteError(e.errno or errno.EIO, f"cannot create the folder {directory} for {path}: "
                                               f"{e.strerror or e}") from None
    if path.is_dir():
        raise WriteError(errno.EISDIR, f"{path} is a folder; give a file name")
    tmp = directory / f".tmp-{os.getpid()}-{path.name}"
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        if isinstance(e, (OSError, RuntimeError)):  # torch reports a failed write as a RuntimeError
            detail = getattr(e, "strerror", None) or str(e).splitlines()[0] if str(e) else type(e).__name__
            raise WriteError(getattr(e, "errno", None) or errno.EIO,
                             f"could not write {path} ({detail}; {_free(directory)}); it is unchanged") from None
        raise
    try:
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
    return path
