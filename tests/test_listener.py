"""Listener pieces without systemd: watch set, queue, health scheduler, sd_notify."""

from __future__ import annotations

import asyncio
import fnmatch
import json
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from listener_fakes import EngineHooks

from handlers.bus import SERVICE, UNIT, UNIT_PATH_PREFIX, signal_rules, unit_path
from handlers.health import HealthScheduler
from handlers.ladder import State
from handlers.listener import Listener, ListenerOptions
from handlers.notify import Notifier
from handlers.probes import ProbeResult, ProbeSpec
from handlers.recovery import Outcome
from handlers.watchset import WatchSet
from unitgen.model import Health, Probe
from unitgen.paths import Paths, Scope

# -- watch set -----------------------------------------------------------------------


def _policies(d: Path, *units: str) -> None:
    d.mkdir(parents=True, exist_ok=True)
    for u in units:
        (d / f"{u}.json").write_text(json.dumps({"unit": u, "version": 1}))


def test_watchset_policies_templates_and_globs(tmp_path: Path) -> None:
    _policies(tmp_path, "api.service", "worker@.service")
    (tmp_path / "notes.txt").write_text("not a policy")
    (tmp_path / "../evil.json").write_text("{}")
    ws = WatchSet(tmp_path, ["db-*.service"])
    ws.rescan()
    assert "api.service" in ws
    assert "worker@1.service" in ws and "worker@a-b.service" in ws
    assert "worker@.service" not in ws or "worker@.service" in ws.templates
    assert "worker@1.socket" not in ws
    assert "db-main.service" in ws
    assert "api2.service" not in ws and "other.service" not in ws
    assert sorted(ws.patterns()) == ["api.service", "db-*.service", "worker@*.service"]
    assert ws.policy_key("worker@7.service") == "worker@.service"
    assert ws.policy_key("api.service") == "api.service"
    assert ws.policy_key("db-main.service") == "db-main.service"


def test_watchset_missing_dir_and_rescan(tmp_path: Path) -> None:
    ws = WatchSet(tmp_path / "absent")
    ws.rescan()
    assert "api.service" not in ws
    _policies(tmp_path / "absent", "api.service")
    assert "api.service" not in ws  # cached until the next rescan
    ws.rescan()
    assert "api.service" in ws


def test_watchset_ignores_bad_policy_names(tmp_path: Path) -> None:
    tmp_path.mkdir(exist_ok=True)
    for bad in ("has space.service", "no-suffix", ".hidden.service", "Upper.SERVICE"):
        (tmp_path / f"{bad}.json").write_text("{}")
    ws = WatchSet(tmp_path)
    ws.rescan()
    assert ws.units == frozenset() and ws.templates == frozenset()


@given(st.text(max_size=80))
def test_watchset_any_name_is_answered(name: str) -> None:
    ws = WatchSet(Path("/nonexistent-unitgen"), ["*.service", "w@*.socket"])
    ws.rescan()
    expected = fnmatch.fnmatchcase(name, "*.service") or fnmatch.fnmatchcase(name, "w@*.socket")
    assert (name in ws) is expected
    assert (name in ws) is expected  # the cached answer is the same


def test_match_rules_are_narrow() -> None:
    rules = signal_rules()
    props = [r for r in rules if "PropertiesChanged" in r]
    # Unit and Service only, each filtered on arg0 under the unit namespace.
    assert sorted(r.split("arg0='")[1].rstrip("'") for r in props) == [SERVICE, UNIT]
    assert all(f"path_namespace='{UNIT_PATH_PREFIX}'" in r for r in props)
    members = {r.split("member='")[1].split("'")[0] for r in rules}
    assert members == {
        "PropertiesChanged",
        "UnitNew",
        "UnitRemoved",
        "JobRemoved",
        "Reloading",
        "NameOwnerChanged",
    }
    assert all("sender='" in r for r in rules)


# -- queue, dedupe, concurrency (a fake bus and engine) -----------------------------


@dataclass
class FakeVariant:
    signature: str
    value: Any


@dataclass
class Msg:
    member: str
    body: list[Any]
    path: str = "/org/freedesktop/systemd1"


@dataclass
class FakeBus:
    states: dict[str, dict[str, Any]] = field(default_factory=dict)
    closed: bool = False
    reads: list[str] = field(default_factory=list)  # "all" or the property's name

    async def unit_properties(
        self, name: str, service_keys: Any = (), path: str | None = None
    ) -> dict[str, Any]:
        self.reads.append("all")
        return await self._read(name)

    async def _read(self, name: str) -> dict[str, Any]:
        await asyncio.sleep(0)
        return dict(self.states.get(name, {"ActiveState": "inactive", "SubState": "dead"}))

    async def get_property(self, name: str, prop: str) -> Any:
        self.reads.append(prop)
        return (await self._read(name)).get(prop, "")

    async def close(self) -> None:
        self.closed = True


@dataclass
class SlowEngine(EngineHooks):
    bus: Any = None
    running: int = 0
    peak: int = 0
    per_unit: dict[str, int] = field(default_factory=dict)
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    gate: asyncio.Event = field(default_factory=asyncio.Event)

    async def recover(self, unit: str, trigger: dict[str, Any]) -> Outcome:
        self.calls.append((unit, trigger))
        self.running += 1
        self.per_unit[unit] = self.per_unit.get(unit, 0) + 1
        assert self.per_unit[unit] == 1, "one unit handled twice at once"
        self.peak = max(self.peak, self.running)
        await self.gate.wait()
        self.per_unit[unit] -= 1
        self.running -= 1
        return Outcome(unit, State.RECOVERED, "", 1, "")

    async def aclose(self) -> None:
        pass


def _listener(tmp_path: Path, **opts: Any) -> tuple[Listener, FakeBus, SlowEngine]:
    paths = Paths(Scope.USER, tmp_path / "p", tmp_path / "s", tmp_path / "r", tmp_path / "u")
    listener = Listener(
        paths,
        lambda bus: SlowEngine(bus),
        globs=["*.service"],
        trigger_factory=dict,
        options=ListenerOptions(**opts),
        health=False,
    )
    listener.watch.rescan()
    bus, engine = FakeBus(), SlowEngine()
    listener._bus = bus  # type: ignore[assignment]
    listener._engine = engine
    listener.connected.set()
    return listener, bus, engine


def _failed(unit: str, inv: str = "ab" * 16) -> dict[str, Any]:
    return {
        "ActiveState": "failed",
        "SubState": "failed",
        "InvocationID": bytes.fromhex(inv),
        "Result": "signal",
    }


def _changed(unit: str, active: str, sub: str) -> Msg:
    return Msg(
        "PropertiesChanged",
        [
            UNIT,
            {"ActiveState": FakeVariant("s", active), "SubState": FakeVariant("s", sub)},
            [],
        ],
        unit_path(unit),
    )


async def _settle(listener: Listener) -> None:
    for _ in range(50):
        await asyncio.sleep(0)


@pytest.mark.asyncio
async def test_flood_is_coalesced_bounded_and_counted(tmp_path: Path) -> None:
    listener, bus, engine = _listener(tmp_path, max_pending=10, max_concurrency=2)
    for i in range(30):
        bus.states[f"u{i}.service"] = _failed(f"u{i}.service", f"{i:032x}")
    # 30 distinct failing units x 100 signals each, no worker running yet.
    for _ in range(100):
        for i in range(30):
            listener._on_signal(_changed(f"u{i}.service", "failed", "failed"))
    assert listener.queue.pending() == 10
    assert listener.queue.dropped == 20 * 100
    assert listener.queue.coalesced == 10 * 99
    assert listener.queue.resync  # a reconcile is due once the queue drains
    for i in range(2):
        listener._spawn(listener.queue.worker(), f"w{i}")
    await _settle(listener)
    assert engine.peak == 2  # the global concurrency limit
    engine.gate.set()
    await _settle(listener)
    assert sorted(c[0] for c in engine.calls) == sorted(f"u{i}.service" for i in range(10))
    listener._stop.set()
    await listener._teardown()


@pytest.mark.asyncio
async def test_one_unit_at_a_time_and_once_per_invocation(tmp_path: Path) -> None:
    listener, bus, engine = _listener(tmp_path, max_concurrency=4)
    bus.states["a.service"] = _failed("a.service")
    for i in range(4):
        listener._spawn(listener.queue.worker(), f"w{i}")
    listener._on_signal(_changed("a.service", "failed", "failed"))
    await _settle(listener)
    assert len(engine.calls) == 1
    # More failed signals of the same invocation while it is being handled.
    for _ in range(5):
        listener._on_signal(_changed("a.service", "failed", "failed"))
    await _settle(listener)
    engine.gate.set()
    await _settle(listener)
    assert len(engine.calls) == 1
    assert listener.stats.duplicates >= 1
    # A new invocation fails: handled again.
    bus.states["a.service"] = _failed("a.service", "cd" * 16)
    listener._on_signal(_changed("a.service", "failed", "failed"))
    await _settle(listener)
    assert len(engine.calls) == 2
    assert engine.calls[1][1]["invocation_id"] == "cd" * 16
    listener._stop.set()
    await listener._teardown()


@pytest.mark.asyncio
async def test_a_burst_of_recoveries_sends_one_status_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import handlers.listener as listener_mod

    monkeypatch.setattr(listener_mod, "STATUS_INTERVAL", 0.05)
    listener, bus, engine = _listener(tmp_path, max_concurrency=4)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(tmp_path / "notify"))
        server.setblocking(False)
        listener._notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "notify")})
        engine.gate.set()
        for i in range(4):
            listener._spawn(listener.queue.worker(), f"w{i}")
        for i in range(20):
            bus.states[f"u{i}.service"] = _failed(f"u{i}.service", f"{i:032x}")
            listener._on_signal(_changed(f"u{i}.service", "failed", "failed"))
        await _settle(listener)
        assert len(engine.calls) == 20
        await asyncio.wait_for(asyncio.get_running_loop().sock_recv(server, 4096), 5)
        # All 20 were recovered before the line went out, and nothing is scheduled:
        # that one datagram is all there is.
        assert listener._status_handle is None
        with pytest.raises(BlockingIOError):
            server.recv(4096)
        listener._stop.set()
        await listener._teardown()


@pytest.mark.asyncio
async def test_stands_down_when_systemd_restarts_it(tmp_path: Path) -> None:
    listener, bus, engine = _listener(tmp_path)
    listener._spawn(listener.queue.worker(), "w")
    # The failed signal is already stale: the round trip shows auto-restart.
    bus.states["r.service"] = {"ActiveState": "activating", "SubState": "auto-restart"}
    listener._on_signal(_changed("r.service", "failed", "failed"))
    await _settle(listener)
    assert engine.calls == []
    assert listener.stats.systemd_restarting == 1
    listener._stop.set()
    await listener._teardown()


def _full(inv: str, restart: str, force: tuple[list[int], list[int]] = ([], [])) -> dict[str, Any]:
    """What LoadUnit + GetAll(Unit, Service) return for a killed unit (the keys used)."""
    return {
        "LoadState": "loaded",
        "ActiveState": "failed",
        "SubState": "failed",
        "InvocationID": bytes.fromhex(inv),
        "Job": (0, "/"),
        "Result": "signal",
        "ExecMainCode": 2,
        "ExecMainStatus": 9,
        "NRestarts": 0,
        "MainPID": 0,
        "Restart": restart,
        "RestartForceExitStatus": force,
        "PIDFile": "",
        "Requires": [],
        "BindsTo": [],
        "Wants": [],
        "After": [],
        "StateDirectory": [],
        "LogsDirectory": [],
    }


def _death(
    unit: str,
    inv: str,
    status: int = 9,
    *,
    active: str = "failed",
    sub: str = "failed",
    job: tuple[int, str] = (0, "/"),
    result: str = "signal",
) -> list[Msg]:
    """systemd's two signals for one state: the Service interface's first, then Unit's."""
    v = FakeVariant
    service = {
        "Result": v("s", result),
        "ExecMainCode": v("i", 2 if result == "signal" else 1),
        "ExecMainStatus": v("i", status),
        "NRestarts": v("u", 0),
        "MainPID": v("u", 0),
        "StatusText": v("s", "ignored"),
    }
    unit_props = {
        "ActiveState": v("s", active),
        "SubState": v("s", sub),
        "InvocationID": v("ay", bytes.fromhex(inv)),
        "Job": v("(uo)", job),
    }
    return [
        Msg("PropertiesChanged", [SERVICE, service, ["ExecStart"]], unit_path(unit)),
        Msg("PropertiesChanged", [UNIT, unit_props, ["Conditions"]], unit_path(unit)),
    ]


async def _fail_once(listener: Listener, bus: FakeBus, unit: str, inv: str) -> None:
    bus.reads.clear()
    for msg in _death(unit, inv):
        listener._on_signal(msg)
    await _settle(listener)


@pytest.mark.asyncio
async def test_restart_no_unit_is_handed_over_on_its_signals_alone(tmp_path: Path) -> None:
    listener, bus, engine = _listener(tmp_path)
    engine.gate.set()
    listener._spawn(listener.queue.worker(), "w")
    unit = "n.service"
    bus.states[unit] = _full("01" * 16, "no")
    # First failure: one full read, which is both the decision and the diagnosis.
    await _fail_once(listener, bus, unit, "01" * 16)
    assert bus.reads == ["all"]
    assert engine.calls[-1][1]["snapshot"]["Restart"] == "no"
    # Second failure: systemd cannot restart a Restart=no unit, so no read at all,
    # and the snapshot is built from the two signals (exit status 9 from Service's).
    bus.states[unit] = _full("02" * 16, "no")
    await _fail_once(listener, bus, unit, "02" * 16)
    assert bus.reads == []
    assert listener.stats.decided_without_read == 1
    _, trigger = engine.calls[-1]
    assert trigger["invocation_id"] == "02" * 16
    assert trigger["settled"] is True
    snap = trigger["snapshot"]
    assert (snap["Result"], snap["ExecMainCode"], snap["ExecMainStatus"]) == ("signal", 2, 9)
    assert snap["LoadState"] == "loaded" and "StatusText" not in snap
    assert len(engine.calls) == 2
    # A reload may have changed Restart=: the next failure reads everything again.
    listener._on_signal(Msg("Reloading", [True]))
    bus.states[unit] = _full("03" * 16, "no")
    await _fail_once(listener, bus, unit, "03" * 16)
    assert bus.reads == ["all"]
    listener._stop.set()
    await listener._teardown()


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("restart", "force"),
    [("on-failure", ([], [])), ("no", ([], [9])), ("no", ([3], []))],
)
async def test_units_systemd_may_restart_still_get_the_round_trip(
    tmp_path: Path, restart: str, force: tuple[list[int], list[int]]
) -> None:
    listener, bus, engine = _listener(tmp_path)
    engine.gate.set()
    listener._spawn(listener.queue.worker(), "w")
    unit = "r.service"
    bus.states[unit] = _full("01" * 16, restart, force)
    await _fail_once(listener, bus, unit, "01" * 16)
    # Second failure, but systemd's reply shows its own restart under way.
    bus.states[unit] = {**_full("02" * 16, restart, force), "SubState": "auto-restart"}
    bus.states[unit]["ActiveState"] = "activating"
    await _fail_once(listener, bus, unit, "02" * 16)
    assert sorted(bus.reads) == ["ActiveState", "InvocationID", "Job", "SubState"]
    assert listener.stats.decided_without_read == 0
    assert listener.stats.systemd_restarting == 1
    assert len(engine.calls) == 1
    listener._stop.set()
    await listener._teardown()


@pytest.mark.asyncio
async def test_start_limit_give_up_is_decided_on_the_signals(tmp_path: Path) -> None:
    """systemd 252 at the start limit, as recorded in the sandbox: failed, auto-restart,
    the restart job queued, then inactive and failed with that job still attached, all
    of one invocation. systemd gave up: no read, and the refused job is not a restart."""
    listener, bus, engine = _listener(tmp_path)
    engine.gate.set()
    listener._spawn(listener.queue.worker(), "w")
    unit, inv = "g.service", "07" * 16
    bus.states[unit] = _full("06" * 16, "on-failure")
    await _fail_once(listener, bus, unit, "06" * 16)  # the first failure reads the unit
    assert len(engine.calls) == 1
    bus.reads.clear()
    # A failure systemd restarts: the round trip shows auto-restart, the listener stands down.
    bus.states[unit] = {**_full(inv, "on-failure"), "ActiveState": "activating"}
    bus.states[unit]["SubState"] = "auto-restart"
    job = (77, "/org/freedesktop/systemd1/job/77")
    sequence = [
        *_death(unit, inv),
        *_death(unit, inv, active="activating", sub="auto-restart"),
        *_death(unit, inv, active="activating", sub="auto-restart", job=job),
    ]
    for msg in sequence:
        listener._on_signal(msg)
    await _settle(listener)
    assert len(engine.calls) == 1 and listener.stats.systemd_restarting == 1
    bus.reads.clear()
    # The refused start: from here on, a read would answer failed/failed.
    bus.states[unit] = _full(inv, "on-failure")
    for msg in [
        *_death(unit, inv, active="inactive", sub="dead", job=job),
        *_death(unit, inv, job=job),
    ]:
        listener._on_signal(msg)
    await _settle(listener)
    assert bus.reads == []
    assert listener.stats.start_limit == 1
    assert len(engine.calls) == 2
    _, trigger = engine.calls[-1]
    assert trigger["result"] == "start-limit-hit" and trigger["invocation_id"] == inv
    assert trigger["snapshot"]["Job"] == (0, "/")
    # The same invocation again (the job's removal, JobRemoved): handled once.
    for msg in _death(unit, inv):
        listener._on_signal(msg)
    listener._on_signal(Msg("JobRemoved", [77, job[1], unit, "failed"]))
    await _settle(listener)
    assert len(engine.calls) == 2 and listener.stats.duplicates >= 1
    listener._stop.set()
    await listener._teardown()


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("restart", "result", "reads"),
    [
        ("on-abnormal", "exit-code", []),  # not covered: systemd will not restart it
        ("on-watchdog", "signal", []),
        ("always", "start-limit-hit", []),
        ("on-failure", "exit-code", ["ActiveState", "InvocationID", "Job", "SubState"]),
    ],
)
async def test_a_result_restart_does_not_cover_needs_no_round_trip(
    tmp_path: Path, restart: str, result: str, reads: list[str]
) -> None:
    listener, bus, engine = _listener(tmp_path)
    engine.gate.set()
    listener._spawn(listener.queue.worker(), "w")
    unit = "c.service"
    bus.states[unit] = _full("01" * 16, restart)
    await _fail_once(listener, bus, unit, "01" * 16)
    bus.states[unit] = {**_full("02" * 16, restart), "Result": result}
    bus.reads.clear()
    for msg in _death(unit, "02" * 16, 1, result=result):
        listener._on_signal(msg)
    await _settle(listener)
    assert sorted(bus.reads) == reads
    assert len(engine.calls) == 2
    listener._stop.set()
    await listener._teardown()


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(
                ["PropertiesChanged", "UnitNew", "UnitRemoved", "JobRemoved", "Reloading", "X"]
            ),
            st.lists(
                st.one_of(st.text(max_size=20), st.integers(), st.booleans(), st.none()),
                max_size=5,
            ),
            st.text(max_size=60),
        ),
        max_size=30,
    )
)
def test_hostile_signals_never_break_the_listener(events: list[tuple[str, list[Any], str]]) -> None:
    async def go() -> None:
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            listener, _bus, _engine = _listener(Path(d), max_pending=5)
            for member, body, path in events:
                listener._on_signal(Msg(member, body, path))
            assert listener.queue.pending() <= 5
            assert listener.stats.signals == len(events)
            await listener._teardown()

    asyncio.run(go())


# -- health ------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_health_failures_escalate_once_and_slow_probes_do_not_block() -> None:
    unhealthy: list[str] = []
    probed: list[str] = []
    escalated = asyncio.Event()

    def on_unhealthy(unit: str, detail: str) -> None:
        unhealthy.append(unit)
        escalated.set()

    async def prober(spec: ProbeSpec) -> ProbeResult:
        probed.append(str(spec.target))
        if spec.target == "127.0.0.1:2":
            await asyncio.sleep(30)  # a hung probe
        return ProbeResult(spec.target == "127.0.0.1:3", "detail", 0.0)

    sched = HealthScheduler(on_unhealthy, prober=prober, max_concurrent=4)

    def health(port: int) -> Health:
        probe = Probe("tcp", f"127.0.0.1:{port}", timeout=0.5)
        return Health(probe, interval=0.05, failures=3, start_period=0.0)

    sched.configure({"bad.service": health(1), "slow.service": health(2), "ok.service": health(3)})
    for u in ("bad.service", "slow.service", "ok.service"):
        sched.set_active(u, True)
    await asyncio.wait_for(escalated.wait(), 5)
    assert unhealthy.count("bad.service") == 1
    assert "ok.service" not in unhealthy
    assert probed.count("127.0.0.1:3") >= 2  # kept probing while the slow one hangs
    sched.set_active("bad.service", False)
    before = probed.count("127.0.0.1:1")
    await asyncio.sleep(0.3)
    assert probed.count("127.0.0.1:1") == before  # inactive units are not probed
    await sched.close()


# -- sd_notify -----------------------------------------------------------------------


def test_notify_abstract_socket_and_watchdog_env() -> None:
    name = f"unitgen-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(b"\0" + name.encode())
        server.settimeout(2)
        n = Notifier({"NOTIFY_SOCKET": f"@{name}", "WATCHDOG_USEC": "2000000"})
        assert n.enabled and n.watchdog_interval == 1.0
        assert n.ready("watching 3 units")
        assert server.recv(4096) == b"READY=1\nSTATUS=watching 3 units"
        assert n.status("multi\nline")
        assert server.recv(4096) == b"STATUS=multi line"
        assert n.watchdog()
        assert server.recv(4096) == b"WATCHDOG=1"
        n.close()


def test_notify_path_socket(tmp_path: Path) -> None:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        server.settimeout(2)
        n = Notifier({"NOTIFY_SOCKET": str(path)})
        assert n.stopping()
        assert server.recv(4096) == b"STOPPING=1"
        n.close()


@pytest.mark.parametrize(
    ("env", "enabled", "interval"),
    [
        ({}, False, None),
        ({"NOTIFY_SOCKET": "relative/path"}, False, None),
        ({"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "0"}, True, None),
        ({"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "junk"}, True, None),
        ({"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"}, True, None),
    ],
)
def test_notify_env_rules(env: dict[str, str], enabled: bool, interval: float | None) -> None:
    n = Notifier(env)
    assert n.enabled is enabled
    assert n.watchdog_interval == interval
    n.close()


def test_notify_to_a_dead_socket_does_not_raise(tmp_path: Path) -> None:
    n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    assert n.ready() is False
    n.close()
