"""A "resolved" alert whose sender died waiting out min_uptime is sent by the next daemon.

The listener sends "resolved" once a recovered unit has stayed up ``min_uptime``.
A daemon killed within that wait (kill -9, a watchdog kill) used to take the
pending alert with it: the incident was closed as recovered in the history,
the alert stayed firing at its receiver for good. Found by bench/soak.py.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from daemon_sandbox import DAEMON, HOOK_SPEC, hook_url_file, install_daemon, start_listening, until
from receivers import Receiver

from handlers.store import Store
from unitgen.paths import Scope, paths_for
from unitgen.sandbox import Sandbox

UNIT = "orphan-alert.service"

SPEC = (
    HOOK_SPEC
    + """
[service.orphan-alert]
exec = ["/bin/sleep", "infinity"]
restart = {{ policy = "no" }}
recovery = {{ min_uptime = "4s", backoff = {{ base = "0s" }} }}
"""
)


def _statuses(receiver: Receiver) -> list[str]:
    out = []
    for rec in receiver.requests:
        try:
            out.append(str(json.loads(rec.body).get("status", "?")))
        except ValueError:
            out.append("?")
    return out


def _recovered(db: Path) -> bool:
    store = Store.reader(db)
    if store is None:
        return False
    try:
        last = store.last_incident(UNIT)
        return last is not None and last.state == "recovered"
    finally:
        store.close()


def test_resolved_alert_survives_a_daemon_killed_during_min_uptime(
    fresh_user_sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    sb = fresh_user_sandbox
    for key, value in sb.env.items():
        monkeypatch.setenv(key, value)
    db = paths_for(Scope.USER).database
    with Receiver() as receiver:
        url_file = hook_url_file(tmp_path, receiver.url("/hook"))
        install_daemon(sb, tmp_path, specs={"unit.toml": SPEC.format(url_file=url_file)})
        start_listening(sb)
        sb.systemctl("start", UNIT, check=True)
        first_daemon = sb.main_pid(DAEMON)
        sb.kill_main(UNIT)
        receiver.wait_for(1, timeout=20)
        until(lambda: _recovered(db), 20, "the incident closed as recovered")
        # Inside the 4 s min_uptime wait: the pending "resolved" dies with the daemon.
        sb.systemctl("kill", "--signal=KILL", DAEMON, check=True)
        killed_at = time.monotonic()
        sb.wait_for(
            DAEMON,
            lambda p: (
                p.get("ActiveState") == "active"
                and p.get("MainPID") not in ("0", str(first_daemon))
            ),
            30,
        )
        assert time.monotonic() - killed_at < 4, "the kill did not land within min_uptime"
        try:
            until(lambda: "resolved" in _statuses(receiver), 20, "the resolved alert")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{sb.journal(DAEMON, 400)}") from None
        assert _statuses(receiver).count("resolved") == 1, _statuses(receiver)
        assert sb.show(UNIT, "SubState")["SubState"] == "running"


def test_resolved_alert_goes_out_after_min_uptime_with_nothing_else_happening(
    fresh_user_sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The listener's "resolved" after min_uptime used to be queued and sent only when
    the next incident of any unit ended: on a quiet host, never."""
    sb = fresh_user_sandbox
    for key, value in sb.env.items():
        monkeypatch.setenv(key, value)
    with Receiver() as receiver:
        url_file = hook_url_file(tmp_path, receiver.url("/hook"))
        install_daemon(sb, tmp_path, specs={"unit.toml": SPEC.format(url_file=url_file)})
        start_listening(sb)
        sb.systemctl("start", UNIT, check=True)
        sb.kill_main(UNIT)
        receiver.wait_for(1, timeout=20)
        # min_uptime is 4 s; the alert goes out right after it.
        until(lambda: "resolved" in _statuses(receiver), 15, "the resolved alert")
        assert _statuses(receiver) == ["firing", "resolved"], _statuses(receiver)


def _by_incident(receiver: Receiver) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for rec in receiver.requests:
        body = json.loads(rec.body)
        out.setdefault(str(body["incident_id"]), []).append(str(body["status"]))
    return out


def test_a_new_incident_resolves_the_recovered_one_whose_wait_was_cut_short(
    fresh_user_sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The unit stays up past min_uptime but nobody is left to say so (the daemon was
    stopped in the wait); its next failure, handled by the OnFailure= path, opens a new
    incident, and that ends the old one: "resolved" goes out for it."""
    sb = fresh_user_sandbox
    for key, value in sb.env.items():
        monkeypatch.setenv(key, value)
    db = paths_for(Scope.USER).database
    with Receiver() as receiver:
        url_file = hook_url_file(tmp_path, receiver.url("/hook"))
        install_daemon(sb, tmp_path, specs={"unit.toml": SPEC.format(url_file=url_file)})
        start_listening(sb)
        sb.systemctl("start", UNIT, check=True)
        sb.kill_main(UNIT)
        receiver.wait_for(1, timeout=20)
        until(lambda: _recovered(db), 20, "the incident closed as recovered")
        recovered_at = time.monotonic()
        sb.systemctl("stop", DAEMON, check=True)
        assert time.monotonic() - recovered_at < 4, "the stop did not land within min_uptime"
        first = next(iter(_by_incident(receiver)))
        assert _by_incident(receiver) == {first: ["firing"]}
        # Past min_uptime (4 s) since the recovery: the next failure is a new incident.
        until(lambda: time.monotonic() - recovered_at > 5, 10, "min_uptime passed")
        sb.kill_main(UNIT)
        until(lambda: len(_by_incident(receiver)) == 2, 30, "the new incident's alert")
        until(lambda: "resolved" in _by_incident(receiver)[first], 20, "the old one resolved")
        assert _by_incident(receiver)[first] == ["firing", "resolved"], _by_incident(receiver)
