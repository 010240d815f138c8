"""The listener against a real user manager: who restarts what, reconciliation, reconnects."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_asyncio
from listener_fakes import EngineHooks

from handlers.bus import SystemdBus
from handlers.ladder import State
from handlers.listener import Listener, ListenerOptions
from handlers.recovery import Outcome
from unitgen.paths import Paths, Scope, paths_for
from unitgen.sandbox import Sandbox

LIBS = ["next", "fast"]


def _unit(restart: str = "no", burst: int = 3, extra: str = "", interval: int = 60) -> str:
    return (
        f"[Unit]\nStartLimitBurst={burst}\nStartLimitIntervalSec={interval}\n"
        f"[Service]\nExecStart=/bin/sleep infinity\nRestart={restart}\nRestartSec=50ms\n{extra}"
    )


@dataclass
class FakeEngine(EngineHooks):
    """Records what the listener hands over and restarts like the first ladder rung."""

    bus: Any
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    called: asyncio.Event = field(default_factory=asyncio.Event)
    restart: bool = True

    async def recover(self, unit: str, trigger: dict[str, Any]) -> Outcome:
        self.calls.append((unit, trigger))
        self.called.set()
        if self.restart:
            await self.bus.reset_failed(unit)
            await self.bus.restart(unit)
        return Outcome(unit, State.RECOVERED, "", 1, "")

    async def aclose(self) -> None:
        pass


@dataclass
class Running:
    listener: Listener
    engines: list[FakeEngine]
    task: asyncio.Task[None]

    @property
    def engine(self) -> FakeEngine:
        return self.engines[0]


def _paths(sb: Sandbox, monkeypatch: pytest.MonkeyPatch) -> Paths:
    for key, value in sb.env.items():
        monkeypatch.setenv(key, value)
    return paths_for(Scope.USER)


def _policy(paths: Paths, unit: str) -> None:
    paths.policy_dir.mkdir(parents=True, exist_ok=True)
    (paths.policy_dir / f"{unit}.json").write_text(json.dumps({"unit": unit, "version": 1}))


def _watched_unit(
    sb: Sandbox, monkeypatch: pytest.MonkeyPatch, prefix: str, text: str
) -> tuple[Paths, str]:
    """A uniquely named unit with a policy, installed and started in the sandbox."""
    paths = _paths(sb, monkeypatch)
    unit = f"{prefix}-{uuid.uuid4().hex[:6]}.service"
    _policy(paths, unit)
    sb.install_units({unit: text})
    sb.systemctl("start", unit, check=True)
    return paths, unit


StartFn = Callable[..., Awaitable[Running]]


@pytest_asyncio.fixture
async def start_listener() -> AsyncIterator[StartFn]:
    started: list[Running] = []

    async def start(sb: Sandbox, paths: Paths, lib: str = "fast", **kwargs: Any) -> Running:
        engines: list[FakeEngine] = []

        def factory(bus: SystemdBus) -> FakeEngine:
            engine = FakeEngine(bus)
            engines.append(engine)
            return engine

        listener = Listener(
            paths,
            factory,
            address=sb.bus_address,
            library=lib,
            trigger_factory=dict,
            options=kwargs.pop("options", ListenerOptions(reconnect_initial=0.05)),
            **kwargs,
        )
        task = asyncio.create_task(listener.run())
        running = Running(listener, engines, task)
        started.append(running)
        await asyncio.wait_for(listener.ready.wait(), 15)
        return running

    try:
        yield start
    finally:
        for running in started:
            running.listener.stop()
            await asyncio.wait_for(running.task, 15)


async def _killed_and_restarted_by_systemd(
    sb: Sandbox, unit: str, listener: Listener, n: int
) -> None:
    """Kill the running unit for the ``n``-th time; systemd's own restart brings it back
    (NRestarts reaches n) and the listener sees it and stands down."""
    sb.wait_for(unit, lambda p: p.get("SubState") == "running", 10)
    sb.kill_main(unit)
    sb.wait_for(
        unit,
        lambda p: p.get("SubState") == "running" and p.get("NRestarts") == str(n),
        10,
    )
    await _until(lambda: listener.stats.systemd_restarting >= n)


async def _until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:  # noqa: ASYNC109
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


@pytest.mark.asyncio
@pytest.mark.parametrize("lib", LIBS)
async def test_restart_no_unit_is_recovered_once(
    fresh_user_sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch, start_listener: StartFn, lib: str
) -> None:
    sb = fresh_user_sandbox
    paths, unit = _watched_unit(sb, monkeypatch, "plain", _unit("no"))
    running = await start_listener(sb, paths, lib)
    first = sb.main_pid(unit)
    sb.kill_main(unit)
    await asyncio.wait_for(running.engine.called.wait(), 10)
    props = await asyncio.to_thread(sb.wait_for, unit, "active", 10)
    assert int(props.get("MainPID", "0") or sb.main_pid(unit)) != first
    assert len(running.engine.calls) == 1
    name, trigger = running.engine.calls[0]
    assert name == unit
    assert trigger["source"] == "listener"
    assert len(trigger["invocation_id"]) == 32
    assert running.listener.stats.systemd_restarting == 0


@pytest.mark.asyncio
@pytest.mark.parametrize("lib", LIBS)
async def test_never_races_systemds_own_restart(
    fresh_user_sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch, start_listener: StartFn, lib: str
) -> None:
    """Restart=on-failure broadcasts failed before each of systemd's own restarts.

    The listener must stand down on every one of those and act exactly once,
    when systemd hits its start limit and gives up.
    """
    sb = fresh_user_sandbox
    paths, unit = _watched_unit(sb, monkeypatch, "auto", _unit("on-failure", burst=3))
    running = await start_listener(sb, paths, lib)
    listener = running.listener
    for n in (1, 2):
        await _killed_and_restarted_by_systemd(sb, unit, listener, n)
        assert running.engine.calls == []
    assert listener.stats.failed_signals >= 2
    # The third death exhausts StartLimitBurst=3: systemd gives up, the ladder takes over.
    sb.wait_for(unit, lambda p: p.get("SubState") == "running", 10)
    sb.kill_main(unit)
    await asyncio.wait_for(running.engine.called.wait(), 10)
    await asyncio.to_thread(sb.wait_for, unit, "active", 10)
    assert len(running.engine.calls) == 1
    trigger = running.engine.calls[0][1]
    assert trigger["source"] == "listener"
    # Decided on the signals (auto-restart, then failed of the same invocation), and
    # the refused restart job the give-up's signal still carries is not handed on as
    # a restart under way (the ladder would stand down on it).
    assert listener.stats.start_limit == 1
    assert trigger["result"] == "start-limit-hit"
    assert trigger["snapshot"]["Job"][0] == 0


@pytest.mark.asyncio
async def test_unwatched_units_are_ignored_and_globs_and_templates_work(
    fresh_user_sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch, start_listener: StartFn
) -> None:
    sb = fresh_user_sandbox
    paths = _paths(sb, monkeypatch)
    _policy(paths, "wk@.service")
    sb.install_units(
        {"wk@.service": _unit("no"), "other.service": _unit("no"), "glob-a.service": _unit("no")}
    )
    for u in ("wk@1.service", "other.service", "glob-a.service"):
        sb.systemctl("start", u, check=True)
    running = await start_listener(sb, paths, globs=["glob-*.service"])
    for u in ("other.service", "wk@1.service", "glob-a.service"):
        sb.kill_main(u)
    await _until(lambda: len(running.engine.calls) >= 2)
    sb.wait_for("other.service", "failed", 10)
    await asyncio.sleep(0)  # let any stray handling finish before the assertion
    assert sorted(c[0] for c in running.engine.calls) == ["glob-a.service", "wk@1.service"]


@pytest.mark.asyncio
async def test_startup_reconciliation_handles_already_failed_units(
    fresh_user_sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch, start_listener: StartFn
) -> None:
    sb = fresh_user_sandbox
    paths, unit = _watched_unit(sb, monkeypatch, "dead-before", _unit("no"))
    sb.kill_main(unit)
    sb.wait_for(unit, "failed", 10)
    running = await start_listener(sb, paths)
    await asyncio.wait_for(running.engine.called.wait(), 10)
    await asyncio.to_thread(sb.wait_for, unit, "active", 10)
    assert [c[0] for c in running.engine.calls] == [unit]


@pytest.mark.asyncio
async def test_same_invocation_is_handed_over_once(
    fresh_user_sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch, start_listener: StartFn
) -> None:
    sb = fresh_user_sandbox
    paths, unit = _watched_unit(sb, monkeypatch, "stays-failed", _unit("no"))
    running = await start_listener(sb, paths)
    running.engine.restart = False
    sb.kill_main(unit)
    await asyncio.wait_for(running.engine.called.wait(), 10)
    # A reconcile (as after Reloading) sees the same failed invocation again.
    sb.daemon_reload()
    await _until(lambda: running.listener.stats.reconciles >= 2)
    await _until(lambda: running.listener.stats.duplicates >= 1)
    assert len(running.engine.calls) == 1


@pytest.mark.asyncio
async def test_reconnects_after_dbus_daemon_dies(
    fresh_user_sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch, start_listener: StartFn
) -> None:
    sb = fresh_user_sandbox
    paths, unit = _watched_unit(sb, monkeypatch, "after-bus", _unit("no"))
    running = await start_listener(sb, paths)
    listener = running.listener
    sb.systemctl("kill", "--signal=KILL", "dbus.service", check=True)
    await _until(lambda: listener.stats.reconnects >= 1, 15)
    await asyncio.wait_for(listener.connected.wait(), 30)
    # Subscribed again: a failure after the reconnect is still seen and handled.
    await _until(lambda: sb.main_pid(unit) > 0)
    sb.kill_main(unit)
    await asyncio.wait_for(running.engine.called.wait(), 30)
    assert [c[0] for c in running.engine.calls] == [unit]


# -- with the real ladder, and the OnFailure= path racing it -------------------------


def _counting_unit(count_file: str, extra: str = "") -> str:
    return (
        "[Unit]\nOnFailure=unitgen-recover@%n.service\n"
        "[Service]\n"
        f"ExecStart=/bin/sh -c 'echo start >> {count_file}; exec sleep infinity'\n"
        f"Restart=no\n{extra}"
    )


def _recover_unit(sb: Sandbox, done_file: str) -> str:
    import sys
    from pathlib import Path

    unitgen = Path(sys.executable).with_name("unitgen")
    env = "".join(f'Environment="{k}={v}"\n' for k, v in sb.env.items())
    return (
        "[Service]\nType=oneshot\n"
        f"{env}"
        f"ExecStart=/bin/sh -c '{unitgen} recover \"$1\"; echo $? >> {done_file}' _ %i\n"
    )


@pytest.mark.asyncio
async def test_real_ladder_through_listener_and_onfailure_restarts_nothing_twice(
    fresh_user_sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    from handlers.recovery import RecoveryEngine

    sb = fresh_user_sandbox
    paths = _paths(sb, monkeypatch)
    unit = "crashy.service"
    _policy(paths, unit)
    starts, done = tmp_path / "starts", tmp_path / "done"
    sb.install_units(
        {
            unit: _counting_unit(str(starts)),
            "unitgen-recover@.service": _recover_unit(sb, str(done)),
        }
    )
    sb.systemctl("start", unit, check=True)
    engines: list[RecoveryEngine] = []

    def factory(bus: SystemdBus) -> RecoveryEngine:
        engines.append(RecoveryEngine(bus, paths))
        return engines[0]

    listener = Listener(paths, factory, address=sb.bus_address, library="fast", health=False)
    task = asyncio.create_task(listener.run())
    try:
        await asyncio.wait_for(listener.ready.wait(), 15)
        sb.kill_main(unit)
        # Both actors ran: the listener's ladder, and the OnFailure= unit's `unitgen recover`.
        await _until(lambda: listener.stats.recoveries >= 1, 30)
        await _until(lambda: done.exists() and done.read_text().strip() != "", 60)
        await asyncio.to_thread(sb.wait_for, unit, "active", 10)
        assert starts.read_text().splitlines() == ["start", "start"]  # one restart, not two
        history = engines[0].history(unit)
        assert history, "the ladder recorded no incident"
        restarts = [
            a
            for inc in history
            for a in inc["attempts"]  # type: ignore[union-attr]
            if "restart" in str(a.get("action", ""))
        ]
        assert len(restarts) == 1, history
    finally:
        listener.stop()
        await asyncio.wait_for(task, 15)


@pytest.mark.asyncio
async def test_failing_health_probe_opens_a_health_recovery(
    fresh_user_sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch, start_listener: StartFn
) -> None:
    import socket

    sb = fresh_user_sandbox
    paths = _paths(sb, monkeypatch)
    unit = "sick.service"
    # A port nobody listens on: bind, note it, close.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    paths.policy_dir.mkdir(parents=True, exist_ok=True)
    (paths.policy_dir / f"{unit}.json").write_text(
        json.dumps(
            {
                "unit": unit,
                "version": 1,
                "health": {
                    "probe": {"kind": "tcp", "target": f"127.0.0.1:{port}", "timeout": 0.5},
                    "interval": 0.1,
                    "failures": 2,
                    "start_period": 0,
                },
            }
        )
    )
    sb.install_units({unit: _unit("no")})
    sb.systemctl("start", unit, check=True)
    running = await start_listener(sb, paths)
    running.engine.restart = False
    await asyncio.wait_for(running.engine.called.wait(), 15)
    name, trigger = running.engine.calls[0]
    assert name == unit
    assert trigger == {"source": "health", "reason": "health"}
    assert running.listener.stats.health_escalations >= 1
    # The unit itself never failed: this came from the probe alone.
    assert sb.show(unit, "ActiveState")["ActiveState"] == "active"


@pytest.mark.asyncio
async def test_daemon_reexec_is_a_gap_and_failures_are_still_seen(
    fresh_user_sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch, start_listener: StartFn
) -> None:
    sb = fresh_user_sandbox
    paths, unit = _watched_unit(sb, monkeypatch, "after-reexec", _unit("no"))
    running = await start_listener(sb, paths)
    before = running.listener.stats.reconciles
    sb.systemctl("daemon-reexec", check=True)
    await _until(lambda: running.listener.stats.reconciles > before, 15)
    await _until(lambda: sb.main_pid(unit) > 0)
    sb.kill_main(unit)
    await asyncio.wait_for(running.engine.called.wait(), 15)
    assert [c[0] for c in running.engine.calls] == [unit]


# The properties the ladder's diagnosis reads (handlers.diagnose.diagnosis_from),
# except ControlGroup, which the cleanup step reads itself when it needs it.
DIAGNOSIS_KEYS = (
    "LoadState",
    "ActiveState",
    "SubState",
    "Result",
    "ExecMainCode",
    "ExecMainStatus",
    "NRestarts",
    "MainPID",
    "PIDFile",
    "InvocationID",
    "Restart",
    "Job",
    "Requires",
    "BindsTo",
    "Wants",
    "After",
    "StateDirectory",
    "LogsDirectory",
)


@pytest.mark.asyncio
@pytest.mark.parametrize("lib", LIBS)
async def test_restart_no_snapshot_from_signals_matches_systemd_and_needs_no_read(
    fresh_user_sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch, start_listener: StartFn, lib: str
) -> None:
    """The diagnosis built from systemd's two signals is what systemd says when asked.

    After the first failure (one full read), a Restart=no unit is handed to the
    ladder without a single bus call between the failed signal and the hand-over.
    """
    sb = fresh_user_sandbox
    # Exits 3 on SIGTERM: a second kind of failure with a different status.
    paths, unit = _watched_unit(
        sb,
        monkeypatch,
        "snap",
        "[Unit]\nStartLimitIntervalSec=0\n[Service]\n"
        "ExecStart=/bin/sh -c 'trap \"exit 3\" TERM; while :; do sleep 1 & wait; done'\n"
        "Restart=no\nWants=basic.target\n",
    )
    running = await start_listener(sb, paths, lib)
    bus = running.listener.bus
    assert bus is not None
    calls: list[str] = []
    original = bus.call

    async def counting(member: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(member)
        return await original(member, *args, **kwargs)

    monkeypatch.setattr(bus, "call", counting)
    engine = running.engine
    for n, (sig, status) in enumerate(((9, 9), (15, 3), (9, 9))):
        engine.restart = False
        engine.called.clear()
        await asyncio.to_thread(sb.wait_for, unit, "active", 10)
        before = len(calls)
        sb.kill_main(unit, sig)
        await asyncio.wait_for(engine.called.wait(), 10)
        made = calls[before:]
        _, trigger = engine.calls[-1]
        # Still failed (the fake engine has not restarted it): systemd's own account.
        actual = await bus.unit_properties(unit)
        snap = trigger["snapshot"]
        assert snap is not None
        for key in DIAGNOSIS_KEYS:
            assert snap[key] == actual[key], (n, key, snap[key], actual[key])
        assert (snap["ExecMainStatus"], trigger["settled"]) == (status, True)
        if n == 0:
            assert "GetAll" in made  # the first failure reads everything once
        else:
            assert made == [], made
        # The ladder's restart: pinned, so systemd does not unload and reload it.
        await bus.reset_and_restart(unit)
    assert running.listener.stats.decided_without_read == 2


@pytest.mark.asyncio
@pytest.mark.parametrize("lib", LIBS)
async def test_restart_no_with_restart_force_exit_status_is_left_to_systemd(
    fresh_user_sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch, start_listener: StartFn, lib: str
) -> None:
    """Restart=no does not mean systemd never restarts it: RestartForceExitStatus= does."""
    sb = fresh_user_sandbox
    paths, unit = _watched_unit(
        sb, monkeypatch, "forced", _unit("no", burst=10, extra="RestartForceExitStatus=SIGKILL\n")
    )
    running = await start_listener(sb, paths, lib)
    listener = running.listener
    for n in (1, 2, 3):
        await _killed_and_restarted_by_systemd(sb, unit, listener, n)
    assert running.engine.calls == []
    assert listener.stats.decided_without_read == 0


@pytest.mark.asyncio
@pytest.mark.parametrize("lib", LIBS)
async def test_a_known_restart_no_unit_is_recovered_with_four_calls_and_no_read(
    fresh_user_sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch, lib: str
) -> None:
    """The whole listener path with the real ladder, from the failed signal to active.

    After a unit's first failure (which reads it once), a later one costs exactly
    RefUnit, ResetFailedUnit, RestartUnit and UnrefUnit: the diagnosis comes from
    the signals and verify applies the signals that follow the restart.
    """
    from handlers.recovery import RecoveryEngine

    sb = fresh_user_sandbox
    paths = _paths(sb, monkeypatch)
    unit = f"known-{uuid.uuid4().hex[:6]}.service"
    paths.policy_dir.mkdir(parents=True, exist_ok=True)
    # No back-off between the two attempts, so the second restart is immediate.
    (paths.policy_dir / f"{unit}.json").write_text(
        json.dumps({"unit": unit, "version": 1, "recovery": {"backoff": {"base": 0.0}}})
    )
    sb.install_units({unit: _unit("no", interval=0)})
    sb.systemctl("start", unit, check=True)
    calls: list[str] = []
    engines: list[RecoveryEngine] = []

    def factory(bus: SystemdBus) -> RecoveryEngine:
        original = bus.call

        async def counting(member: str, *args: Any, **kwargs: Any) -> Any:
            calls.append(member)
            return await original(member, *args, **kwargs)

        bus.call = counting  # type: ignore[method-assign]
        engines.append(RecoveryEngine(bus, paths, read_journal_lines=False))
        return engines[-1]

    listener = Listener(paths, factory, address=sb.bus_address, library=lib, health=False)
    task = asyncio.create_task(listener.run())
    try:
        await asyncio.wait_for(listener.ready.wait(), 15)
        for n in (1, 2):
            await asyncio.to_thread(sb.wait_for, unit, "active", 10)
            first = sb.main_pid(unit)
            calls.clear()
            sb.kill_main(unit)
            await _until(lambda n=n: listener.stats.recoveries >= n, 15)
            assert sb.main_pid(unit) not in (0, first)
            if n == 1:
                # The first failure reads the unit once: the Unit interface whole, and
                # the Service interface's five static keys (the signals brought the rest),
                # at the path the signals came from, without a LoadUnit.
                assert calls.count("GetAll") == 1 and calls.count("Get") == 5, calls
                assert "LoadUnit" not in calls, calls
        assert calls == ["RefUnit", "ResetFailedUnit", "RestartUnit", "UnrefUnit"], calls
        outcome = engines[0].history(unit)[0]
        assert outcome["state"] == "recovered", outcome
    finally:
        listener.stop()
        await asyncio.wait_for(task, 15)
