"""The mount a file descriptor or a directory entry lives on, asked by fd, never by path.

Cleanup must never cross a mount point.  Comparing ``st_dev`` is not enough: a
bind mount of a directory of the *same* filesystem has the same device number
on both sides.  What differs is the mount itself, so entries are compared by
mount id, the number the kernel also shows in ``/proc/self/mountinfo``.

Three ways to learn it, tried in this order (docs/cleanup.md):

1. ``statx(dirfd, name, AT_SYMLINK_NOFOLLOW, STATX_MNT_ID)``: Linux 5.8.
   Python's ``os`` module has no ``statx`` here, so it is called through
   ctypes (glibc's wrapper, else the raw system call).
2. ``name_to_handle_at(dirfd, name, ..., &mount_id, 0)``: Linux 2.6.39,
   the way systemd's ``fd_is_mount_point`` falls back.  Some filesystems
   cannot make file handles and answer ``EOPNOTSUPP``; then
3. the ``mnt_id:`` line of ``/proc/self/fdinfo/FD`` (Linux 3.15), for an
   ``O_PATH|O_NOFOLLOW`` fd of the entry: the same ids as mountinfo, but
   tied to an fd, so no path can be swapped between asking and acting.

All three give the same (per-namespace, reusable) id, so results of different
methods can be compared.  A mount id cannot be reused while an fd on that
mount is open, which is how callers hold their reference mount.

Every lookup ends in the name itself, mounts on it included (that is the
point) but never through a final symlink.  Errors are ``OSError``: the entry
vanished (``FileNotFoundError``) or the kernel offers no way at all (``ENOTSUP``).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import platform
from collections.abc import Callable

__all__ = ["fdinfo_mount_id", "handle_mount_id", "method", "mount_id", "statx_mount_id"]

_AT_FDCWD = -100
_AT_SYMLINK_NOFOLLOW = 0x100
_AT_NO_AUTOMOUNT = 0x800
_AT_EMPTY_PATH = 0x1000
_STATX_MNT_ID = 0x1000
_MAX_HANDLE_SZ = 128
# statx(2) numbers for the raw call when libc has no wrapper (glibc < 2.28, some musl).
_SYS_STATX = {"x86_64": 332, "aarch64": 291, "ppc64le": 383, "s390x": 379, "riscv64": 291}


class _StatxTimestamp(ctypes.Structure):
    _fields_ = (
        ("tv_sec", ctypes.c_int64),
        ("tv_nsec", ctypes.c_uint32),
        ("_reserved", ctypes.c_int32),
    )


class _Statx(ctypes.Structure):
    """``struct statx`` from <linux/stat.h>, up to ``stx_mnt_id`` and padded to 256 bytes."""

    _fields_ = (
        ("stx_mask", ctypes.c_uint32),
        ("stx_blksize", ctypes.c_uint32),
        ("stx_attributes", ctypes.c_uint64),
        ("stx_nlink", ctypes.c_uint32),
        ("stx_uid", ctypes.c_uint32),
        ("stx_gid", ctypes.c_uint32),
        ("stx_mode", ctypes.c_uint16),
        ("_spare0", ctypes.c_uint16),
        ("stx_ino", ctypes.c_uint64),
        ("stx_size", ctypes.c_uint64),
        ("stx_blocks", ctypes.c_uint64),
        ("stx_attributes_mask", ctypes.c_uint64),
        ("stx_atime", _StatxTimestamp),
        ("stx_btime", _StatxTimestamp),
        ("stx_ctime", _StatxTimestamp),
        ("stx_mtime", _StatxTimestamp),
        ("stx_rdev_major", ctypes.c_uint32),
        ("stx_rdev_minor", ctypes.c_uint32),
        ("stx_dev_major", ctypes.c_uint32),
        ("stx_dev_minor", ctypes.c_uint32),
        ("stx_mnt_id", ctypes.c_uint64),
        ("_spare", ctypes.c_uint64 * 13),
    )


class _FileHandle(ctypes.Structure):
    _fields_ = (
        ("handle_bytes", ctypes.c_uint),
        ("handle_type", ctypes.c_int),
        ("f_handle", ctypes.c_ubyte * _MAX_HANDLE_SZ),
    )


_libc = ctypes.CDLL(None, use_errno=True)
_name_to_handle_at = getattr(_libc, "name_to_handle_at", None)
if _name_to_handle_at is not None:
    _name_to_handle_at.argtypes = (
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_int,
    )
    _name_to_handle_at.restype = ctypes.c_int


def _raise_errno(what: str) -> None:
    code = ctypes.get_errno()
    raise OSError(code, f"{what}: {os.strerror(code)}")


def _target(dir_fd: int, name: str | None) -> tuple[int, bytes, int]:
    """(fd, path, extra flags): the entry ``name`` in ``dir_fd``, or ``dir_fd`` itself."""
    if name is None:
        return dir_fd, b"", _AT_EMPTY_PATH
    return dir_fd, os.fsencode(name), 0


_StatxFn = Callable[[int, bytes, int, int, "ctypes._CArgObject"], int]


@functools.cache
def _statx_call() -> _StatxFn | None:
    """The statx entry point to use, or None when the kernel or libc cannot give a mount id."""
    fn: _StatxFn
    try:
        wrapper = _libc.statx
    except AttributeError:
        number = _SYS_STATX.get(platform.machine())
        if number is None:
            return None

        def fn(fd: int, path: bytes, flags: int, mask: int, buf: ctypes._CArgObject) -> int:
            return int(
                _libc.syscall(
                    ctypes.c_long(number),
                    ctypes.c_int(fd),
                    ctypes.c_char_p(path),
                    ctypes.c_int(flags),
                    ctypes.c_uint(mask),
                    buf,
                )
            )
    else:
        wrapper.argtypes = (
            ctypes.c_int,
            ctypes.c_char_p,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_void_p,
        )
        wrapper.restype = ctypes.c_int
        fn = wrapper
    buf = _Statx()
    if fn(_AT_FDCWD, b"/", _AT_SYMLINK_NOFOLLOW, _STATX_MNT_ID, ctypes.byref(buf)) != 0:
        return None  # ENOSYS: a kernel older than 4.11, or a seccomp filter
    if not buf.stx_mask & _STATX_MNT_ID:
        return None  # the kernel has statx but predates STATX_MNT_ID (5.8)
    return fn


def statx_mount_id(dir_fd: int, name: str | None = None) -> int:
    """The mount id from ``statx``; ``ENOTSUP`` when the kernel cannot tell it that way."""
    fn = _statx_call()
    if fn is None:
        raise OSError(errno.ENOTSUP, "statx cannot report STATX_MNT_ID here")
    fd, path, flags = _target(dir_fd, name)
    buf = _Statx()
    flags |= _AT_SYMLINK_NOFOLLOW | _AT_NO_AUTOMOUNT
    if fn(fd, path, flags, _STATX_MNT_ID, ctypes.byref(buf)) != 0:
        _raise_errno("statx")
    if not buf.stx_mask & _STATX_MNT_ID:
        raise OSError(errno.ENOTSUP, "statx did not report STATX_MNT_ID")
    return int(buf.stx_mnt_id)


def handle_mount_id(dir_fd: int, name: str | None = None) -> int:
    """The mount id from ``name_to_handle_at``; ``EOPNOTSUPP`` on filesystems without handles."""
    if _name_to_handle_at is None:
        raise OSError(errno.ENOSYS, "libc has no name_to_handle_at")
    fd, path, flags = _target(dir_fd, name)
    handle = _FileHandle(handle_bytes=_MAX_HANDLE_SZ)
    mnt = ctypes.c_int(-1)
    # Without AT_SYMLINK_FOLLOW a final symlink is not followed.
    rc = _name_to_handle_at(fd, path, ctypes.byref(handle), ctypes.byref(mnt), flags)
    # EOVERFLOW only means the handle did not fit; the kernel fills in the mount id anyway.
    if rc != 0 and (ctypes.get_errno() != errno.EOVERFLOW or mnt.value < 0):
        _raise_errno("name_to_handle_at")
    return mnt.value


def fdinfo_mount_id(dir_fd: int, name: str | None = None) -> int:
    """The mount id from ``/proc/self/fdinfo``, for an ``O_PATH`` fd of the entry."""
    fd = dir_fd
    if name is not None:
        fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        with open(f"/proc/self/fdinfo/{fd}", "rb") as f:
            for line in f:
                if line.startswith(b"mnt_id:"):
                    return int(line.split()[1])
    except FileNotFoundError as exc:
        # /proc/self/fdinfo/FD of an open fd is missing only when /proc is not mounted.
        raise OSError(errno.ENOTSUP, "no mount id: /proc is not mounted") from exc
    finally:
        if fd != dir_fd:
            os.close(fd)
    raise OSError(errno.ENOTSUP, "no mount id: fdinfo has no mnt_id (Linux < 3.15)")


def method() -> str:
    """Which way :func:`mount_id` asks first on this kernel: ``statx`` or ``name_to_handle_at``."""
    return "statx" if _statx_call() is not None else "name_to_handle_at"


def mount_id(dir_fd: int, name: str | None = None) -> int:
    """The id of the mount holding ``name`` in ``dir_fd`` (or ``dir_fd`` itself).

    A name that is itself a mount point gives the mounted mount's id, so a
    caller compares it with the id of the mount it means to stay on.
    """
    if _statx_call() is not None:
        return statx_mount_id(dir_fd, name)
    try:
        return handle_mount_id(dir_fd, name)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EPERM):
            raise
    return fdinfo_mount_id(dir_fd, name)
