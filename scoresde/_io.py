"""Safe file output: atomic writes, clear write errors, stale temporary files, writability probes.

Every file scoresde writes (checkpoints, ``metrics.json``, ``samples.npz``, figures) is first
serialised in memory, then written to a temporary file ``.<name>.<random>.tmp`` in the target's
directory, flushed, fsynced and ``os.replace``d onto the target, so the target is always either
its previous version or the complete new one.  A failed write removes its temporary file and
raises ``OutputError`` (an ``OSError`` with the same ``errno``) whose message names the file and
the OS error, e.g. ``could not write /run/samples.npz: [Errno 28] No space left on device``.  A
process killed in the middle of a write leaves its temporary file behind;
``remove_stale_temporaries(directory)`` deletes them at the next start.
"""
from __future__ import annotations

import contextlib
import errno
import io
import os
import tempfile
from pathlib import Path
from typing import Callable

__all__ = ["OutputError", "atomic_write", "atomic_write_with", "remove_stale_temporaries", "probe_writable"]

TEMP_SUFFIX = ".tmp"


class OutputError(OSError):
    """A file could not be written; the message names the file and the OS error."""


def _error(path: Path, e: OSError, what: str = "write") -> OutputError:
    reason = f"[Errno {e.errno}] {e.strerror}" if e.errno else str(e)
    return OutputError(e.errno or errno.EIO, f"could not {what} {path}: {reason}")


def atomic_write(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file in the same directory, fsync, ``os.replace``)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    except OSError as e:
        raise _error(path, e) from e
    try:
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise _error(path, e) from e
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename durable (not supported everywhere)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return path


def atomic_write_with(path: str | os.PathLike, writer: Callable[[io.BytesIO], object]) -> Path:
    """``writer(buffer)`` serialises into an in-memory buffer, which is then written atomically to ``path``."""
    buffer = io.BytesIO()
    writer(buffer)
    return atomic_write(path, buffer.getbuffer())


def remove_stale_temporaries(directory: str | os.PathLike) -> list[Path]:
    """Delete the temporary files ``.<name>.<random>.tmp`` that an interrupted write left in ``directory``."""
    directory = Path(directory)
    removed = []
    if not directory.is_dir():
        return removed
    for p in directory.iterdir():
        if p.name.startswith(".") and p.name.endswith(TEMP_SUFFIX) and p.is_file():
            with contextlib.suppress(OSError):
                p.unlink()
                removed.append(p)
    return removed


def probe_writable(directory: str | os.PathLike, what: str = "output directory") -> Path:
    """Create ``directory`` if needed and check that a file can be written in it; raise ``OutputError`` if not."""
    directory = Path(directory).expanduser()
    try:
        if directory.exists() and not directory.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "exists and is not a directory")
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".probe.", suffix=TEMP_SUFFIX, dir=directory)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        reason = f"[Errno {e.errno}] {e.strerror}" if e.errno else str(e)
        raise OutputError(e.errno or errno.EIO, f"{what} {directory} is not writable: {reason}") from e
    return directory
