"""Run an external command from asyncio without blocking the loop or leaking processes.

Every command runs in its own session (and so its own process group), with
stdin from /dev/null and stdout and stderr merged into one bounded capture
that keeps the tail, because the end of a failing tool's output is where the
reason is.  A timeout kills the whole process group, SIGTERM first and SIGKILL
after a grace period, so a grandchild the command forked cannot outlive it.
Nothing here goes through a shell.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["CommandResult", "run_command"]

_READ_CHUNK = 16 * 1024


@dataclass(frozen=True)
class CommandResult:
    """What happened to one command.

    ``returncode`` is ``None`` when the command never ran (``error`` says why)
    and negative when a signal ended it, as in :mod:`subprocess`.
    """

    argv: tuple[str, ...]
    returncode: int | None
    output_tail: str
    duration: float
    timed_out: bool
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out and self.error is None

    def describe(self) -> str:
        """One line for logs and escalation reasons."""
        if self.error is not None:
            return self.error
        if self.timed_out:
            return f"{self.argv[0]}: timed out after {self.duration:.1f}s"
        if self.returncode is not None and self.returncode < 0:
            try:
                name = signal.Signals(-self.returncode).name
            except ValueError:
                name = f"signal {-self.returncode}"
            return f"{self.argv[0]}: killed by {name}"
        return f"{self.argv[0]}: exit code {self.returncode}"


class _Tail:
    """Keeps at most ``limit`` bytes: the last ones."""

    def __init__(self, limit: int) -> None:
        self.limit = max(0, limit)
        self.buf = bytearray()
        self.dropped = 0

    def add(self, chunk: bytes) -> None:
        self.buf += chunk
        excess = len(self.buf) - self.limit
        if excess > 0:
            del self.buf[:excess]
            self.dropped += excess

    def text(self) -> str:
        return bytes(self.buf).decode("utf-8", errors="replace")


async def _drain(stream: asyncio.StreamReader, tail: _Tail) -> None:
    while chunk := await stream.read(_READ_CHUNK):
        tail.add(chunk)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    # The group may already be empty: that is the outcome we want, not an error.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


async def run_command(
    argv: Sequence[str],
    *,
    timeout: float,  # noqa: ASYNC109 -- the deadline must also kill the process group
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    max_output: int = 64 * 1024,
    kill_grace: float = 2.0,
) -> CommandResult:
    """Run ``argv`` (no shell) and return its result; never raises for the command's sake.

    A missing or non-executable program, or a bad ``cwd``, gives a result with
    ``returncode=None`` and ``error`` set.  On timeout the process group gets
    SIGTERM, then SIGKILL after ``kill_grace`` seconds, and ``timed_out`` is set.
    The deadline covers the output too: a grandchild that keeps the pipe open
    after the command exited is killed with the group when the deadline passes.
    A background child that closed its output and outlives a command which
    finished in time is left alone (a hook may detach on purpose).
    Cancelling the call SIGKILLs the group.
    """
    args = tuple(str(a) for a in argv)
    if not args:
        return CommandResult(args, None, "", 0.0, False, "empty command")
    start = time.monotonic()
    try:
        proc = await asyncio.create_subprocess_exec(
            *args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
        )
    except FileNotFoundError as exc:
        what = "working directory" if cwd is not None and exc.filename == cwd else "command"
        missing = exc.filename if exc.filename is not None else args[0]
        return CommandResult(
            args, None, "", time.monotonic() - start, False, f"{what} not found: {missing}"
        )
    except PermissionError as exc:
        denied = exc.filename if exc.filename is not None else args[0]
        return CommandResult(
            args, None, "", time.monotonic() - start, False, f"permission denied: {denied}"
        )
    except OSError as exc:
        return CommandResult(
            args, None, "", time.monotonic() - start, False, f"cannot run {args[0]}: {exc.strerror}"
        )

    tail = _Tail(max_output)
    assert proc.stdout is not None  # guaranteed by stdout=PIPE
    # start_new_session makes the child its own group leader, so pgid == pid.
    pgid = proc.pid
    drain = asyncio.create_task(_drain(proc.stdout, tail))
    timed_out = False
    try:
        await asyncio.wait_for(asyncio.gather(proc.wait(), asyncio.shield(drain)), timeout)
    except TimeoutError:
        timed_out = True
        _signal_group(pgid, signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), kill_grace)
        # SIGKILL the group even if the leader obeyed SIGTERM: a child may have ignored it.
        # Linux does not reuse a PID while it is still a group's ID, so while any member
        # lives the pgid is ours; once the group is empty, the number would have to wrap
        # around and be taken by a new group leader within the grace period to misfire.
        _signal_group(pgid, signal.SIGKILL)
        await proc.wait()
        # Everything holding the pipe is dead now, so EOF comes promptly.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(drain), kill_grace)
    except BaseException:
        # Cancelled by the caller: leave nothing running behind us.
        _signal_group(pgid, signal.SIGKILL)
        with contextlib.suppress(BaseException):
            await proc.wait()
        raise
    finally:
        if not drain.done():
            drain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await drain
    output = tail.text()
    if tail.dropped:
        output = f"[... {tail.dropped} bytes dropped ...]\n{output}"
    return CommandResult(args, proc.returncode, output, time.monotonic() - start, timed_out)
