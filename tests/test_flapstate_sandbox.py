"""A flapping alert firing at a real receiver is resolved by the restarted daemon.

`unitgen watch` runs as its rendered unit in a user sandbox. A service with
``alert_on = { restarts = 3, within = "10s" }`` crashes three times (systemd
restarts it each time) and then stays up: one firing alert reaches a real webhook
receiver. The daemon is then restarted (``systemctl restart``, or ``kill -9`` of its
main process and systemd's ``Restart=always``), losing the window timer it held in
memory. The new daemon takes the alert up from ``<state_dir>/flapping.json`` and,
a window after the alert was sent, sends ``resolved`` for the same incident.
Without the state file the alert stays firing at the receiver for good.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from daemon_sandbox import DAEMON, HOOK_SPEC, hook_url_file, install_daemon, start_listening, until
from receivers import Receiver

from handlers.flapstate import FILE_NAME
from unitgen.paths import Scope, paths_for
from unitgen.sandbox import Sandbox

UNIT = "flappy.service"
WINDOW = 10.0  # seconds; short enough for a test, long enough to restart the daemon in

SPEC = (
    HOOK_SPEC
    + """
[service.flappy]
exec = ["/bin/sh", "-c", "{script}"]
restart = {{ policy = "on-failure", delay = "200ms", burst = 10, interval = "1min" }}
alert_on = {{ restarts = 3, within = "{window:g}s" }}
"""
)


def _firing_on_disk(state: Path) -> str:
    try:
        data = json.loads((state / FILE_NAME).read_text())
    except (OSError, ValueError):
        return ""
    return str(data.get("units", {}).get(UNIT, {}).get("incident", ""))


@pytest.mark.parametrize("how", ["restart", "kill-9"])
def test_a_firing_flapping_alert_is_resolved_after_the_daemon_restarts(
    fresh_user_sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, how: str
) -> None:
    sb = fresh_user_sandbox
    for key, value in sb.env.items():
        monkeypatch.setenv(key, value)
    state = paths_for(Scope.USER).state_dir
    counter = tmp_path / "starts"
    # Exits 3 on its first three runs, then stays up: three crashes systemd restarts.
    script = (
        f"n=$(cat {counter} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {counter}; "
        "[ $n -le 3 ] && exit 3; exec sleep infinity"
    )
    with Receiver() as receiver:
        url_file = hook_url_file(tmp_path, receiver.url("/hook"))
        spec = SPEC.format(url_file=url_file, script=script, window=WINDOW)
        install_daemon(sb, tmp_path, specs={"flappy.toml": spec})
        start_listening(sb)
        old_pid = sb.show(DAEMON, "MainPID")["MainPID"]
        sb.systemctl("start", UNIT, check=False)  # the first run fails at once
        try:
            (firing,) = receiver.wait_for(1, timeout=30)
            # Written when it fired, before the daemon goes away.
            until(lambda: bool(_firing_on_disk(state)), 10, "the firing alert on disk")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{sb.journal(DAEMON, 200)}") from None
        fired = json.loads(firing.body)
        assert (fired["status"], fired["level"]) == ("firing", "flapping")
        assert _firing_on_disk(state) == fired["incident_id"]

        if how == "restart":
            sb.systemctl("restart", DAEMON, check=True)
        else:
            sb.systemctl("kill", "--signal=KILL", DAEMON, check=True)
        # The old daemon's window had not ended: it sent nothing more before it went.
        assert len(receiver.requests) == 1, [r.body for r in receiver.requests]
        until(
            lambda: sb.show(DAEMON, "MainPID")["MainPID"] not in ("0", old_pid),
            30,
            "the daemon running again",
        )
        assert sb.show(UNIT, "SubState")["SubState"] == "running"

        try:
            receiver.wait_for(2, timeout=WINDOW + 30)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{sb.journal(DAEMON, 200)}") from None
        resolved = json.loads(receiver.requests[1].body)
        assert resolved["status"] == "resolved"
        assert resolved["incident_id"] == fired["incident_id"]
        assert resolved["unit"] == UNIT
        # Not before the window since the alert was sent.
        assert resolved["ended_at"] - fired_at(fired) >= WINDOW - 0.5
        until(lambda: not _firing_on_disk(state), 10, "the resolved alert on disk")
        # Nothing more: one firing, one resolved.
        with pytest.raises(AssertionError, match="expected 3 requests, got 2"):
            receiver.wait_for(3, timeout=2)
        sb.systemctl("stop", UNIT)


def fired_at(body: dict[str, object]) -> float:
    """When the firing alert went out: its last crash (it is sent with that crash)."""
    digest = body["digest"]
    assert isinstance(digest, list)
    return float(digest[-1]["at"])
