"""The OnFailure= oneshot costs nothing while the daemon listens, and runs when it does not.

The daemon keeps ``$XDG_RUNTIME_DIR/unitgen-watch/listening`` (a symlink to its
/proc entry, in its unit's RuntimeDirectory=) while it follows systemd; the
recovery template has ``ConditionPathExists=!%t/unitgen-watch/listening``.
Proven on a real user manager, with the daemon as its rendered unit, and for the
system manager's removal of the runtime directory in a booted container.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from daemon_sandbox import DAEMON, install_daemon
from daemon_sandbox import until as _until

from handlers.store import Store
from unitgen.paths import Paths, Scope, paths_for
from unitgen.sandbox import Sandbox

REPO = Path(__file__).resolve().parent.parent
MARKER = "/run/user/0/unitgen-watch/listening"  # the user sandbox's %t, seen inside
N = 20

# As generated: systemd's own restarts first, the ladder once its start limit gives up.
GENERATED = """
[service.{name}]
exec = ["/bin/sleep", "infinity"]
hardening = "off"
restart = {{ policy = "on-failure", delay = "100ms", burst = 3, interval = "1min" }}
recovery = {{ min_uptime = "0s", backoff = {{ base = "0s" }} }}
"""


def _paths(sb: Sandbox, monkeypatch: pytest.MonkeyPatch) -> Paths:
    for key, value in sb.env.items():
        monkeypatch.setenv(key, value)
    return paths_for(Scope.USER)


def _install(sb: Sandbox, tmp_path: Path, names: list[str]) -> None:
    """Render the daemon's unit and ``names`` as generated, and install them."""
    specs = {"units.toml": "".join(GENERATED.format(name=n) for n in names)} if names else {}
    install_daemon(sb, tmp_path, specs=specs)


def _listening(sb: Sandbox) -> bool:
    # Inside: the marker's target is a /proc path of the sandbox's PID namespace.
    return sb.run(["test", "-e", MARKER]).returncode == 0


def _give_up(sb: Sandbox, units: list[str]) -> None:
    """Kill each unit three times: the third death hits StartLimitBurst=3 in all at once."""
    for n in (1, 2, 3):
        pids = {u: sb.main_pid(u) for u in units}
        for u in units:
            sb.kill_main(u)
        if n == 3:
            return
        for u in units:
            sb.wait_for(
                u,
                lambda p, n=n, old=pids[u]: (
                    p.get("SubState") == "running"
                    and p.get("NRestarts") == str(n)
                    and p.get("MainPID") != str(old)
                ),
                20,
            )


def _sources(paths: Paths, unit: str) -> list[str]:
    store = Store.open(paths.database)
    try:
        return [i.source for i in store.incidents(unit)]
    finally:
        store.close()


def test_with_the_daemon_up_start_limit_give_ups_start_no_recovery_process(
    fresh_user_sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    sb = fresh_user_sandbox
    paths = _paths(sb, monkeypatch)
    names = [f"gen{i:02d}" for i in range(N)]
    units = [f"{n}.service" for n in names]
    _install(sb, tmp_path, names)
    assert not _listening(sb)
    sb.systemctl("start", DAEMON, check=True)  # Type=notify: after the first reconcile
    _until(lambda: _listening(sb), 10, "the daemon's listening marker")
    sb.systemctl("start", *units, check=True)
    _give_up(sb, units)
    for u in units:
        # Running again, started by the ladder (NRestarts is systemd's own count).
        sb.wait_for(u, lambda p: p.get("SubState") == "running" and p.get("NRestarts") == "0", 30)
    for u in units:
        recover = f"unitgen-recover@{u}.service"
        sb.wait_for(recover, "no", 10, prop="ConditionResult")
        # Never started: no invocation, no main process, nothing failed.
        props = sb.show(recover, "InvocationID", "ExecMainStartTimestamp", "Result")
        assert props == {"InvocationID": "", "ExecMainStartTimestamp": "", "Result": "success"}, (
            u,
            props,
        )
        assert _sources(paths, u) == ["listener"], (u, sb.journal(DAEMON, 60))


def test_a_killed_or_stopped_daemon_leaves_no_marker_and_the_fallback_runs(
    fresh_user_sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    sb = fresh_user_sandbox
    paths = _paths(sb, monkeypatch)
    _install(sb, tmp_path, ["orphan", "left"])
    sb.install_units({f"{DAEMON}.d/slow.conf": "[Service]\nRestartSec=1h\n"})
    sb.systemctl("start", DAEMON, check=True)
    _until(lambda: _listening(sb), 10, "the daemon's listening marker")
    sb.systemctl("start", "orphan.service", "left.service", check=True)
    # kill -9: systemd holds the daemon in auto-restart for an hour. This sandbox's
    # runtime directory is not tmpfs, so systemd does not empty it: the marker is
    # still there, but its /proc target is gone, and ConditionPathExists= sees nothing.
    pid = sb.main_pid(DAEMON)
    sb.systemctl("kill", "--signal=KILL", DAEMON, check=True)
    sb.wait_for(DAEMON, "auto-restart", 10, prop="SubState")
    assert sb.run(["test", "-L", MARKER]).returncode == 0
    assert not _listening(sb)
    _give_up(sb, ["orphan.service"])
    recover = "unitgen-recover@orphan.service.service"
    sb.wait_for(recover, "yes", 30, prop="ConditionResult")
    sb.wait_for("orphan.service", lambda p: p.get("SubState") == "running", 30)
    sb.wait_for(recover, ("inactive", "failed"), 30)
    assert sb.show(recover, "Result")["Result"] == "success", sb.journal(recover, 60)
    # No daemon to hand to: the oneshot ran the ladder itself.
    assert _sources(paths, "orphan.service") == ["onfailure"], sb.journal(recover, 60)

    # A stopped daemon (systemctl stop) takes its marker along.
    sb.systemctl("restart", DAEMON, check=True)
    assert sb.main_pid(DAEMON) != pid
    _until(lambda: _listening(sb), 10, "the restarted daemon's listening marker")
    sb.systemctl("stop", DAEMON, check=True)
    assert sb.run(["test", "-L", MARKER]).returncode != 0
    _give_up(sb, ["left.service"])
    recover = "unitgen-recover@left.service.service"
    sb.wait_for(recover, "yes", 30, prop="ConditionResult")
    sb.wait_for("left.service", lambda p: p.get("SubState") == "running", 30)
    assert _sources(paths, "left.service") == ["onfailure"], sb.journal(recover, 60)


def test_the_system_manager_removes_the_marker_with_a_killed_daemon(
    fresh_system_sandbox: Sandbox, tmp_path: Path
) -> None:
    """On tmpfs (/run) systemd empties RuntimeDirectory= when the daemon dies, before
    its automatic restart; the restarted daemon marks again once it listens."""
    sb = fresh_system_sandbox
    # A long RestartSec= holds the killed daemon in auto-restart while we look.
    install_daemon(sb, tmp_path, {f"{DAEMON}.d/slow.conf": "[Service]\nRestartSec=1h\n"})
    marker = "/run/unitgen-watch/listening"
    sb.systemctl("start", DAEMON, check=True)
    _until(lambda: sb.run(["test", "-e", marker]).returncode == 0, 10, "the marker")
    first = sb.main_pid(DAEMON)
    sb.systemctl("kill", "--signal=KILL", DAEMON, check=True)
    sb.wait_for(DAEMON, "auto-restart", 10, prop="SubState")
    assert sb.run(["test", "-e", "/run/unitgen-watch"]).returncode != 0
    sb.systemctl("restart", DAEMON, check=True)
    sb.wait_for(
        DAEMON,
        lambda p: p.get("ActiveState") == "active" and p.get("MainPID") not in ("0", str(first)),
        30,
    )
    _until(lambda: sb.run(["test", "-e", marker]).returncode == 0, 10, "the marker again")


def test_a_daemon_stopped_mid_ladder_hands_the_unit_to_its_recovery_unit(
    fresh_user_sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The unit's OnFailure= unit was skipped (the daemon listened); `systemctl stop`
    of the daemon mid-ladder must not leave it failed: the daemon hands it over."""
    sb = fresh_user_sandbox
    paths = _paths(sb, monkeypatch)
    _install(sb, tmp_path, [])
    pause = tmp_path / "paused"
    starts = tmp_path / "starts"
    unit = "midway.service"
    body = {
        "unit": unit,
        "version": 1,
        "recovery": {
            "min_uptime": 0.5,
            "backoff": {"base": 1.0, "factor": 1.0, "max": 1.0, "jitter": 0.0},
        },
    }
    paths.policy_dir.mkdir(parents=True, exist_ok=True)
    (paths.policy_dir / f"{unit}.json").write_text(json.dumps(body))
    sb.install_units(
        {
            f"{DAEMON}.d/pause.conf": "[Service]\nEnvironment=UNITGEN_TEST_PAUSE_AT=backing-off:1"
            f" UNITGEN_TEST_PAUSE_FILE={pause}\n",
            unit: "[Unit]\nOnFailure=unitgen-recover@%n.service\n[Service]\n"
            f"ExecStart=/bin/sh -c 'echo start >> {starts}; exec sleep infinity'\n",
        }
    )
    sb.systemctl("start", DAEMON, check=True)
    _until(lambda: _listening(sb), 10, "the daemon's listening marker")
    sb.systemctl("start", unit, check=True)
    sb.kill_main(unit)
    _until(pause.exists, 30, "the daemon paused in its back-off")
    recover = f"unitgen-recover@{unit}.service"
    assert sb.show(recover, "ConditionResult") == {"ConditionResult": "no"}
    sb.systemctl("stop", DAEMON, check=True)
    sb.wait_for(recover, "yes", 30, prop="ConditionResult")
    sb.wait_for(unit, "active", 30)
    sb.wait_for(recover, ("inactive", "failed"), 30)
    assert sb.show(recover, "Result")["Result"] == "success", sb.journal(recover, 60)
    assert "handed midway.service to the OnFailure= fallback" in sb.journal(DAEMON, 80)
    # The daemon had released its name first: the recovery unit ran the ladder itself.
    assert "joined the recovery already running" not in sb.journal(recover, 60)
    store = Store.open(paths.database)
    try:
        incidents = store.incidents(unit)
        assert [i.state for i in incidents] == ["recovered"], sb.journal(recover, 60)
        actions = [r.action for r in store.attempts(incidents[0].id)]
    finally:
        store.close()
    assert actions.count("resume") == 1 and actions.count("restart") == 1, actions
    assert starts.read_text().split() == ["start", "start"]


def test_a_give_up_skipped_while_the_daemon_hangs_is_recovered_after_the_watchdog_kill(
    fresh_user_sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A hung daemon keeps its marker (its process exists) until the watchdog has it
    killed; the unit that gave up meanwhile is recovered by the restarted daemon."""
    sb = fresh_user_sandbox
    paths = _paths(sb, monkeypatch)
    _install(sb, tmp_path, ["stuck"])
    # Short periods for the test; SIGABRT does not end a stopped process, so the
    # abort timeout's SIGKILL does.
    sb.install_units(
        {f"{DAEMON}.d/watchdog.conf": "[Service]\nWatchdogSec=2s\nTimeoutAbortSec=1s\n"}
    )
    sb.systemctl("start", DAEMON, check=True)
    _until(lambda: _listening(sb), 10, "the daemon's listening marker")
    sb.systemctl("start", "stuck.service", check=True)
    first = sb.main_pid(DAEMON)
    sb.systemctl("kill", "--signal=SIGSTOP", DAEMON, check=True)
    _give_up(sb, ["stuck.service"])
    sb.wait_for("unitgen-recover@stuck.service.service", "no", 10, prop="ConditionResult")
    sb.wait_for(
        DAEMON,
        lambda p: p.get("ActiveState") == "active" and p.get("MainPID") not in ("0", str(first)),
        30,
    )
    assert "Watchdog timeout" in sb.journal(DAEMON, 100)
    sb.wait_for(
        "stuck.service",
        lambda p: p.get("SubState") == "running" and p.get("NRestarts") == "0",
        30,
    )
    assert _sources(paths, "stuck.service") == ["listener"], sb.journal(DAEMON, 80)
