"""A dependent systemd stopped with its dependency comes back when the ladder brings
the dependency back (handlers/depwait.py).

Units as `unitgen render` makes them, the daemon as its own rendered unit, on a real
user manager. systemd restarts the crashed database itself (Restart=) and takes its
`Requires=` dependent along in the same restart job; when it refuses the database's
start (its start limit), the dependent's start ends with result `dependency` and it
stays inactive, Result=success: nothing failed. The ladder then restarts the database,
and before this fix only the database: the application stayed down for good.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from daemon_sandbox import DAEMON, history, install_daemon, start_listening, until

from unitgen.sandbox import Sandbox

pytestmark = [pytest.mark.sandbox, pytest.mark.timeout(120)]

SPEC = """
[defaults]
hardening = "off"

[service.refdb]
exec = ["/bin/sleep", "infinity"]
restart = { policy = "on-failure", delay = "100ms", burst = 2, interval = "1min" }
recovery = { min_uptime = "0s" }

[service.refapp]
exec = ["/bin/sleep", "infinity"]
requires = ["refdb.service"]
after = ["refdb.service"]
restart = { policy = "on-failure", delay = "100ms", burst = 3, interval = "1min" }
recovery = { min_uptime = "0s" }

[service.refbystander]
exec = ["/bin/sleep", "infinity"]
requires = ["refdb.service"]
after = ["refdb.service"]
restart = { policy = "on-failure", delay = "100ms", burst = 3, interval = "1min" }
recovery = { min_uptime = "0s" }
"""


def _state(sb: Sandbox, unit: str) -> tuple[str, str]:
    got = sb.show(unit, "ActiveState", "Result")
    return got["ActiveState"], got["Result"]


def test_a_dependent_stopped_by_a_refused_restart_is_started_when_its_dependency_is_back(
    fresh_user_sandbox: Sandbox, tmp_path: Path
) -> None:
    sb = fresh_user_sandbox
    install_daemon(sb, tmp_path, specs={"ref.toml": SPEC})
    start_listening(sb)
    sb.systemctl("start", "refapp.service", "refbystander.service", check=True)
    # An operator's stop is not a refused start: it must stay stopped throughout.
    sb.systemctl("stop", "refbystander.service", check=True)
    db_pid = sb.show("refdb.service", "MainPID")["MainPID"]

    # First crash: systemd's own restart (burst 2: the first start and this one).
    sb.kill_main("refdb.service")
    until(lambda: sb.show("refdb.service", "NRestarts")["NRestarts"] == "1", 20, "systemd restart")
    until(lambda: _state(sb, "refdb.service")[0] == "active", 20, "refdb active")
    # Second crash: systemd's restart job is refused (start limit); the ladder takes over.
    assert sb.show("refdb.service", "MainPID")["MainPID"] != db_pid
    sb.kill_main("refdb.service")
    until(
        lambda: any(
            r["action"] == "verify" for i in history(sb, "refdb.service") for r in i["attempts"]
        ),
        30,
        "the ladder's restart of refdb",
    )
    try:
        until(lambda: _state(sb, "refapp.service") == ("active", "success"), 20, "refapp back")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{sb.journal(DAEMON, 200)}") from None
    assert _state(sb, "refdb.service")[0] == "active"
    # Its one ladder run says why it was started.
    (incident,) = history(sb, "refapp.service")
    restarts = [r for r in incident["attempts"] if r["action"] == "restart"]
    assert len(restarts) == 1 and restarts[0]["result"] == "ok", incident
    assert next(r for r in incident["attempts"] if r["action"] == "verify")["result"] == "ok"
    # The operator's stop stayed a stop.
    assert _state(sb, "refbystander.service")[0] == "inactive"
    assert history(sb, "refbystander.service") == []


def test_a_restart_of_a_dependency_restarts_the_active_units_that_require_it(
    user_sandbox: Sandbox,
) -> None:
    """Why the ladder's restart-with-dependencies level leaves a shared dependency alone
    (handlers/recovery/steps.py): restarting it restarts its other, healthy clients."""
    sb = user_sandbox
    units = {
        "shareddb.service": "[Service]\nExecStart=/bin/sleep infinity\n",
        "client1.service": (
            "[Unit]\nRequires=shareddb.service\nAfter=shareddb.service\n"
            "[Service]\nExecStart=/bin/sleep infinity\n"
        ),
        "client2.service": (
            "[Unit]\nRequires=shareddb.service\nAfter=shareddb.service\n"
            "[Service]\nExecStart=/bin/sleep infinity\n"
        ),
    }
    sb.install_units(units)
    try:
        sb.systemctl("start", "client1.service", "client2.service", check=True)
        before = sb.show("client2.service", "MainPID", "InvocationID")
        sb.systemctl("restart", "shareddb.service", check=True)
        after = sb.show("client2.service", "MainPID", "InvocationID", "ActiveState")
        assert after["ActiveState"] == "active"
        assert after["InvocationID"] != before["InvocationID"]
        assert after["MainPID"] != before["MainPID"]
    finally:
        sb.systemctl("stop", *units)
