"""Property: whatever the failures and triggers, the ladder never restarts a unit more than
max_attempts times within any window, and never sooner than the back-off allows."""

from __future__ import annotations

import asyncio
import random
import tempfile
from pathlib import Path

from clocks import FakeClock
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_recovery import FakeBus, FakeUnit, _paths, _write_policy

from handlers.backoff import delay_for
from handlers.recovery import RecoveryEngine, Trigger
from unitgen.model import Backoff, Recovery
from unitgen.policy import Policy

REC = Recovery(
    max_attempts=4,
    window=300.0,
    min_uptime=20.0,
    stable_after=300.0,  # >= window: decay never forgives inside a window
    start_timeout=5.0,
    backoff=Backoff(base=2.0, factor=2.0, max=30.0, jitter=0.0),
)

EVENT = st.tuples(
    st.floats(min_value=0.0, max_value=200.0),  # time until the next failure
    st.sampled_from(["active", "failed", "auto-restart"]),  # what the next restart does
    st.sampled_from(["onfailure", "listener", "reconcile", "health"]),
)


class TimedBus(FakeBus):
    def __init__(self, unit: FakeUnit, clock: FakeClock) -> None:
        super().__init__(unit, clock=clock)
        self.restart_times: list[float] = []

    async def restart(self, name: str, mode: str = "replace") -> str:
        assert self.clock is not None
        self.restart_times.append(self.clock.mono)
        return await super().restart(name, mode)


async def _scenario(events: list[tuple[float, str, str]], base: Path) -> list[float]:
    clock = FakeClock()
    outcomes = iter([e[1] for e in events] + ["failed"] * 100)
    unit = FakeUnit("api.service", behaviour=lambda n: next(outcomes))
    bus = TimedBus(unit, clock)
    _write_policy(_paths(base), Policy(unit="api.service", recovery=REC))
    engine = RecoveryEngine(
        bus,
        _paths(base),
        clock=clock,
        rng=random.Random(1),
        read_journal_lines=False,
        alerter_factory=lambda p: None,
    )
    for i, (gap, _what, source) in enumerate(events):
        clock.advance(gap)
        # The unit fails again (or, for a health trigger, is up but unhealthy).
        if source == "health":
            unit.props.update(ActiveState="active", SubState="running")
        else:
            unit.props.update(ActiveState="failed", SubState="failed", Result="exit-code")
        await engine.recover("api.service", Trigger(source, invocation_id=f"{i:032x}"))  # type: ignore[arg-type]
    await engine.aclose()
    return bus.restart_times


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(EVENT, min_size=1, max_size=25))
def test_no_restart_storm(events: list[tuple[float, str, str]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        times = asyncio.run(_scenario(events, Path(tmp)))
    for i, t in enumerate(times):
        in_window = [u for u in times[: i + 1] if u > t - REC.window]
        assert len(in_window) <= REC.max_attempts, (times, i)
    # Consecutive restarts within a window are spaced by at least the back-off.
    for i in range(1, len(times)):
        earlier = [u for u in times[:i] if u > times[i] - REC.window]
        if earlier:
            needed = delay_for(len(earlier) + 1, REC.backoff, random.Random(1))
            assert times[i] - times[i - 1] >= needed - 1e-6, (times, i)
