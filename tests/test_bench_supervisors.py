"""bench/bench_supervisors.py: the child-subreaper harness and the configs (no timing here)."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import bench_supervisors as bs


def _ppid(pid: int) -> int | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    return int(status.split("PPid:")[1].split()[0])


def _state(pid: int) -> str | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    return status.split("State:")[1].split()[0]


def _wait(predicate: object, timeout: float = 10.0) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(0.01)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl and /proc are Linux")
def test_harness_adopts_and_reaps_orphans_and_leaves_nothing(tmp_path: Path) -> None:
    """The monit case: a started program that forks a daemon and exits."""
    pidfile = tmp_path / "orphan.pid"
    # The sh exits at once; its background sleep is orphaned, as monit's programs are.
    # A second, long-lived direct child stands in for monit itself.
    daemonizing = ["/bin/sh", "-c", f"sleep 300 & echo $! > {pidfile}"]
    parent = ["/bin/sleep", "300"]
    harness = bs.Harness([parent, daemonizing], tmp_path / "out")
    try:
        _wait(lambda: pidfile.exists() and pidfile.read_text().strip())
        orphan = int(pidfile.read_text())
        # Orphans land on the subreaper harness, not on PID 1.
        _wait(lambda: _ppid(orphan) == harness.proc.pid)
        os.kill(orphan, signal.SIGKILL)
        # Reaped at once: gone from /proc, never lingering as a zombie.
        _wait(lambda: _state(orphan) is None, timeout=5)
        # The long-lived direct child is untouched by the reaping.
        assert _state(harness.pids[0]) not in (None, "Z")
    finally:
        report = harness.stop()
    assert harness.proc.returncode == 0, report
    assert "reaped 1 orphans" in report
    assert "0 children left" in report
    assert all(_state(pid) is None for pid in harness.pids)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl and /proc are Linux")
def test_harness_teardown_kills_adopted_orphans(tmp_path: Path) -> None:
    pidfile = tmp_path / "orphan.pid"
    harness = bs.Harness(
        [["/bin/sleep", "300"], ["/bin/sh", "-c", f"sleep 300 & echo $! > {pidfile}"]],
        tmp_path / "out",
    )
    try:
        _wait(lambda: pidfile.exists() and pidfile.read_text().strip())
        orphan = int(pidfile.read_text())
        _wait(lambda: _ppid(orphan) == harness.proc.pid)
    finally:
        report = harness.stop()
    assert harness.proc.returncode == 0, report
    assert _state(orphan) is None
    assert "0 children left" in report


def test_configs_bind_nothing_but_a_unix_socket(tmp_path: Path) -> None:
    stamp = tmp_path / "stamp"
    monitrc = bs.monit_config(tmp_path, stamp)
    assert "set daemon 1\n" in monitrc
    assert "httpd" not in monitrc  # monit's only listener
    assert f"with pidfile {tmp_path}/stamp-monit.pid" in monitrc
    conf = bs.supervisord_config(tmp_path, stamp)
    assert "[unix_http_server]" in conf
    assert "inet_http_server" not in conf
    assert "autorestart=true\n" in conf
    assert f"command={stamp} {tmp_path}/supervisord.fifo" in conf
