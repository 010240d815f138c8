"""``unitgen sandbox``: runs CMD against the sandbox, returns its status, cleans up on signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sandboxlib

from unitgen.paths import Scope
from unitgen.sandbox import probe

UNITGEN = [sys.executable, "-m", "unitgen"]


@pytest.fixture(autouse=True)
def _need_sandbox() -> None:
    reason = probe(Scope.USER)
    if reason:
        sandboxlib.unavailable(reason)


def _run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*UNITGEN, "sandbox", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def test_cmd_reaches_user_manager_and_exit_code_passes_through() -> None:
    res = _run("--", "sh", "-c", "systemctl --user is-system-running; exit 7")
    assert res.returncode == 7, res.stderr
    assert res.stdout.strip() in ("running", "degraded")


def test_signal_death_of_cmd_is_128_plus_signal() -> None:
    res = _run("--", "sh", "-c", "kill -TERM $$")
    assert res.returncode == 128 + signal.SIGTERM


def test_system_cmd_reaches_pid1() -> None:
    if probe(Scope.SYSTEM):
        sandboxlib.unavailable(str(probe(Scope.SYSTEM)))
    res = _run("--system", "--", "sh", "-c", "systemctl is-system-running; cat /proc/1/comm")
    assert res.returncode == 0, res.stderr
    state, comm = res.stdout.split()
    assert state in ("running", "degraded") and comm == "systemd"


def test_usage_errors_exit_2() -> None:
    assert _run().returncode == 2
    assert _run("--shell", "--", "true").returncode == 2


def _start_kept(*args: str) -> tuple[subprocess.Popen[str], dict[str, object]]:
    proc = subprocess.Popen(
        [*UNITGEN, "sandbox", "--json", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, proc.stderr.read() if proc.stderr else ""
    return proc, json.loads(line)


def _wait_gone(paths: list[Path], pids: list[int], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(p.exists() for p in paths) and not any(
            Path(f"/proc/{pid}").exists() for pid in pids
        ):
            return
        time.sleep(0.02)
    left = [str(p) for p in paths if p.exists()] + [
        str(p) for p in pids if Path(f"/proc/{p}").exists()
    ]
    raise AssertionError(f"left behind: {left}")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_to_unitgen_tears_down(sig: signal.Signals) -> None:
    proc, info = _start_kept("--", "sleep", "600")
    root = Path(str(info["root"]))
    init = int(str(info["init_pid"]))
    cgroups = list(Path("/sys/fs/cgroup").glob(f"*/{root.name}"))
    assert root.exists() and cgroups
    proc.send_signal(sig)
    assert proc.wait(timeout=30) == 128 + sig
    proc.stdout.close()  # type: ignore[union-attr]
    proc.stderr.close()  # type: ignore[union-attr]
    _wait_gone([root, *cgroups], [init], timeout=1)


def test_sigkill_of_unitgen_still_kills_the_namespace() -> None:
    proc, info = _start_kept("--keep")
    root = Path(str(info["root"]))
    init = int(str(info["init_pid"]))
    proc.kill()
    proc.wait(timeout=10)
    proc.stdout.close()  # type: ignore[union-attr]
    proc.stderr.close()  # type: ignore[union-attr]
    _wait_gone([], [init])  # PR_SET_PDEATHSIG chain: unshare, then the namespace
    from unitgen.sandbox import reap_stale

    # Any sandbox start reaps (other test processes may get there first).
    reap_stale()
    assert not root.exists()
    assert not list(Path("/sys/fs/cgroup").glob(f"*/{root.name}"))
    assert os.path.exists("/proc/self")


def test_shell_reads_commands_and_returns_their_status() -> None:
    res = subprocess.run(
        [*UNITGEN, "sandbox", "--shell"],
        input="systemctl --user is-system-running\nexit 3\n",
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SHELL": "/bin/bash"},
        check=False,
    )
    assert res.returncode == 3, res.stderr
    assert res.stdout.strip().splitlines()[-1] in ("running", "degraded")
