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
    install_daemon,
    lines,
    until,
    write_policy,
)
from sandboxlib import start_sandbox

from unitgen.paths import Scope
from unitgen.sandbox import Sandbox


def _slow_second_start(starts: Path) -> str:
    """Fails 0.2 s after its first start; the second start takes 2 s and then stays up."""
    return (
        "[Unit]\nOnFailure=unitgen-recover@%n.service\n[Service]\n"
        f"ExecStartPre=/bin/sh -c 'echo start >> {starts}; "
        f'[ "$(wc -l < {starts})" -ge 2 ] && sleep 2; true\'\n'
        f'ExecStart=/bin/sh -c \'[ "$(wc -l < {starts})" -ge 2 ] && exec sleep infinity; '
        "sleep 0.2; exit 3'\n"
    )


def _restart_bus_while_the_ladder_waits(sb: Sandbox, unit: str, starts: Path) -> None:
    # The ladder has restarted the unit and waits for it to come up (ExecStartPre
    # takes 2 s): the bus goes away under that wait, and under the OnFailure= unit's
    # hand-off call.
    until(lambda: len(lines(starts)) >= 2, 30, "the ladder's restart")
    bus_pid = sb.main_pid("dbus.service")
    sb.systemctl("restart", "dbus.service", check=True)
    assert sb.main_pid("dbus.service") != bus_pid
    restarted = time.monotonic()
    sb.wait_for(unit, "active", 10)
    # The wait goes on over the new connection, and the ladder closes the incident
    # long before its 90 s start timeout.
    until(
        lambda: (
            bool(incidents := history(sb, unit))
            and all(i.get("state") != "open" for i in incidents)
        ),
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
    # One failure, one restart by the ladder: nothing was restarted twice.
    assert len(lines(starts)) == 2, journal


@pytest.mark.sandbox
@pytest.mark.system
def test_system_bus_restart_while_the_ladder_waits_does_not_stall_the_incident(
    tmp_path: Path,
) -> None:
    sb = start_sandbox(Scope.SYSTEM, share=[REPO, tmp_path])
    try:
        unit = "busgap.service"
        starts = tmp_path / "starts"
        write_policy(sb, unit, max_attempts=5, window=600.0, min_uptime=0.5)
        install_daemon(sb, tmp_path, {unit: _slow_second_start(starts)})
        sb.systemctl("start", DAEMON, check=True)
        sb.systemctl("start", unit, check=True)
        _restart_bus_while_the_ladder_waits(sb, unit, starts)
    finally:
        sb.close()


def test_session_bus_restart_while_the_ladder_waits_does_not_stall_the_incident(
    fresh_user_sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The same on the user manager, whose session bus is its own dbus.socket/dbus.service."""
    from test_watch_sandbox import _paths, _policy

    sb = fresh_user_sandbox
    paths = _paths(sb, monkeypatch)
    install_daemon(sb, tmp_path)
    unit = "busgap.service"
    starts = tmp_path / "starts"
    _policy(paths, unit, max_attempts=5, window=600.0, min_uptime=0.5)
    sb.install_units({unit: _slow_second_start(starts)})
    sb.systemctl("start", DAEMON, check=True)
    sb.systemctl("start", unit, check=True)
    _restart_bus_while_the_ladder_waits(sb, unit, starts)
