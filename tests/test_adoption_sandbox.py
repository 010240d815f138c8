"""``kill -9`` of ``unitgen watch`` at each step of an incident, on a real user manager.

The daemon is the rendered ``unitgen-watch.service``; a drop-in gives it the
test-only pause point (handlers/testhook.py), so it stops at the named step of
its ladder and writes a marker file, and the test kills it there with SIGKILL.
Then the next owner must resume the incident:

* ``daemon``: systemd restarts the daemon (its unit has Restart=always); its
  reconciliation adopts the incident;
* ``onfailure``: systemd does not restart the daemon (Restart=no in the
  drop-in), so its unit fails; the daemon's own
  ``OnFailure=unitgen-recover@unitgen-watch.service`` (its marker is gone with
  it) runs the ladder on the daemon, which starts again and adopts;
* ``both``: the watched unit has OnFailure= too, and systemd restarts the daemon.

The watched unit's own ``OnFailure=unitgen-recover@%n.service`` is skipped by its
condition in every case: it failed while the daemon listened, and the daemon had
taken it over (docs/listener.md, "OnFailure= while the daemon is up").

Either way: the unit is active again, its one incident is closed (recovered)
once, with one ``resume`` step saying "resumed after owner died", and exactly
one restart attempt is counted and made (two starts of the unit in all).
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from daemon_sandbox import DAEMON, UNITGEN, install_daemon
from daemon_sandbox import lines as _lines
from daemon_sandbox import until as _until
from test_watch_sandbox import _paths, _policy

from handlers.store import Store
from unitgen.paths import Paths
from unitgen.sandbox import Sandbox

UNIT = "victim.service"
RECOVER = f"unitgen-recover@{UNIT}.service"


def _incident_closed(paths: Paths) -> bool:
    store = Store.open(paths.database)
    try:
        last = store.last_incident(UNIT)
        return last is not None and last.state != "open"
    finally:
        store.close()


@pytest.mark.parametrize("owner", ["daemon", "onfailure", "both"])
@pytest.mark.parametrize("step", ["backing-off", "restarting", "verifying"])
def test_kill_9_of_the_daemon_at_each_step_is_resumed_by_the_next_owner(
    fresh_user_sandbox: Sandbox,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    step: str,
    owner: str,
) -> None:
    sb = fresh_user_sandbox
    paths = _paths(sb, monkeypatch)
    install_daemon(sb, tmp_path)
    marker = tmp_path / "paused"
    dropin = (
        f"[Service]\nEnvironment=UNITGEN_TEST_PAUSE_AT={step}:1 UNITGEN_TEST_PAUSE_FILE={marker}\n"
    )
    if owner == "onfailure":
        dropin += "Restart=no\n"
    starts = tmp_path / "starts"
    on_failure = "OnFailure=unitgen-recover@%n.service\n" if owner != "daemon" else ""
    _policy(
        paths,
        UNIT,
        max_attempts=3,
        window=600.0,
        min_uptime=1.0,
        backoff={"base": 1.0, "factor": 1.0, "max": 1.0, "jitter": 0.0},
    )
    sb.install_units(
        {
            f"{DAEMON}.d/pause.conf": dropin,
            UNIT: f"[Unit]\n{on_failure}[Service]\n"
            f"ExecStart=/bin/sh -c 'echo start >> {starts}; exec sleep infinity'\n",
        }
    )
    sb.systemctl("start", UNIT, check=True)
    sb.systemctl("start", DAEMON, check=True)
    first = sb.main_pid(DAEMON)
    sb.kill_main(UNIT)
    _until(marker.exists, 30, f"the daemon paused at {step}")
    pid, paused_at, paused_unit = marker.read_text().split()
    assert (int(pid), paused_at, paused_unit) == (first, step, UNIT)
    if step == "verifying":
        # RestartUnit went out before the pause: the unit comes up with nobody watching.
        sb.wait_for(UNIT, "active", 30)
    else:
        assert sb.show(UNIT, "ActiveState")["ActiveState"] == "failed"
    if owner != "daemon":
        # Skipped: the daemon was listening when the unit failed, and took it over.
        sb.wait_for(RECOVER, "no", 30, prop="ConditionResult")
    sb.systemctl("kill", "--signal=KILL", DAEMON, check=True)
    if owner == "onfailure":
        # Not systemd's restart: the daemon's own recovery unit ran and restarted it.
        sb.wait_for(f"unitgen-recover@{DAEMON}.service", "yes", 30, prop="ConditionResult")
    sb.wait_for(
        DAEMON,
        lambda p: p.get("ActiveState") == "active" and p.get("MainPID") not in ("0", pid),
        30,
    )
    if owner == "onfailure":
        assert sb.show(DAEMON, "NRestarts")["NRestarts"] == "0"

    sb.wait_for(UNIT, "active", 60)
    _until(lambda: _incident_closed(paths), 60, "the incident closed")
    if owner != "daemon":
        props = sb.show(RECOVER, "ConditionResult", "InvocationID")
        assert props == {"ConditionResult": "no", "InvocationID": ""}, props
    store = Store.open(paths.database)
    try:
        incidents = store.incidents(UNIT)
        assert [i.state for i in incidents] == ["recovered"], sb.journal(DAEMON, 80)
        rows = store.attempts(incidents[0].id)
        triggers = store.triggers(UNIT)
    finally:
        store.close()
    actions = [(r.action, r.result) for r in rows]
    resume = [r for r in rows if r.action == "resume"]
    assert len(resume) == 1, actions
    assert resume[0].reason.startswith("resumed after owner died"), resume[0].reason
    assert [r.result for r in rows if r.action == "restart"] == ["ok"], actions
    assert "resumed" in [t[3] for t in triggers], triggers
    # One counted attempt, made once: the first start and the ladder's restart.
    assert _lines(starts) == ["start", "start"], sb.journal(DAEMON, 80)
    status = subprocess.run(
        [str(UNITGEN), "status", "--json", "--user", UNIT],
        capture_output=True,
        text=True,
        env={**sb.env, "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert '"attempts_in_window": 1' in status.stdout, status.stdout + status.stderr
    # Nothing more happens: no second adoption, no further restart.
    time.sleep(1.5)
    assert _lines(starts) == ["start", "start"]
    assert sb.show(UNIT, "ActiveState")["ActiveState"] == "active"


def test_kill_9_in_a_later_back_off_keeps_its_deadline_and_the_count(
    fresh_user_sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Killed in the back-off before attempt 2: the restarted daemon waits out the rest
    of that back-off (measured from attempt 1, in the history) and counts 2, not 3."""
    sb = fresh_user_sandbox
    paths = _paths(sb, monkeypatch)
    install_daemon(sb, tmp_path)
    marker = tmp_path / "paused"
    starts = tmp_path / "starts"
    delay = 3.0
    _policy(
        paths,
        UNIT,
        max_attempts=3,
        window=600.0,
        min_uptime=1.0,
        backoff={"base": delay, "factor": 1.0, "max": delay, "jitter": 0.0},
    )
    sb.install_units(
        {
            f"{DAEMON}.d/pause.conf": "[Service]\nEnvironment=UNITGEN_TEST_PAUSE_AT=backing-off:2"
            f" UNITGEN_TEST_PAUSE_FILE={marker}\n",
            # The second start (the ladder's first restart) fails; the others stay up.
            UNIT: "[Service]\nExecStart=/bin/sh -c 'date +%%s.%%N >> "
            f"{starts}; [ $(wc -l < {starts}) -eq 2 ] && exit 3; exec sleep infinity'\n",
        }
    )
    sb.systemctl("start", UNIT, check=True)
    sb.systemctl("start", DAEMON, check=True)
    sb.kill_main(UNIT)
    _until(marker.exists, 30, "the daemon paused in the back-off before attempt 2")
    pid = marker.read_text().split()[0]
    sb.systemctl("kill", "--signal=KILL", DAEMON, check=True)
    sb.wait_for(
        DAEMON,
        lambda p: p.get("ActiveState") == "active" and p.get("MainPID") not in ("0", pid),
        30,
    )
    sb.wait_for(UNIT, "active", 60)
    _until(lambda: _incident_closed(paths), 60, "the incident closed")
    times = [float(t) for t in _lines(starts)]
    assert len(times) == 3, (times, sb.journal(DAEMON, 80), sb.journal(UNIT, 40))
    # The deadline runs from the recorded attempt, taken just before the first restart
    # was issued, and so a few ms before that restart's process wrote its line: allow
    # that latency, far below what a resumed run that ignored the deadline would show.
    assert times[2] - times[1] >= delay - 0.25, times
    store = Store.open(paths.database)
    try:
        incidents = store.incidents(UNIT)
        assert [i.state for i in incidents] == ["recovered"]
        rows = store.attempts(incidents[0].id)
    finally:
        store.close()
    assert [r.result for r in rows if r.action == "restart"] == ["failed", "ok"]
    assert [r.action for r in rows].count("resume") == 1
