"""Small state files read and replaced whole, relative to a checked directory fd.

Shared by the restart budget's ledger (handlers/ledger.py) and the flapping
alert's state (handlers/flapstate.py). The directory is opened and checked by
the caller (:func:`handlers.locks.open_private_dir`); names are opened
``O_NOFOLLOW`` relative to it, so a symlink planted in its place is refused,
never followed. A write is a temporary file in the same directory, fsync,
rename: a reader sees the old contents or the new, never half of them.

Errors are ``OSError`` with the errno and a message naming the file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat

__all__ = ["read_at", "write_at"]


def read_at(dfd: int, name: str, max_bytes: int) -> bytes | None:
    """The contents of ``name`` in ``dfd``, None if it does not exist.

    Refused: a symlink (ELOOP), anything not a regular file, more than ``max_bytes``.
    """
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dfd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise OSError(exc.errno, f"{name}: {exc.strerror}") from exc
    try:
        regular = stat.S_ISREG(os.fstat(fd).st_mode)
        data = os.read(fd, max_bytes + 1) if regular else b""
    except OSError as exc:
        raise OSError(exc.errno, f"{name}: {exc.strerror}") from exc
    finally:
        os.close(fd)
    if not regular:
        raise OSError(errno.EINVAL, f"{name}: not a regular file")
    if len(data) > max_bytes:
        raise OSError(errno.EFBIG, f"{name}: larger than {max_bytes} bytes")
    return data


def write_at(dfd: int, name: str, data: bytes) -> None:
    """Replace ``name`` in ``dfd`` with ``data`` atomically (mode 0600)."""
    tmp = f".{name}.tmp-{os.getpid()}"
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dfd)
        fd = os.open(
            tmp,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
            dir_fd=dfd,
        )
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dfd)
        raise OSError(exc.errno, f"cannot write {name}: {exc.strerror}") from exc
