"""The ladder against a real systemd user manager (tests/conftest.py sandboxes).

Each test installs its own uniquely named units into the shared user sandbox,
drives them into failure for real, runs the recovery engine (in-process over
SystemdBus, or as the `unitgen recover` CLI the OnFailure= unit runs) and
checks what systemd and the history say afterwards. Waits are deadlines on
systemd's state or on files, never bare sleeps.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from policyfiles import private_paths as _paths
from policyfiles import write_policy as _policy
from receivers import Receiver

from handlers.bus import SystemdBus
from handlers.ladder import Level, State
from handlers.recovery import RecoveryEngine, Trigger
from handlers.store import Store
from unitgen.model import Backoff, Cleanup, Disk, Recovery, Threshold
from unitgen.paths import Scope
from unitgen.policy import Policy
from unitgen.sandbox import Sandbox

UNITGEN = str(Path(sys.executable).with_name("unitgen"))
QUICK = Recovery(
    max_attempts=3,
    window=600.0,
    min_uptime=30.0,
    stable_after=600.0,
    start_timeout=10.0,
    validate_timeout=10.0,
    backoff=Backoff(base=0.1, factor=2.0, max=1.0, jitter=0.0),
)


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}.service"


def _sh(script: str) -> str:
    return "/bin/sh -c " + json.dumps(script)


def _count(path: Path) -> int:
    try:
        return len(path.read_text().splitlines())
    except FileNotFoundError:
        return 0


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _stays(predicate: Callable[[], bool], seconds: float) -> bool:
    """True if ``predicate`` holds at every check until the deadline."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not predicate():
            return False
        time.sleep(0.05)
    return predicate()


def _fail_unit(sb: Sandbox, unit: str) -> None:
    sb.systemctl("start", "--no-block", unit)
    sb.wait_for(unit, "failed", timeout=20)


def _cleanup(sb: Sandbox, *units: str) -> None:
    for unit in units:
        sb.systemctl("stop", unit)
        sb.systemctl("reset-failed", unit)


@pytest_asyncio.fixture
async def sbus(user_sandbox: Sandbox) -> AsyncIterator[SystemdBus]:
    bus = await SystemdBus.connect(Scope.USER, address=user_sandbox.bus_address)
    try:
        yield bus
    finally:
        await bus.close()


def _engine(bus: SystemdBus, tmp_path: Path, **kw: Any) -> RecoveryEngine:
    # journalctl on the host would read the host's journal, not the sandbox's.
    return RecoveryEngine(bus, _paths(tmp_path), read_journal_lines=False, **kw)


@pytest.mark.asyncio
async def test_crashing_service_is_restarted_once(
    user_sandbox: Sandbox, sbus: SystemdBus, tmp_path: Path
) -> None:
    sb = user_sandbox
    unit = _name("crash")
    mark, count = tmp_path / "crashed-once", tmp_path / "starts"
    script = f"echo x >> {count}; [ -e {mark} ] || {{ touch {mark}; exit 3; }}; exec sleep infinity"
    sb.install_units({unit: f"[Service]\nExecStart={_sh(script)}\n"})
    try:
        _fail_unit(sb, unit)
        engine = _engine(sbus, tmp_path)
        out = await engine.recover(unit, Trigger("listener", result="exit-code"))
        await engine.aclose()
        assert out.state is State.RECOVERED, out
        assert out.restarts == 1 and out.classification == "exit-code"
        assert out.default_policy
        assert sb.show(unit, "ActiveState")["ActiveState"] == "active"
        assert _count(count) == 2
    finally:
        _cleanup(sb, unit)


@pytest.mark.asyncio
async def test_failed_requires_dependency_is_recovered_first(
    user_sandbox: Sandbox, sbus: SystemdBus, tmp_path: Path
) -> None:
    sb = user_sandbox
    dep, app = _name("dep"), _name("app")
    mark, order = tmp_path / "dep-crashed", tmp_path / "order"
    pre = f"[ -e {mark} ] || {{ touch {mark}; exit 1; }}"
    sb.install_units(
        {
            dep: (
                f"[Service]\nType=exec\nExecStartPre={_sh(pre)}\n"
                f"ExecStart={_sh(f'echo dep >> {order}; exec sleep infinity')}\n"
            ),
            app: (
                f"[Unit]\nRequires={dep}\nAfter={dep}\n[Service]\nType=exec\n"
                f"ExecStart={_sh(f'echo app >> {order}; exec sleep infinity')}\n"
            ),
        }
    )
    try:
        _policy(_paths(tmp_path), Policy(unit=app, recovery=QUICK))
        sb.systemctl("start", app)  # fails: its dependency fails
        sb.wait_for(dep, "failed", timeout=20)
        assert sb.show(app, "ActiveState")["ActiveState"] != "active"
        engine = _engine(sbus, tmp_path)
        out = await engine.recover(app, Trigger("manual"))
        await engine.aclose()
        assert out.state is State.RECOVERED, out
        assert out.classification == "dependency"
        assert sb.show(dep, "ActiveState")["ActiveState"] == "active"
        assert sb.show(app, "ActiveState")["ActiveState"] == "active"
        assert order.read_text().split() == ["dep", "app"]
        store = Store.open(_paths(tmp_path).database)
        dep_inc = store.last_incident(dep)
        assert dep_inc is not None and dep_inc.source == "dependency"
        store.close()
    finally:
        _cleanup(sb, app, dep)


def _dead_pid() -> int:
    proc = subprocess.Popen(["/bin/true"])
    proc.wait()
    return proc.pid


@pytest.mark.asyncio
async def test_stale_pidfile_removed_at_the_cleanup_level(
    user_sandbox: Sandbox, sbus: SystemdBus, tmp_path: Path
) -> None:
    sb = user_sandbox
    unit = _name("pidfile")
    rundir = tmp_path / "rundir"
    rundir.mkdir()
    pidfile = rundir / "app.pid"
    pidfile.write_text(f"{_dead_pid()}\n")
    pidfile.chmod(0o644)
    sb.install_units(
        {
            unit: (
                f"[Service]\nType=exec\nExecStartPre=/bin/sh -c 'test ! -e {pidfile}'\n"
                "ExecStart=/bin/sleep infinity\n"
            )
        }
    )
    paths = _paths(tmp_path)
    _policy(paths, Policy(unit=unit, recovery=QUICK, cleanup=Cleanup(pidfile=str(pidfile))))
    try:
        _fail_unit(sb, unit)
        engine = _engine(sbus, tmp_path)
        out = await engine.recover(unit, Trigger("onfailure", result="exit-code"))
        await engine.aclose()
        # restart fails, restart-with-dependencies fails, cleanup-then-restart works.
        assert out.state is State.RECOVERED, out
        assert out.restarts == 3 and out.level is Level.CLEANUP_THEN_RESTART
        assert not pidfile.exists()
        assert sb.show(unit, "ActiveState")["ActiveState"] == "active"
        hist = engine_history(tmp_path, unit)
        cleanup = [a for a in hist if a["action"] == "cleanup"]
        assert cleanup and cleanup[0]["reason"].startswith("1 removed")
    finally:
        _cleanup(sb, unit)


def engine_history(tmp_path: Path, unit: str) -> list[dict[str, Any]]:
    store = Store.open(_paths(tmp_path).database)
    try:
        last = store.last_incident(unit)
        assert last is not None
        return [
            {"action": a.action, "result": a.result, "reason": a.reason}
            for a in store.attempts(last.id)
        ]
    finally:
        store.close()


@pytest.mark.asyncio
async def test_symlink_in_temp_dir_is_not_followed(
    user_sandbox: Sandbox, sbus: SystemdBus, tmp_path: Path
) -> None:
    sb = user_sandbox
    unit = _name("temp")
    temp = tmp_path / "temp"
    temp.mkdir()
    outside = tmp_path / "precious"
    outside.write_text("keep me")
    old = time.time() - 7200
    os.utime(outside, (old, old))
    stale = temp / "stale.lock"
    stale.write_text("old")
    os.utime(stale, (old, old))
    link = temp / "evil"
    link.symlink_to(outside)
    os.utime(link, (old, old), follow_symlinks=False)
    sb.install_units(
        {
            unit: (
                f"[Service]\nType=exec\nExecStartPre=/bin/sh -c 'test ! -e {stale}'\n"
                "ExecStart=/bin/sleep infinity\n"
            )
        }
    )
    paths = _paths(tmp_path)
    _policy(
        paths,
        Policy(unit=unit, recovery=QUICK, cleanup=Cleanup(temp=(str(temp),), older_than=60.0)),
    )
    try:
        _fail_unit(sb, unit)
        engine = _engine(sbus, tmp_path)
        out = await engine.recover(unit, Trigger("onfailure", result="exit-code"))
        await engine.aclose()
        assert out.state is State.RECOVERED, out
        assert not stale.exists()
        assert link.is_symlink()  # left in place, refused
        assert outside.read_text() == "keep me"
        assert any("refused" in n and "evil" in n for n in out.notes), out.notes
    finally:
        _cleanup(sb, unit)


def _run_cli(
    sb: Sandbox, tmp_path: Path, argv: list[str], *, prelude: str = ""
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        **sb.env,
        "UNITGEN_POLICY_DIR": str(tmp_path / "policy"),
        "UNITGEN_STATE_DIR": str(tmp_path / "state"),
        "UNITGEN_RUN_DIR": str(tmp_path / "run"),
    }
    env.pop("MONITOR_UNIT", None)
    command = " ".join(json.dumps(a) for a in [UNITGEN, *argv])
    script = f"set -e\n{prelude}\nexec {command}\n"
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_full_disk_blocks_restart_with_reason_disk(user_sandbox: Sandbox, tmp_path: Path) -> None:
    sb = user_sandbox
    unit = _name("disk")
    count = tmp_path / "starts"
    sb.install_units({unit: f"[Service]\nExecStart={_sh(f'echo x >> {count}; exit 1')}\n"})
    mnt = tmp_path / "small"
    mnt.mkdir()
    paths = _paths(tmp_path)
    disk = Disk(paths=(str(mnt),), min_free=Threshold(percent=20.0))
    _policy(paths, Policy(unit=unit, recovery=QUICK, disk=disk))
    try:
        _fail_unit(sb, unit)
        before = sb.show(unit, "ExecMainStartTimestampMonotonic")
        # A 1 MiB tmpfs, 95 % full, visible only to this `unitgen recover` process.
        prelude = (
            f"mount -t tmpfs -o size=1m tmpfs {mnt}\nhead -c 1000000 /dev/zero > {mnt}/fill || true"
        )
        res = _run_cli(sb, tmp_path, ["recover", "--user", "--json", unit], prelude=prelude)
        assert res.returncode == 1, res.stderr
        out = json.loads(res.stdout)
        assert out["state"] == "gave-up" and out["reason"].startswith("disk"), out
        assert "low disk space" in out["reason"]
        assert out["restarts"] == 0
        assert sb.show(unit, "ExecMainStartTimestampMonotonic") == before
        assert _count(count) == 1
        assert not (mnt / "fill").exists()  # the tmpfs lived only in that namespace
    finally:
        _cleanup(sb, unit)


@pytest.mark.asyncio
async def test_failing_config_validation_blocks_restart(
    user_sandbox: Sandbox, sbus: SystemdBus, tmp_path: Path
) -> None:
    sb = user_sandbox
    unit = _name("config")
    count = tmp_path / "starts"
    sb.install_units({unit: f"[Service]\nExecStart={_sh(f'echo x >> {count}; exit 1')}\n"})
    paths = _paths(tmp_path)
    check = ("/bin/sh", "-c", "echo 'unexpected token at line 3' >&2; exit 1")
    _policy(paths, Policy(unit=unit, recovery=QUICK, validate=check))
    try:
        _fail_unit(sb, unit)
        engine = _engine(sbus, tmp_path)
        out = await engine.recover(unit, Trigger("onfailure", result="exit-code"))
        await engine.aclose()
        assert out.state is State.GAVE_UP and out.reason.startswith("config"), out
        assert out.restarts == 0 and _count(count) == 1
        assert sb.show(unit, "ActiveState")["ActiveState"] == "failed"
    finally:
        _cleanup(sb, unit)


@pytest.mark.asyncio
async def test_always_crashing_unit_alerts_stops_and_resolves_after_reset(
    user_sandbox: Sandbox, sbus: SystemdBus, tmp_path: Path
) -> None:
    sb = user_sandbox
    unit = _name("always")
    count, broken = tmp_path / "starts", tmp_path / "broken"
    broken.write_text("yes")
    script = f"echo x >> {count}; [ -e {broken} ] && exit 2; exec sleep infinity"
    sb.install_units({unit: f"[Service]\nType=exec\nExecStart={_sh(script)}\n"})
    with Receiver() as hook:
        url = tmp_path / "hook.url"
        url.write_text(hook.url("/alert?token=s3cret") + "\n")
        url.chmod(0o600)
        target = {"name": "ops", "type": "webhook", "url_file": str(url), "retries": 0}
        paths = _paths(tmp_path)
        # max_attempts 3, a 1 s cap on back-off: a crash after a start still counts.
        _policy(paths, Policy(unit=unit, recovery=QUICK, alerts=(target,)))
        try:
            _fail_unit(sb, unit)
            # As the OnFailure= process runs it: watching min_uptime, so each crash right
            # after a start is the next attempt, and the ladder walks every level.
            engine = _engine(sbus, tmp_path, watch_uptime=True)
            out = await engine.recover(unit, Trigger("onfailure", result="exit-code"))
            assert out.state is State.GAVE_UP and out.reason == "budget", out
            assert out.restarts == QUICK.max_attempts
            await engine.aclose()
            assert _count(count) == 1 + QUICK.max_attempts
            # One alert per level, the last "left failed".
            got = hook.wait_for(4, timeout=20)
            bodies = [json.loads(r.body) for r in got]
            assert [b["level"] for b in bodies][-1] == "alert-and-stop"
            assert all(b["status"] == "firing" for b in bodies)
            assert all("s3cret" not in json.dumps(b) for b in bodies)
            # Another trigger must not restart it again (and no new alert).
            engine = _engine(sbus, tmp_path)
            again = await engine.recover(unit, Trigger("reconcile"))
            await engine.aclose()
            assert again.state is State.GAVE_UP and again.restarts == 0
            # Long enough to see a storm if there were one: several back-off caps.
            assert _stays(lambda: _count(count) == 1 + QUICK.max_attempts, 3.0)
            assert len(hook.requests) == 4
            # Fixed, started by the operator, then re-armed: "resolved" follows.
            broken.unlink()
            sb.systemctl("reset-failed", unit)
            sb.systemctl("start", unit, check=True)
            sb.wait_for(unit, "active", timeout=20)
            engine = _engine(sbus, tmp_path)
            reset = await engine.reset(unit)
            await engine.aclose()
            assert reset.state is State.NOT_NEEDED
            resolved = hook.wait_for(5, timeout=20)[-1]
            body = json.loads(resolved.body)
            assert body["status"] == "resolved" and body["incident_id"] == out.incident_id
        finally:
            _cleanup(sb, unit)


def test_cli_unknown_unit_exits_2_with_one_line(user_sandbox: Sandbox, tmp_path: Path) -> None:
    res = _run_cli(user_sandbox, tmp_path, ["recover", "--user", "no-such-unit-xyz.service"])
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "no-such-unit-xyz.service" in lines[0]
    assert "Traceback" not in res.stderr


def test_cli_default_policy_is_said(user_sandbox: Sandbox, tmp_path: Path) -> None:
    sb = user_sandbox
    unit = _name("nopolicy")
    sb.install_units({unit: "[Service]\nExecStart=/bin/sleep infinity\n"})
    try:
        sb.systemctl("start", unit, check=True)
        res = _run_cli(sb, tmp_path, ["recover", "--user", unit])
        assert res.returncode == 0, res.stderr
        assert f"{unit}: not-needed" in res.stdout
        assert "no recovery policy; the default policy was used" in res.stdout
    finally:
        _cleanup(sb, unit)


def test_cli_recover_status_and_history(user_sandbox: Sandbox, tmp_path: Path) -> None:
    sb = user_sandbox
    unit = _name("cli")
    mark = tmp_path / "once"
    script = f"[ -e {mark} ] || {{ touch {mark}; exit 3; }}; exec sleep infinity"
    sb.install_units({unit: f"[Service]\nType=exec\nExecStart={_sh(script)}\n"})
    _policy(_paths(tmp_path), Policy(unit=unit, recovery=dataclasses.replace(QUICK, min_uptime=1)))
    try:
        _fail_unit(sb, unit)
        res = _run_cli(sb, tmp_path, ["recover", "--user", unit])
        assert res.returncode == 0, res.stderr
        assert f"{unit}: recovered" in res.stdout
        status = _run_cli(sb, tmp_path, ["status", "--user", "--json", unit])
        row = json.loads(status.stdout)[0]
        assert row["attempts_in_window"] == 1 and row["success_rate"] == 1.0
        assert row["state"] == "recovered" and not row["default_policy"]
        hist = _run_cli(sb, tmp_path, ["history", "--user", unit])
        assert "restart" in hist.stdout and "recovered" in hist.stdout
    finally:
        _cleanup(sb, unit)


# -- the layering: systemd's Restart= first, then the ladder through OnFailure= --------


def _rendered(sb: Sandbox, tmp_path: Path, count: Path) -> tuple[str, dict[str, str]]:
    """Render a real spec for the user manager: the service and unitgen-recover@.service."""
    from unitgen.render import RenderOptions, render, render_policies
    from unitgen.specfile import parse_spec

    spec_text = f"""
[service.flaky]
description = "always crashes"
exec = ["/bin/sh", "-c", "echo x >> {count}; exit 1"]
hardening = "off"
restart = {{ policy = "on-failure", delay = "300ms", burst = 3, interval = "1min" }}

[service.flaky.recovery]
max_attempts = 2
min_uptime = "5s"
start_timeout = "10s"
backoff = {{ base = "200ms", max = "1s", jitter = 0.0 }}
"""
    spec = parse_spec(spec_text, str(tmp_path / "spec.toml"))
    options = RenderOptions.for_scope(
        Scope.USER, 252, unitgen_bin=UNITGEN, policy_dir=tmp_path / "policy"
    )
    options = dataclasses.replace(
        options,
        recover_env=(
            ("UNITGEN_STATE_DIR", str(tmp_path / "state")),
            ("UNITGEN_RUN_DIR", str(tmp_path / "run")),
            ("DBUS_SESSION_BUS_ADDRESS", sb.env["DBUS_SESSION_BUS_ADDRESS"]),
        ),
    )
    units = render(spec, options)
    policies = render_policies(spec, options)
    (tmp_path / "policy").mkdir(parents=True, exist_ok=True)
    for name, text in policies.items():
        (tmp_path / "policy" / name).write_text(text)
    return spec.services["flaky"].unit, units


def test_layering_no_failure_is_restarted_by_two_actors(
    fresh_user_sandbox: Sandbox, tmp_path: Path
) -> None:
    """Restart=on-failure + start limit + OnFailure=, with the rendered units.

    Every start is either systemd's own auto-restart inside a burst, or one ladder
    restart after the start limit was hit. With burst 3 and max_attempts 2 that is
    exactly (1 + 2) bursts of 3 starts: one start more would be a double restart.
    """
    sb = fresh_user_sandbox
    count = tmp_path / "starts"
    unit, units = _rendered(sb, tmp_path, count)
    assert "OnFailure=unitgen-recover@%n.service" in units[unit]
    assert "Restart=on-failure" in units[unit] and "StartLimitBurst=3" in units[unit]
    sb.install_units(units)
    sb.systemctl("start", "--no-block", unit)
    expected = (1 + 2) * 3
    _wait(lambda: _count(count) >= expected, 60, f"{expected} starts")

    def gave_up() -> bool:
        store = Store.open(tmp_path / "state" / "history.sqlite3")
        try:
            last = store.last_incident(unit)
            return last is not None and last.state == "gave-up"
        finally:
            store.close()

    _wait(gave_up, 60, "the ladder to give up")
    sb.wait_for(unit, "failed", timeout=20)
    # Long enough for one more burst and one more back-off: nothing moves.
    assert _stays(lambda: _count(count) == expected, 4.0), _count(count)
    store = Store.open(tmp_path / "state" / "history.sqlite3")
    try:
        incidents = store.incidents(unit)
        restarts = [a for inc in incidents for a in store.attempts(inc.id) if a.action == "restart"]
        dispositions = [t[3] for t in store.triggers(unit)]
    finally:
        store.close()
    assert len(restarts) == 2, restarts
    assert len(incidents) == 1  # each crash within min_uptime continued the same incident
    assert incidents[0].reason == "budget"
    # Each OnFailure= run handled what it saw; none acted while systemd was restarting.
    assert "handled" in dispositions


def test_full_state_disk_recovery_goes_on_without_history(
    user_sandbox: Sandbox, tmp_path: Path
) -> None:
    sb = user_sandbox
    unit = _name("nohist")
    mark = tmp_path / "once"
    script = f"[ -e {mark} ] || {{ touch {mark}; exit 3; }}; exec sleep infinity"
    sb.install_units({unit: f"[Service]\nType=exec\nExecStart={_sh(script)}\n"})
    _policy(_paths(tmp_path), Policy(unit=unit, recovery=dataclasses.replace(QUICK, min_uptime=0)))
    state = tmp_path / "state"
    state.mkdir()
    # The state directory is a 64 KiB tmpfs, full before unitgen starts.
    prelude = (
        f"mount -t tmpfs -o size=64k tmpfs {state}\n"
        f"head -c 1000000 /dev/zero > {state}/fill || true"
    )
    try:
        _fail_unit(sb, unit)
        res = _run_cli(sb, tmp_path, ["recover", "--user", "--json", unit], prelude=prelude)
        assert res.returncode == 0, res.stderr
        out = json.loads(res.stdout)
        assert out["state"] == "recovered" and out["restarts"] == 1
        assert any(n.startswith("history not kept") for n in out["notes"]), out["notes"]
        assert "recovery continues without history" in res.stderr
        sb.wait_for(unit, "active", timeout=10)
    finally:
        _cleanup(sb, unit)


def test_cli_test_restart_fire_drill(user_sandbox: Sandbox, tmp_path: Path) -> None:
    sb = user_sandbox
    unit = _name("drill")
    sb.install_units(
        {unit: "[Service]\nExecStart=/bin/sleep infinity\nRestart=always\nRestartSec=50ms\n"}
    )
    try:
        sb.systemctl("start", unit, check=True)
        old = sb.main_pid(unit)
        res = _run_cli(sb, tmp_path, ["test-restart", "--user", "--json", "--timeout", "20", unit])
        assert res.returncode == 0, res.stderr
        report = json.loads(res.stdout)
        assert report["ok"] and report["old_pid"] == old
        assert report["new_pid"] not in (0, old) and report["new_pid"] == sb.main_pid(unit)
        assert report["systemd_restarts"] == 1 and report["ladder_restarts"] == 0
        assert 0 < report["seconds"] < 20
    finally:
        _cleanup(sb, unit)


def test_cli_test_restart_refuses_an_inactive_unit(user_sandbox: Sandbox, tmp_path: Path) -> None:
    sb = user_sandbox
    unit = _name("idle")
    sb.install_units({unit: "[Service]\nExecStart=/bin/sleep infinity\n"})
    res = _run_cli(sb, tmp_path, ["test-restart", "--user", unit])
    assert res.returncode == 2
    assert len(res.stderr.strip().splitlines()) == 1 and "not active" in res.stderr


def test_two_recover_processes_restart_once(user_sandbox: Sandbox, tmp_path: Path) -> None:
    """The OnFailure= process and another trigger at once: one restart, one join, recorded."""
    sb = user_sandbox
    unit = _name("race")
    count = tmp_path / "starts"
    # Slow to become active (ExecStartPre sleeps), so the first ladder is still verifying
    # when the second process arrives.
    sb.install_units(
        {
            unit: (
                "[Service]\nType=exec\nExecStartPre=/bin/sleep 3\n"
                f"ExecStart={_sh(f'echo x >> {count}; exec sleep infinity')}\n"
            )
        }
    )
    sb.systemctl("start", unit, check=True)
    _policy(_paths(tmp_path), Policy(unit=unit, recovery=dataclasses.replace(QUICK, min_uptime=0)))
    try:
        sb.kill_main(unit)
        sb.wait_for(unit, "failed", timeout=10)
        env = {
            **os.environ,
            **sb.env,
            "UNITGEN_POLICY_DIR": str(tmp_path / "policy"),
            "UNITGEN_STATE_DIR": str(tmp_path / "state"),
            "UNITGEN_RUN_DIR": str(tmp_path / "run"),
        }
        argv = [UNITGEN, "recover", "--user", "--json", unit]
        procs = [
            subprocess.Popen(
                argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
            for _ in range(2)
        ]
        outs = []
        for p in procs:
            stdout, stderr = p.communicate(timeout=60)
            assert p.returncode == 0, stderr
            outs.append(json.loads(stdout))
        assert sorted(o["joined"] for o in outs) == [False, True], outs
        assert sum(o["restarts"] for o in outs) == 1
        assert {o["incident_id"] for o in outs} == {outs[0]["incident_id"]}, json.dumps(outs)
        sb.wait_for(unit, "active", timeout=10)
        assert _count(count) == 2
        store = Store.open(tmp_path / "state" / "history.sqlite3")
        dispositions = sorted(t[3] for t in store.triggers(unit))
        store.close()
        assert dispositions == ["handled", "joined"]
    finally:
        _cleanup(sb, unit)


@pytest.mark.asyncio
async def test_stands_down_while_systemd_restarts_the_unit(
    user_sandbox: Sandbox, sbus: SystemdBus, tmp_path: Path
) -> None:
    sb = user_sandbox
    unit = _name("selfheal")
    count = tmp_path / "starts"
    sb.install_units(
        {
            unit: (
                f"[Service]\nExecStart={_sh(f'echo x >> {count}; exec sleep infinity')}\n"
                "Restart=on-failure\nRestartSec=2s\n"
            )
        }
    )
    try:
        sb.systemctl("start", unit, check=True)
        _wait(lambda: _count(count) == 1, 10, "first start")
        sb.kill_main(unit)
        # Right after the kill: `failed`, or already `auto-restart`; either way systemd's.
        engine = _engine(sbus, tmp_path)
        out = await engine.recover(unit, Trigger("listener", result="signal"))
        await engine.aclose()
        assert out.state is State.WAITING_FOR_SYSTEMD, out
        assert out.restarts == 0 and "systemd" in out.reason
        _wait(lambda: _count(count) == 2, 15, "systemd's own restart")
        sb.wait_for(unit, "active", timeout=10)
        assert int(sb.show(unit, "NRestarts")["NRestarts"]) == 1
    finally:
        _cleanup(sb, unit)


def test_cli_dry_run_changes_nothing(user_sandbox: Sandbox, tmp_path: Path) -> None:
    sb = user_sandbox
    unit = _name("dry")
    count = tmp_path / "starts"
    sb.install_units({unit: f"[Service]\nExecStart={_sh(f'echo x >> {count}; exit 1')}\n"})
    try:
        _fail_unit(sb, unit)
        res = _run_cli(sb, tmp_path, ["recover", "--user", "--dry-run", unit])
        assert res.returncode == 0, res.stderr
        assert "(dry run)" in res.stdout and "would reset-failed and restart" in res.stdout
        assert sb.show(unit, "ActiveState")["ActiveState"] == "failed"
        assert _count(count) == 1
        assert not (tmp_path / "state" / "history.sqlite3").exists()
    finally:
        _cleanup(sb, unit)
