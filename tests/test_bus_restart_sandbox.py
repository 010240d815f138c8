"""The bus daemon restarted in the middle of an incident, on a real manager.

Restarting dbus.service ends every connection to it, the daemon's and the
OnFailure= unit's alike, while systemd (and the incident it is in) carries on;
systemd itself reconnects to the new bus a moment later.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from daemon_sandbox import (
    DAEMON,
    REPO,
    history,
    install_system_daemon,
    lines,
    until,
    write_policy,
)
from sandboxlib import start_sandbox

from unitgen.paths import Scope
from unitgen.sandbox import Sandbox


def _flaky_unit(starts: Path) -> str:
    """Fails on its first two starts, runs from the third on."""
    return (
        "[Unit]\nOnFailure=unitgen-recover@%n.service\n[Service]\n"
        f"ExecStart=/bin/sh -c 'echo start >> {starts}; "
        f'[ "$(wc -l < {starts})" -ge 3 ] && exec sleep infinity; sleep 0.2; exit 3\'\n'
    )


def _restart_bus_in_a_backoff(sb: Sandbox, unit: str, starts: Path) -> None:
    # The second ladder attempt waits out a 3 s back-off: the bus goes away in it.
    until(lambda: len(lines(starts)) >= 2, 30, "the ladder's first restart")
    sb.wait_for(unit, "failed", 10)
    bus_pid = sb.main_pid("dbus.service")
    sb.systemctl("restart", "dbus.service", check=True)
    assert sb.main_pid("dbus.service") != bus_pid
    restarted = time.monotonic()
    # The incident goes on over the new connection: the back-off ends, the third
    # start runs and stays up, and the ladder closes the incident.
    until(lambda: len(lines(starts)) >= 3, 20, "the restart after the back-off")
    sb.wait_for(unit, "active", 10)
    until(
        lambda: all(i.get("state") != "open" for i in history(sb, unit)),
        20,
        "every incident closed",
    )
    assert time.monotonic() - restarted < 20
    # No OnFailure= unit is left hanging on the dead connection.
    recover = f"unitgen-recover@{unit}.service"
    until(
        lambda: sb.show(recover, "ActiveState")["ActiveState"] != "activating",
        30,
        "the OnFailure= unit finished",
    )
    journal = sb.journal(DAEMON, 400)
    assert "no reply in" not in journal, journal
    assert "Traceback" not in journal, journal
    assert "no reply in" not in sb.journal(recover, 200), sb.journal(recover, 200)
    assert len(lines(starts)) == 3, journal


@pytest.mark.sandbox
@pytest.mark.system
def test_system_bus_restart_during_a_backoff_does_not_stall_the_incident(
    tmp_path: Path,
) -> None:
    sb = start_sandbox(Scope.SYSTEM, share=[REPO, tmp_path])
    try:
        unit = "busgap.service"
        starts = tmp_path / "starts"
        write_policy(
            sb,
            unit,
            max_attempts=5,
            window=600.0,
            min_uptime=0.5,
            backoff={"base": 3.0, "factor": 1.0, "max": 3.0, "jitter": 0.0},
        )
        install_system_daemon(sb, tmp_path, {unit: _flaky_unit(starts)})
        sb.systemctl("start", DAEMON, check=True)
        sb.systemctl("start", unit, check=True)
        _restart_bus_in_a_backoff(sb, unit, starts)
    finally:
        sb.close()
