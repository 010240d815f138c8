"""Start periods, start-up probes, success thresholds and the gate's loop, as pure logic.

The probes are fakes here; the real ones run against real servers in
test_probes_match.py, and the whole on a real manager in
test_health_start_sandbox.py.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

import pytest
from clocks import FakeClock

from handlers.events import Event
from handlers.gate import main as gate_main
from handlers.gate import wait_healthy
from handlers.health import HealthScheduler
from handlers.probes import ProbeResult, ProbeSpec
from unitgen.model import Health, Probe
from unitgen.policy import Policy, to_json

MAIN = Probe("tcp", "127.0.0.1:1", timeout=0.2)
STARTUP = Probe("tcp", "127.0.0.1:2", timeout=0.2)


class Sink:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def emit(self, event: Event) -> None:
        self.events.append(event)

    def healthy(self) -> list[object]:
        return [e.fields.get("healthy") for e in self.events]


def scripted(answers: Callable[[ProbeSpec, int], bool], log: list[str]) -> Callable[..., object]:
    async def prober(spec: ProbeSpec) -> ProbeResult:
        log.append(str(spec.target))
        return ProbeResult(answers(spec, len(log)), f"probe {len(log)}", 0.0)

    return prober


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:  # noqa: ASYNC109
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


@pytest.mark.asyncio
async def test_failures_in_the_start_period_do_not_count() -> None:
    unhealthy: list[str] = []
    probed: list[str] = []
    # Refused for the first 10 probes (a slow starter), then up, then down for good.
    state = {"up_after": 10, "down_after": 10_000}

    def answer(_: ProbeSpec, n: int) -> bool:
        return state["up_after"] < n <= state["down_after"]

    sink = Sink()
    sched = HealthScheduler(
        lambda u, d: unhealthy.append(d), prober=scripted(answer, probed), events=sink
    )
    health = Health(MAIN, interval=0.05, failures=2, start_period=30.0, start_interval=0.02)
    sched.configure({"slow.service": health})
    sched.set_active("slow.service", True)
    await until(lambda: sink.healthy() == [True])
    assert unhealthy == [] and len(probed) == 11
    # Started: from now on failures count, at the normal interval.
    state["down_after"] = len(probed)
    await until(lambda: bool(unhealthy))
    assert unhealthy == ["probe 13"]  # two failures after the start, not twelve
    await sched.close()


@pytest.mark.asyncio
async def test_start_period_running_out_escalates_once() -> None:
    unhealthy: list[str] = []
    probed: list[str] = []
    sched = HealthScheduler(
        lambda u, d: unhealthy.append(d), prober=scripted(lambda s, n: False, probed)
    )
    health = Health(MAIN, interval=10.0, failures=3, start_period=0.3, start_interval=0.02)
    sched.configure({"never.service": health})
    loop = asyncio.get_running_loop()
    began = loop.time()
    sched.set_active("never.service", True)
    await until(lambda: bool(unhealthy))
    assert loop.time() - began >= 0.3
    assert len(unhealthy) == 1
    assert unhealthy[0].startswith("not healthy within start_period 0.3s: probe ")
    await sched.close()


@pytest.mark.asyncio
async def test_startup_probe_then_the_probe_and_reconciles_do_not_restart_the_period() -> None:
    probed: list[str] = []
    sched = HealthScheduler(lambda u, d: None, prober=scripted(lambda s, n: n >= 3, probed))
    health = Health(
        MAIN, interval=0.02, start_period=30.0, start_interval=0.02, startup=STARTUP, successes=2
    )
    sched.configure({"api.service": health})
    sched.set_active("api.service", True)
    await until(lambda: len(probed) >= 3)
    sched.set_active("api.service", True)  # a reconcile: the same run, the same period
    await until(lambda: len(probed) >= 7)
    # Two passes of the start-up probe (3 and 4) end the start; the probe takes over.
    assert probed[:4] == ["127.0.0.1:2"] * 4
    assert set(probed[4:]) == {"127.0.0.1:1"}
    await sched.close()


@pytest.mark.asyncio
async def test_successes_threshold_before_healthy_again() -> None:
    pattern = [False, False, True, False, True, True, True]  # after start_period=0

    def answer(_: ProbeSpec, n: int) -> bool:
        return pattern[n - 1] if n <= len(pattern) else True

    unhealthy: list[str] = []
    probed: list[str] = []
    sink = Sink()
    sched = HealthScheduler(
        lambda u, d: unhealthy.append(d), prober=scripted(answer, probed), events=sink
    )
    health = Health(MAIN, interval=0.02, failures=2, successes=3, start_period=0.0)
    sched.configure({"api.service": health})
    sched.set_active("api.service", True)
    await until(lambda: len(sink.events) == 2)
    assert sink.healthy() == [False, True]
    assert unhealthy == ["probe 2"]
    # Healthy only at the third consecutive pass (probe 7), not at probe 3 or 5.
    assert sink.events[1].fields["detail"] == "probe 7"
    await sched.close()


# -- the gate's loop -------------------------------------------------------------------


class Notes:
    def __init__(self) -> None:
        self.sent: list[str] = []

    def notify(self, *lines: str) -> bool:
        self.sent.extend(lines)
        return True


@pytest.mark.asyncio
async def test_gate_waits_for_successes_and_extends_the_timeout() -> None:
    clock = FakeClock()
    answers = iter([False, False, True, False, True, True])

    async def run(spec: ProbeSpec) -> ProbeResult:
        assert spec.target == "127.0.0.1:2"  # the start-up probe
        return ProbeResult(next(answers), "detail", 0.0)

    notes = Notes()
    health = Health(MAIN, startup=STARTUP, successes=2, start_period=60.0, start_interval=1.5)
    result = await wait_healthy(
        health,
        notifier=notes,
        run=run,
        clock=clock,
        sleep=clock.sleep,  # type: ignore[arg-type]
    )
    assert result.ok and result.probes == 6
    assert clock.sleeps == [1.5] * 5
    # Each round buys one more round: interval + probe timeout + slack, in microseconds.
    assert notes.sent == ["EXTEND_TIMEOUT_USEC=6700000"] * 6


@pytest.mark.asyncio
async def test_gate_gives_up_at_start_period() -> None:
    clock = FakeClock()

    async def run(spec: ProbeSpec) -> ProbeResult:
        return ProbeResult(False, "tcp 127.0.0.1:1: connection refused", 0.0)

    said: list[str] = []
    health = Health(MAIN, start_period=5.0, start_interval=2.0)
    result = await wait_healthy(health, say=said.append, run=run, clock=clock, sleep=clock.sleep)
    assert not result.ok
    assert clock.sleeps == [2.0, 2.0, 1.0]  # never past the deadline
    assert result.detail.startswith("not healthy within start_period 5s: tcp 127.0.0.1:1")
    assert said == ["waiting for health: tcp 127.0.0.1:1: connection refused"]  # once


def test_gate_entry_exit_codes(tmp_path: object, capsys: pytest.CaptureFixture[str]) -> None:
    from pathlib import Path

    base = Path(str(tmp_path))
    assert gate_main([str(base / "missing.json"), "x.service"]) == 2
    assert "cannot read policy" in capsys.readouterr().err
    no_health = base / "plain.service.json"
    no_health.write_text(to_json(Policy(unit="plain.service")))
    assert gate_main([str(no_health), "plain.service"]) == 2
    assert "expected a health section" in capsys.readouterr().err
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        up = base / "up.service.json"
        probe = Probe("tcp", f"127.0.0.1:{port}", timeout=1.0)
        up.write_text(to_json(Policy(unit="up.service", health=Health(probe, gate=True))))
        assert gate_main([str(up), "up.service"]) == 0
    assert "up.service: healthy after" in capsys.readouterr().err
