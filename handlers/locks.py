"""One recovery per unit at a time, across processes: a per-unit ``flock``.

The OnFailure= unit and the listener may both react to the same failure. Each
takes ``<lock_dir>/<unit>.lock`` with ``flock(LOCK_EX | LOCK_NB)`` before the
ladder runs. ``flock`` locks belong to the open file description, so two
coroutines of one process that each open the file exclude each other just
like two processes do, and the kernel drops the lock when a holder dies, even
by ``kill -9``: no stale lock files to clean up.

The directory is security-relevant (whoever can create files there can block
recovery), so it is created 0700 and refused when it is a symlink, is not
owned by us, or is writable by group or others. Lock files are opened with
``O_NOFOLLOW`` relative to the checked directory fd.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import stat
import time
from pathlib import Path
from types import TracebackType

from unitgen.errors import LockBusyError, StateError, UsageError
from unitgen.unitnames import managed_unit_problem

__all__ = ["UnitLock", "check_unit_name", "ensure_lock_dir"]

_POLL = 0.02


def check_unit_name(unit: str) -> str:
    """Return ``unit`` if unitgen can manage it, else raise UsageError (exit 2).

    The rule is unitgen.unitnames.managed_unit_problem, the one the spec applies:
    a unit that renders can be recovered, locked and looked up.
    """
    problem = managed_unit_problem(unit)
    if problem is not None:
        raise UsageError(f"not a unit unitgen can manage: expected {problem}")
    return unit


def open_private_dir(path: Path, *, create: bool = True) -> int:
    """An O_DIRECTORY fd to ``path``, created 0700 if missing and ``create``.

    Refused (PermissionError) unless it is ours and not group- or other-writable:
    the lock and ledger directories decide who may restart what.
    """
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        # The directory exists on every call but the first: open it straight away
        # (the checks below still run on what was opened).
        fd = os.open(path, flags)
    except FileNotFoundError:
        if not create:
            raise
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        with contextlib.suppress(FileExistsError):
            path.mkdir(mode=0o700)
        fd = os.open(path, flags)
    st = os.fstat(fd)
    problem = None
    if st.st_uid != os.geteuid():
        problem = f"owned by uid {st.st_uid}, expected {os.geteuid()}"
    elif st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        problem = f"mode {stat.S_IMODE(st.st_mode):o} is group- or other-writable"
    if problem is not None:
        os.close(fd)
        raise PermissionError(errno.EPERM, f"refused: {problem}")
    return fd


def ensure_lock_dir(path: Path) -> int:
    """Create (0700) or check the lock directory; return an O_DIRECTORY fd to it."""
    try:
        return open_private_dir(path)
    except OSError as exc:
        raise StateError(f"{path}: cannot use as lock directory ({exc.strerror})") from exc


class UnitLock:
    """The per-unit lock. ``async with UnitLock(...)`` or explicit acquire/release."""

    def __init__(self, lock_dir: Path, unit: str) -> None:
        self.unit = check_unit_name(unit)
        self.lock_dir = lock_dir
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def _open(self) -> int:
        dfd = ensure_lock_dir(self.lock_dir)
        try:
            return os.open(
                f"{self.unit}.lock",
                os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o600,
                dir_fd=dfd,
            )
        except OSError as exc:
            raise StateError(
                f"{self.lock_dir}/{self.unit}.lock: cannot open lock ({exc.strerror})"
            ) from exc
        finally:
            os.close(dfd)

    def try_acquire(self) -> bool:
        """Take the lock without waiting; False if another holder has it."""
        if self._fd is not None:
            return True
        fd = self._open()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except OSError as exc:
            os.close(fd)
            raise StateError(f"{self.unit}: flock failed ({exc.strerror})") from exc
        # Who holds it, for an operator looking at the directory; advisory only.
        # Rewritten only when it names another process: truncating and writing is
        # file-system metadata work before every restart of a daemon that holds the
        # same locks again and again (docs/listener.md).
        holder = f"{os.getpid()}\n".encode()
        with contextlib.suppress(OSError):
            if os.pread(fd, 32, 0) != holder:
                os.ftruncate(fd, 0)
                os.pwrite(fd, holder, 0)
        self._fd = fd
        return True

    async def acquire(self, timeout: float) -> None:  # noqa: ASYNC109 -- polling deadline
        """Wait up to ``timeout`` seconds for the lock; LockBusyError when it stays taken."""
        deadline = time.monotonic() + max(0.0, timeout)
        while not self.try_acquire():
            if time.monotonic() >= deadline:
                raise LockBusyError(f"{self.unit}: another recovery holds the lock")
            # flock has no async form; a short poll keeps the loop free and is bounded.
            await asyncio.sleep(_POLL)

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    async def wait_released(self, timeout: float) -> bool:  # noqa: ASYNC109 -- polling deadline
        """Wait until nobody holds the lock (without keeping it); False on timeout."""
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            if self.try_acquire():
                self.release()
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(_POLL)

    def __enter__(self) -> UnitLock:
        if not self.try_acquire():
            raise LockBusyError(f"{self.unit}: another recovery holds the lock")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
