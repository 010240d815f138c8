"""Call limits and bounded History replies of org.unitgen.Recovery1, on a real dbus-daemon.

Both libraries. The flood from another uid, with the daemon and systemd, is in
tests/test_flood_sandbox.py; here each limit is pinned down exactly.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_asyncio
from eventstream_helpers import FakeBackend, PrivateBus, connect, disconnect, private_bus
from hypothesis import given
from hypothesis import strategies as st

from handlers.admission import Limits, Pool
from handlers.buslib import library_of
from handlers.dbus_api import (
    BUS_NAME,
    ERROR_LIMITS,
    HISTORY_ATTEMPTS,
    HISTORY_INCIDENTS,
    INTERFACE,
    MUTATING_LIMITS,
    OBJECT_PATH,
    READ_LIMITS,
    RecoveryService,
)
from handlers.events import Event, EventKind


@dataclass
class GatedBackend(FakeBackend):
    """History calls wait until the gate opens: calls stay in progress on demand."""

    gate: asyncio.Event = field(default_factory=asyncio.Event)

    async def history(self, unit: str) -> list[dict[str, Any]]:
        await self.gate.wait()
        return await super().history(unit)


@pytest.fixture
def bus_daemon() -> Iterator[PrivateBus]:
    with private_bus() as bus:
        yield bus


@pytest.fixture(params=["next", "fast"])
def lib_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest_asyncio.fixture
async def served(
    bus_daemon: PrivateBus, lib_name: str
) -> AsyncIterator[tuple[RecoveryService, GatedBackend]]:
    backend = GatedBackend()
    service = RecoveryService(backend)
    bus = await connect(lib_name, bus_daemon.address)
    try:
        await service.attach(bus)
        yield service, backend
    finally:
        await service.close()
        await disconnect(bus)


async def _call(bus: Any, member: str, signature: str = "", body: list[Any] | None = None) -> Any:
    lib = library_of(bus)
    msg = lib.Message(
        destination=BUS_NAME,
        path=OBJECT_PATH,
        interface=INTERFACE,
        member=member,
        signature=signature,
        body=body or [],
    )
    return await asyncio.wait_for(bus.call(msg), 10)


async def _until_in_progress(service: RecoveryService, n: int) -> None:
    async with asyncio.timeout(10):
        while service.reads.in_progress < n:  # noqa: ASYNC110 - counted by the service
            await asyncio.sleep(0.005)


def _error(reply: Any) -> str | None:
    return reply.error_name if reply.error_name else None


@pytest.mark.asyncio
async def test_per_connection_and_overall_limits_answer_at_once(
    served: tuple[RecoveryService, GatedBackend], bus_daemon: PrivateBus, lib_name: str
) -> None:
    service, backend = served
    per, overall = READ_LIMITS.per_caller, READ_LIMITS.overall
    callers = [await connect(lib_name, bus_daemon.address) for _ in range(overall // per + 1)]
    try:
        one = callers[0]
        held = [
            asyncio.ensure_future(_call(one, "History", "s", ["a.service"])) for _ in range(per)
        ]
        await _until_in_progress(service, per)
        # The same connection once more: refused at once, while its calls still wait.
        refused = await _call(one, "History", "s", ["a.service"])
        assert _error(refused) == ERROR_LIMITS
        assert "this connection" in refused.body[0]
        # Other connections up to the overall limit, then refused.
        for other in callers[1:-1]:
            held += [
                asyncio.ensure_future(_call(other, "History", "s", ["a.service"]))
                for _ in range(per)
            ]
        await _until_in_progress(service, overall)
        late = await _call(callers[-1], "Status")
        assert _error(late) == ERROR_LIMITS
        assert f"limit {overall}" in late.body[0]
        # A mutating call has its own pool: the reads do not refuse it.
        recovered = await _call(callers[-1], "Recover", "s", ["b.service"])
        assert _error(recovered) is None, recovered.body
        backend.gate.set()
        replies = await asyncio.gather(*held)
        assert all(_error(r) is None for r in replies)
        assert service.reads.in_progress == 0
        assert service.reads.refused == 2
        # Served again once the calls in progress are done.
        assert _error(await _call(one, "History", "s", ["a.service"])) is None
    finally:
        for bus in callers:
            await disconnect(bus)


def _incident(i: int, attempts: int = 3, reason: str = "exit-code") -> dict[str, Any]:
    return {
        "incident_id": f"{i:016x}",
        "state": "closed",
        "reason": reason,
        "attempts": [{"action": "restart", "result": "ok", "n": n} for n in range(attempts)],
    }


@pytest.mark.asyncio
async def test_history_is_bounded_and_paged(
    served: tuple[RecoveryService, GatedBackend], bus_daemon: PrivateBus, lib_name: str
) -> None:
    _service, backend = served
    backend.gate.set()
    backend.histories["a.service"] = [_incident(i) for i in range(45)]
    backend.histories["long.service"] = [_incident(0, attempts=HISTORY_ATTEMPTS + 30)]
    # Each incident ~20 KiB: the byte bound ends the page before the row bound.
    backend.histories["big.service"] = [_incident(i, reason="r" * 4000 * 5) for i in range(10)]
    caller = await connect(lib_name, bus_daemon.address)
    try:
        first = await _call(caller, "History", "s", ["a.service"])
        assert len(first.body[0]) == HISTORY_INCIDENTS
        ids: list[str] = []
        offset = 0
        while True:
            page = await _call(caller, "HistoryPage", "suu", ["a.service", offset, 7])
            assert _error(page) is None, page.body
            rows, offset = page.body
            assert len(rows) <= 7
            ids += [r["incident_id"].value for r in rows]
            if offset == 0:
                break
        assert ids == [f"{i:016x}" for i in range(45)]
        long = (await _call(caller, "History", "s", ["long.service"])).body[0][0]
        attempts = long["attempts"].value
        assert len(attempts) == HISTORY_ATTEMPTS
        assert attempts[-1]["n"].value == HISTORY_ATTEMPTS + 29  # the newest are kept
        assert long["attempts_left_out"].value == 30
        big = await _call(caller, "HistoryPage", "suu", ["big.service", 0, 20])
        rows, following = big.body
        assert 0 < len(rows) < 10 and following == len(rows)
        bad = await _call(caller, "HistoryPage", "s", ["a.service"])
        assert bad.error_name == "org.freedesktop.DBus.Error.InvalidArgs"
    finally:
        await disconnect(caller)


@given(
    st.lists(st.tuples(st.booleans(), st.sampled_from([":1.1", ":1.2", ":1.3", None])), max_size=60)
)
def test_pool_counts_never_exceed_the_limits_and_return_to_zero(
    ops: list[tuple[bool, str | None]],
) -> None:
    pool = Pool(Limits(per_caller=2, overall=3), "read")
    held: list[str | None] = []
    for admit, caller in ops:
        if admit:
            if pool.admit(caller) is None:
                held.append(caller)
        elif caller in held:
            held.remove(caller)
            pool.release(caller)
        assert pool.in_progress == len(held) <= 3
        assert all(held.count(c) <= 2 for c in held)
    for caller in held:
        pool.release(caller)
    assert pool.in_progress == 0
    assert MUTATING_LIMITS.overall >= READ_LIMITS.overall


@pytest.mark.asyncio
async def test_a_history_page_is_built_once_until_an_event_of_its_unit(
    served: tuple[RecoveryService, GatedBackend], bus_daemon: PrivateBus, lib_name: str
) -> None:
    service, backend = served
    backend.gate.set()
    backend.histories["a.service"] = [_incident(0)]
    caller = await connect(lib_name, bus_daemon.address)
    try:
        for _ in range(5):
            reply = await _call(caller, "History", "s", ["a.service"])
            assert len(reply.body[0]) == 1
        assert backend.calls.count(("history", "a.service")) == 1
        # An event of another unit keeps the page; one of this unit drops it.
        backend.histories["a.service"] = [_incident(1), _incident(0)]
        service.emit(Event(EventKind.RECOVERED, "b.service", "x", {}))
        assert len((await _call(caller, "History", "s", ["a.service"])).body[0]) == 1
        service.emit(Event(EventKind.RECOVERED, "a.service", "x", {}))
        assert len((await _call(caller, "History", "s", ["a.service"])).body[0]) == 2
        assert backend.calls.count(("history", "a.service")) == 2
    finally:
        await disconnect(caller)
