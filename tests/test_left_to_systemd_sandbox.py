"""An incident left open for systemd's Restart= is closed when systemd's restart works.

The ladder hands a unit back to systemd when systemd's own Restart= covers how the
ladder's restart failed (a start that timed out, say), and leaves the incident open
for the next failure to continue. If systemd's restart brings the unit up, no failure
comes: the incident stayed open and its alert firing for good (found by bench/soak.py,
seed 1000). The daemon now ends it when it sees the unit active, and at start-up for
incidents a previous daemon left so.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from daemon_sandbox import DAEMON, HOOK_SPEC, hook_url_file, install_daemon, start_listening, until
from receivers import Receiver

from handlers.store import Stamp, Store, boot_id
from unitgen.paths import Scope, paths_for
from unitgen.sandbox import Sandbox

UNIT = "left-to-systemd.service"

SPEC = (
    HOOK_SPEC
    + """
[service.left-to-systemd]
exec = ["/bin/sleep", "infinity"]
restart = {{ policy = "on-failure" }}
recovery = {{ min_uptime = "2s" }}
"""
)


def _seed(db: Path) -> str:
    """What the ladder leaves when it hands the unit to systemd: an open incident whose
    last step is ``systemd-restarting``, its firing alert sent."""
    store = Store.open(db)
    try:
        now = Stamp(time.monotonic(), time.time(), boot_id())
        incident = store.open_incident(
            UNIT,
            source="listener",
            invocation_id="ab" * 16,
            classification="timeout",
            level=1,
            at=now,
        )
        store.record_attempt(
            incident, UNIT, at=now, level=1, action="restart", result="ok", reason="sent"
        )
        store.record_attempt(
            incident,
            UNIT,
            at=now,
            level=1,
            action="verify",
            result="systemd-restarting",
            reason="start timed out; systemd's Restart= restarts it",
        )
        assert store.claim_alert(incident, "restart", "firing", now.wall)
        return incident
    finally:
        store.close()


def _state(db: Path, incident: str) -> tuple[str, str]:
    store = Store.reader(db)
    if store is None:
        return "", ""
    try:
        inc = store.incident(incident)
        return (inc.state, inc.reason) if inc is not None else ("", "")
    finally:
        store.close()


def test_an_incident_left_to_systemd_ends_when_systemd_brings_the_unit_up(
    fresh_user_sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    sb = fresh_user_sandbox
    for key, value in sb.env.items():
        monkeypatch.setenv(key, value)
    db = paths_for(Scope.USER).database
    with Receiver() as receiver:
        url_file = hook_url_file(tmp_path, receiver.url("/hook"))
        install_daemon(sb, tmp_path, specs={"unit.toml": SPEC.format(url_file=url_file)})
        db.parent.mkdir(parents=True, exist_ok=True)
        incident = _seed(db)
        start_listening(sb)
        # The unit is down when the daemon starts: nothing to end yet.
        assert _state(db, incident)[0] == "open"
        # systemd's restart (here: a start) brings it up; nothing fails after it.
        sb.systemctl("start", UNIT, check=True)
        try:
            until(lambda: _state(db, incident)[0] == "recovered", 20, "the incident closed")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{sb.journal(DAEMON, 200)}") from None
        assert "active again" in _state(db, incident)[1]
        try:
            until(lambda: bool(receiver.requests), 20, "the resolved alert")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{sb.journal(DAEMON, 200)}") from None
        body = json.loads(receiver.requests[0].body)
        assert (body["status"], body["incident_id"]) == ("resolved", incident)
        # Nothing restarted it: systemd's start is the only one.
        assert sb.show(UNIT, "NRestarts")["NRestarts"] == "0"
