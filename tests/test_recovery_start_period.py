"""A ladder restart gives a slow starter its health start_period before judging it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from clocks import FakeClock
from policyfiles import private_paths, write_policy
from test_recovery import FakeBus, FakeUnit, _engine

from handlers.ladder import State
from handlers.recovery import Trigger
from unitgen.model import Health, Probe
from unitgen.policy import Policy

MAIN = Probe("tcp", "127.0.0.1:1")
STARTUP = Probe("tcp", "127.0.0.1:2")


def _runner(
    fail_first: int, seen: list[str]
) -> Callable[[Probe, int], Awaitable[tuple[bool, str]]]:
    async def run(probe: Probe, attempts: int) -> tuple[bool, str]:
        seen.append(str(probe.target))
        return len(seen) > fail_first, f"probe {len(seen)}"

    return run


@pytest.mark.asyncio
async def test_slow_start_after_a_ladder_restart_is_waited_for(tmp_path: Path) -> None:
    clock = FakeClock()
    health = Health(MAIN, start_period=60.0, start_interval=2.0, startup=STARTUP)
    write_policy(private_paths(tmp_path), Policy(unit="api.service", health=health))
    bus = FakeBus(FakeUnit("api.service", state="active"), clock=clock)
    seen: list[str] = []
    engine, _sink, _alerter = _engine(tmp_path, bus, clock, probe_runner=_runner(10, seen))
    out = await engine.recover("api.service", Trigger("health", reason="http 500"))
    await engine.aclose()
    # Ten refused start-up probes, 2 s apart, then a pass: one restart, recovered.
    assert out.state is State.RECOVERED, out
    assert bus.restarted() == ["api.service"]
    assert seen == ["127.0.0.1:2"] * 11
    assert clock.sleeps.count(2.0) >= 10


@pytest.mark.asyncio
async def test_start_period_running_out_fails_the_attempt(tmp_path: Path) -> None:
    clock = FakeClock()
    health = Health(MAIN, start_period=5.0, start_interval=2.0)
    policy = Policy(unit="api.service", health=health)
    write_policy(private_paths(tmp_path), policy)
    bus = FakeBus(FakeUnit("api.service", state="active"), clock=clock)
    seen: list[str] = []
    engine, sink, _alerter = _engine(tmp_path, bus, clock, probe_runner=_runner(10**6, seen))
    await engine.recover("api.service", Trigger("health", reason="http 500"))
    await engine.aclose()
    # Probed at 0, 2, 4 and 5 s (never past the period), then that attempt failed.
    assert len(seen) == 4
    assert [s for s in clock.sleeps if s in (1.0, 2.0)] == [2.0, 2.0, 1.0]
    details = [str(e.fields.get("detail", "")) for e in sink.events]
    assert any("not healthy within start_period 5s: probe 4" in d for d in details), details
