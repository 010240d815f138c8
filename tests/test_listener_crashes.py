"""Crash reports from the listener's signal sequences, without systemd (the sequences
are systemd 252's, recorded in the sandbox; the real proof is test_crashes_sandbox.py).

One Crashed per crashed invocation, whoever restarts it; none for a run that did not
crash; systemd's restart counted when it starts, not when it is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_listener import FakeBus, SlowEngine, _death, _full, _settle

from handlers.events import Event, EventKind
from handlers.listener import Listener, ListenerOptions
from unitgen.paths import Paths, Scope


class Sink:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def emit(self, event: Event) -> None:
        self.events.append(event)

    def crashed(self) -> list[dict[str, Any]]:
        return [dict(e.fields) for e in self.events if e.kind is EventKind.CRASHED]


def _listener(tmp_path: Path) -> tuple[Listener, FakeBus, SlowEngine, Sink, list[str]]:
    paths = Paths(Scope.USER, tmp_path / "p", tmp_path / "s", tmp_path / "r", tmp_path / "u")
    sink, restarts = Sink(), []
    listener = Listener(
        paths,
        lambda bus: SlowEngine(bus),
        globs=["*.service"],
        trigger_factory=dict,
        options=ListenerOptions(),
        health=False,
        events=sink,
        on_systemd_restart=restarts.append,
    )
    listener.watch.rescan()
    bus, engine = FakeBus(), SlowEngine()
    engine.gate.set()
    listener._bus = bus  # type: ignore[assignment]
    listener._engine = engine
    listener.connected.set()
    listener._spawn(listener.queue.worker(), "w")
    return listener, bus, engine, sink, restarts


def _running(unit: str, inv: str, active: str = "activating", sub: str = "start") -> list[Any]:
    return _death(unit, inv, active=active, sub=sub, result="success")


async def _send(listener: Listener, msgs: list[Any]) -> None:
    for msg in msgs:
        listener._on_signal(msg)
    await _settle(listener)


@pytest.mark.asyncio
async def test_a_crash_systemd_restarts_is_reported_once_and_its_restart_counted(
    tmp_path: Path,
) -> None:
    listener, bus, engine, sink, restarts = _listener(tmp_path)
    unit, inv = "r.service", "01" * 16
    # The worker's read comes late: systemd has already started the next run (02), so
    # the answer is about a run that did not crash. No report from it.
    bus.states[unit] = {**_full("02" * 16, "on-failure"), "ActiveState": "activating"}
    bus.states[unit].update(SubState="start", Result="success")
    await _send(listener, _death(unit, inv, status=3, result="exit-code"))
    assert sink.crashed() == []
    assert listener.stats.systemd_restarting == 1 and engine.calls == []
    # The auto-restart signal of the crashed run reports it; the next run's start is
    # systemd's restart.
    await _send(listener, _death(unit, inv, 3, active="activating", sub="auto-restart",
                                 result="exit-code"))  # fmt: skip
    (crash,) = sink.crashed()
    assert crash == {
        "unit_result": "exit-code",
        "exit_code": "exited",
        "exit_status": 3,
        "n_restarts": 0,
        "restarted_by": "systemd",
        "invocation_id": inv,
    }
    assert restarts == []
    await _send(
        listener, [*_running(unit, "02" * 16), *_running(unit, "02" * 16, "active", "running")]
    )
    assert restarts == [unit]
    assert len(sink.crashed()) == 1 and listener.crashes.count == 1
    listener._stop.set()
    await listener._teardown()


@pytest.mark.asyncio
async def test_a_start_limit_give_up_is_one_crash_and_no_restart_by_systemd(
    tmp_path: Path,
) -> None:
    listener, bus, engine, sink, restarts = _listener(tmp_path)
    unit, inv = "g.service", "07" * 16
    bus.states[unit] = {**_full(inv, "on-failure"), "ActiveState": "activating"}
    bus.states[unit]["SubState"] = "auto-restart"
    job = (77, "/org/freedesktop/systemd1/job/77")
    await _send(listener, [
        *_death(unit, inv),
        *_death(unit, inv, active="activating", sub="auto-restart"),
        *_death(unit, inv, active="activating", sub="auto-restart", job=job),
    ])  # fmt: skip
    bus.states[unit] = _full(inv, "on-failure")
    await _send(listener, [
        *_death(unit, inv, active="inactive", sub="dead", job=job),
        *_death(unit, inv, job=job),
    ])  # fmt: skip
    assert len(engine.calls) == 1  # the ladder took it
    (crash,) = sink.crashed()
    assert crash["restarted_by"] == "systemd" and crash["invocation_id"] == inv
    assert restarts == []  # systemd's restart was refused: not counted as one
    listener._stop.set()
    await listener._teardown()


@pytest.mark.asyncio
async def test_a_crash_handed_to_the_ladder_is_reported_before_it_and_once(
    tmp_path: Path,
) -> None:
    listener, bus, engine, sink, restarts = _listener(tmp_path)
    unit, inv = "n.service", "03" * 16
    bus.states[unit] = _full(inv, "no")
    await _send(listener, _death(unit, inv))
    await _send(listener, _death(unit, inv))  # the same invocation again
    (crash,) = sink.crashed()
    assert crash["restarted_by"] == "ladder" and crash["unit_result"] == "signal"
    assert crash["exit_code"] == "killed" and crash["exit_status"] == 9
    kinds = [e.kind for e in sink.events]
    assert kinds == [EventKind.CRASHED]  # the fake engine emits nothing itself
    assert len(engine.calls) == 1 and restarts == []
    listener._stop.set()
    await listener._teardown()


@pytest.mark.asyncio
async def test_a_clean_exit_systemd_restarts_is_not_a_crash(tmp_path: Path) -> None:
    listener, _bus, _engine, sink, restarts = _listener(tmp_path)
    unit, inv = "a.service", "04" * 16
    await _send(listener, _death(unit, inv, 0, active="activating", sub="auto-restart",
                                 result="success"))  # fmt: skip
    await _send(listener, _running(unit, "05" * 16))
    assert sink.crashed() == [] and restarts == []
    listener._stop.set()
    await listener._teardown()
