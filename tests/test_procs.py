"""handlers.procs.run_command: results, bounded output, timeouts that kill the whole group."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import pytest

from handlers.procs import run_command

PY = sys.executable


def _gone(pid: int) -> bool:
    """True when ``pid`` no longer runs (a zombie waiting for its reaper counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    # The state letter follows the parenthesised command name, which may hold spaces.
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def _wait_gone(pid: int, deadline: float = 5.0) -> bool:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if _gone(pid):
            return True
        time.sleep(0.02)
    return _gone(pid)


@pytest.mark.asyncio
async def test_success_captures_stdout_and_stderr() -> None:
    code = "import sys; print('out'); print('err', file=sys.stderr)"
    result = await run_command([PY, "-c", code], timeout=10)
    assert result.returncode == 0
    assert result.ok
    assert not result.timed_out
    assert result.error is None
    assert "out" in result.output_tail and "err" in result.output_tail
    assert result.argv == (PY, "-c", code)
    assert result.duration > 0


@pytest.mark.asyncio
async def test_nonzero_exit_is_reported() -> None:
    result = await run_command([PY, "-c", "import sys; print('bad'); sys.exit(3)"], timeout=10)
    assert result.returncode == 3
    assert not result.ok
    assert "bad" in result.output_tail
    assert "exit code 3" in result.describe()


@pytest.mark.asyncio
async def test_stdin_is_devnull() -> None:
    result = await run_command([PY, "-c", "import sys; print(repr(sys.stdin.read()))"], timeout=10)
    assert result.output_tail.strip() == "''"


@pytest.mark.asyncio
async def test_env_and_cwd_are_passed(tmp_path: Path) -> None:
    code = "import os; print(os.environ['UG_X'], os.getcwd())"
    result = await run_command(
        [PY, "-c", code], timeout=10, env={"UG_X": "hello"}, cwd=str(tmp_path)
    )
    assert result.output_tail.split() == ["hello", str(tmp_path)]


@pytest.mark.asyncio
async def test_no_shell_metacharacters_interpreted(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    result = await run_command(["echo", f"x; touch {marker}", "$(id)"], timeout=10)
    assert result.returncode == 0
    assert result.output_tail.strip() == f"x; touch {marker} $(id)"
    assert not marker.exists()


@pytest.mark.asyncio
async def test_timeout_kills_grandchildren(tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild.pid"
    # The child spawns a sleep (the grandchild), records its pid, then hangs itself.
    code = (
        "import subprocess, sys, time\n"
        "p = subprocess.Popen(['sleep', '300'])\n"
        f"open({str(pidfile)!r}, 'w').write(str(p.pid))\n"
        "print('spawned', flush=True)\n"
        "time.sleep(300)\n"
    )
    started = time.monotonic()
    result = await run_command([PY, "-c", code], timeout=1.5, kill_grace=0.5)
    assert result.timed_out
    assert not result.ok
    assert result.returncode is not None and result.returncode < 0
    assert "spawned" in result.output_tail
    assert time.monotonic() - started < 10
    grandchild = int(pidfile.read_text())
    assert _wait_gone(grandchild), f"grandchild sleep {grandchild} survived the timeout"


@pytest.mark.asyncio
async def test_timeout_escalates_to_sigkill_when_sigterm_ignored() -> None:
    code = (
        "import signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('ready', flush=True)\n"
        "time.sleep(300)\n"
    )
    result = await run_command([PY, "-c", code], timeout=1.0, kill_grace=0.3)
    assert result.timed_out
    assert result.returncode == -9


@pytest.mark.asyncio
async def test_orphan_holding_the_pipe_cannot_hang_us(tmp_path: Path) -> None:
    pidfile = tmp_path / "orphan.pid"
    # The command exits at once but leaves a child that inherits stdout and keeps it open.
    code = (
        "import subprocess\n"
        "p = subprocess.Popen(['sleep', '300'])\n"
        f"open({str(pidfile)!r}, 'w').write(str(p.pid))\n"
    )
    result = await run_command([PY, "-c", code], timeout=1.0, kill_grace=0.3)
    assert result.timed_out
    assert _wait_gone(int(pidfile.read_text()))


@pytest.mark.asyncio
async def test_huge_output_keeps_only_the_tail() -> None:
    code = "import sys\nsys.stdout.write('A' * 5_000_000)\nsys.stdout.write('THE-END')\n"
    result = await run_command([PY, "-c", code], timeout=30, max_output=4096)
    assert result.returncode == 0
    assert result.output_tail.endswith("THE-END")
    assert len(result.output_tail) <= 4096 + 64
    assert "bytes dropped" in result.output_tail


@pytest.mark.asyncio
async def test_undecodable_output_is_replaced_not_raised() -> None:
    code = "import sys; sys.stdout.buffer.write(b'ok \\xff\\xfe done')"
    result = await run_command([PY, "-c", code], timeout=10)
    assert result.output_tail.startswith("ok ") and result.output_tail.endswith(" done")
    assert "\ufffd" in result.output_tail


@pytest.mark.asyncio
async def test_missing_binary_is_a_result_not_an_exception() -> None:
    result = await run_command(["/nonexistent/unitgen-no-such-binary", "-x"], timeout=5)
    assert result.returncode is None
    assert not result.ok
    assert result.error is not None
    assert "not found" in result.error and "unitgen-no-such-binary" in result.error
    assert result.describe() == result.error


@pytest.mark.asyncio
async def test_not_executable_is_a_result(tmp_path: Path) -> None:
    script = tmp_path / "script"
    script.write_text("#!/bin/sh\necho hi\n")
    result = await run_command([str(script)], timeout=5)
    assert result.returncode is None
    assert result.error is not None and "permission denied" in result.error


@pytest.mark.asyncio
async def test_missing_cwd_is_a_result(tmp_path: Path) -> None:
    result = await run_command(["true"], timeout=5, cwd=str(tmp_path / "nope"))
    assert result.returncode is None
    assert result.error is not None and "not found" in result.error


@pytest.mark.asyncio
async def test_empty_argv() -> None:
    result = await run_command([], timeout=5)
    assert result.returncode is None
    assert result.error == "empty command"


@pytest.mark.asyncio
async def test_runs_in_its_own_session() -> None:
    result = await run_command(
        [PY, "-c", "import os; print(os.getsid(0), os.getpid())"], timeout=10
    )
    sid, pid = result.output_tail.split()
    assert sid == pid
    assert int(sid) != os.getsid(0)


@pytest.mark.asyncio
async def test_cancelling_the_caller_kills_the_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild.pid"
    code = (
        "import subprocess, time\n"
        "p = subprocess.Popen(['sleep', '300'])\n"
        f"open({str(pidfile)!r}, 'w').write(str(p.pid))\n"
        "time.sleep(300)\n"
    )
    task = asyncio.create_task(run_command([PY, "-c", code], timeout=60))
    deadline = time.monotonic() + 10
    while not (pidfile.exists() and pidfile.read_text()):
        assert time.monotonic() < deadline, "the child never started its grandchild"
        await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert _wait_gone(int(pidfile.read_text()))
