"""`unitgen watch` as the real Type=notify service rendered from units/unitgen-watch.toml."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from daemon_sandbox import install_daemon
from daemon_sandbox import lines as _lines
from daemon_sandbox import until as _until

from handlers.store import Store
from unitgen.paths import Paths, Scope, paths_for
from unitgen.sandbox import Sandbox

REPO = Path(__file__).resolve().parent.parent
UNITGEN = Path(sys.executable).with_name("unitgen")
DAEMON = "unitgen-watch.service"


def _paths(sb: Sandbox, monkeypatch: pytest.MonkeyPatch) -> Paths:
    for key, value in sb.env.items():
        monkeypatch.setenv(key, value)
    return paths_for(Scope.USER)


def _policy(paths: Paths, unit: str, **recovery: Any) -> None:
    paths.policy_dir.mkdir(parents=True, exist_ok=True)
    body: dict[str, Any] = {"unit": unit, "version": 1}
    if recovery:
        body["recovery"] = recovery
    (paths.policy_dir / f"{unit}.json").write_text(json.dumps(body))


def test_daemon_is_notify_ready_only_when_subscribed_and_the_onfailure_unit_is_skipped(
    fresh_user_sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    sb = fresh_user_sandbox
    paths = _paths(sb, monkeypatch)
    install_daemon(sb, tmp_path)
    unit = "handed.service"
    starts = tmp_path / "starts"
    _policy(paths, unit)
    sb.install_units(
        {
            unit: "[Unit]\nOnFailure=unitgen-recover@%n.service\n[Service]\n"
            f"ExecStart=/bin/sh -c 'echo start >> {starts}; exec sleep infinity'\n"
        }
    )
    sb.systemctl("start", unit, check=True)
    # Type=notify: `start` returns only after READY=1, which comes after Subscribe().
    sb.systemctl("start", DAEMON, check=True)
    props = sb.show(DAEMON, "ActiveState", "StatusText", "WatchdogUSec", "Type")
    assert props["ActiveState"] == "active", sb.journal(DAEMON)
    assert props["StatusText"].startswith("watching "), props
    assert props["WatchdogUSec"] == "30s"
    sb.kill_main(unit)
    _until(lambda: len(_lines(starts)) >= 2, 30, "restart")
    sb.wait_for(unit, "active", 10)
    # The daemon listens (its marker exists): the OnFailure= unit was skipped by its
    # condition, without a process, and the listener's incident is the only one.
    recover = "unitgen-recover@handed.service.service"
    sb.wait_for(recover, "no", 10, prop="ConditionResult")
    assert sb.show(recover, "InvocationID") == {"InvocationID": ""}
    assert "skipped because of an unmet condition" in sb.journal(recover, 100)
    store = Store.open(paths.database)
    try:
        assert [i.source for i in store.incidents(unit)] == ["listener"]
    finally:
        store.close()
    assert _lines(starts) == ["start", "start"], sb.journal(DAEMON, 80)


def test_watchdog_pings_keep_the_daemon_alive(fresh_user_sandbox: Sandbox, tmp_path: Path) -> None:
    sb = fresh_user_sandbox
    install_daemon(sb, tmp_path, watchdog="1s")
    sb.systemctl("start", DAEMON, check=True)
    pid = sb.main_pid(DAEMON)
    # Three watchdog periods: without WATCHDOG=1 every 0.5 s systemd would kill it.
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        props = sb.show(DAEMON, "ActiveState", "MainPID", "NRestarts")
        assert props["ActiveState"] == "active" and int(props["MainPID"]) == pid, props
        time.sleep(0.1)
    assert sb.show(DAEMON, "NRestarts")["NRestarts"] == "0"


def test_kill_9_mid_incident_continues_without_exceeding_the_budget(
    fresh_user_sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    sb = fresh_user_sandbox
    paths = _paths(sb, monkeypatch)
    install_daemon(sb, tmp_path)
    unit = "flappy.service"
    starts = tmp_path / "starts"
    max_attempts = 3
    _policy(
        paths,
        unit,
        max_attempts=max_attempts,
        window=600.0,
        min_uptime=5.0,
        backoff={"base": 1.0, "factor": 1.0, "max": 1.0, "jitter": 0.0},
    )
    # Dies 0.3 s after every start: each ladder restart "works" and then fails again.
    sb.install_units(
        {unit: f"[Service]\nExecStart=/bin/sh -c 'echo start >> {starts}; sleep 0.3; exit 3'\n"}
    )
    sb.systemctl("start", DAEMON, check=True)
    sb.systemctl("start", unit, check=True)
    first_daemon = sb.main_pid(DAEMON)
    _until(lambda: len(_lines(starts)) >= 2, 30, "first ladder restart")
    # Mid-incident: the ladder has restarted once and is about to again.
    sb.systemctl("kill", "--signal=KILL", DAEMON, check=True)
    sb.wait_for(
        DAEMON,
        lambda p: (
            p.get("ActiveState") == "active" and p.get("MainPID") not in ("0", str(first_daemon))
        ),
        15,
    )
    # The incident goes on in the restarted daemon until the budget is used up.
    _until(lambda: len(_lines(starts)) >= 1 + max_attempts, 60, "budget used")
    sb.wait_for(unit, "failed", 30)
    # Long enough for a fourth restart (backoff 1 s) to have happened if it were allowed.
    time.sleep(4.0)
    assert len(_lines(starts)) == 1 + max_attempts, sb.journal(DAEMON, 120)
    status = subprocess.run(
        [str(UNITGEN), "status", "--json", unit],
        capture_output=True,
        text=True,
        env={**sb.env, "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert "gave-up" in status.stdout, status.stdout + status.stderr
    assert int(sb.show(DAEMON, "NRestarts")["NRestarts"]) == 1


@pytest.mark.sandbox
@pytest.mark.system
def test_system_scope_daemon_runs_hardened_and_recovers(tmp_path: Path) -> None:
    """The system-scope unit, hardening included, in a booted container."""
    from sandboxlib import start_sandbox

    # The editable install imports from the repository: share it into the container.
    sb = start_sandbox(Scope.SYSTEM, share=[REPO, tmp_path])
    try:
        _system_daemon(sb, tmp_path)
    finally:
        sb.close()


def _system_daemon(sb: Sandbox, tmp_path: Path) -> None:
    policy_dir = Path(sb.env["UNITGEN_POLICY_DIR"])
    unit = f"sysw-{time.monotonic_ns() % 100000}.service"
    (policy_dir / f"{unit}.json").write_text(json.dumps({"unit": unit, "version": 1}))
    install_daemon(
        sb, tmp_path, {unit: "[Service]\nExecStart=/bin/sleep infinity\n"}, verbose=False
    )
    try:
        sb.systemctl("start", unit, check=True)
        sb.systemctl("start", DAEMON, check=True)
        props = sb.show(
            DAEMON,
            "ActiveState",
            "StatusText",
            "ProtectSystem",
            "NoNewPrivileges",
            "CapabilityBoundingSet",
        )
        assert props["ActiveState"] == "active", sb.journal(DAEMON, 60)
        assert props["StatusText"].startswith("watching "), props
        assert props["ProtectSystem"] == "strict" and props["NoNewPrivileges"] == "yes"
        # Root with two capabilities left still manages units: systemd checks the UID.
        assert props["CapabilityBoundingSet"] == "cap_dac_override cap_fowner", props
        first = sb.main_pid(unit)
        sb.kill_main(unit)
        sb.wait_for(
            unit,
            lambda p: (
                p.get("ActiveState") == "active" and p.get("MainPID") not in ("0", str(first))
            ),
            30,
        )
        journal = sb.journal(DAEMON, 200)
        assert "recovered" in journal, journal
        assert "event stream not exported" not in journal, journal
    finally:
        sb.systemctl("stop", DAEMON, unit)
