"""Calls on a lost connection: failed at once (real dbus-daemon), carried over (fakes).

The end-to-end proof, a bus restart under a real incident, is
tests/test_bus_restart_sandbox.py; here each rule of RetryingBus is pinned
down with fake connections (pure logic), and SystemdBus's fail-fast on a real
bus daemon that dies.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, cast

import pytest
from eventstream_helpers import connect, disconnect, private_bus

from handlers.bus import DBUS_NAME, DBUS_PATH, SystemdBus
from handlers.busretry import RetryingBus
from unitgen.errors import BusConnectionLostError
from unitgen.paths import Scope


@pytest.mark.asyncio
@pytest.mark.parametrize("lib_name", ["next", "fast"])
async def test_calls_in_flight_and_after_the_loss_fail_at_once(lib_name: str) -> None:
    with private_bus() as pb:
        bus = await SystemdBus.connect(Scope.USER, pb.address, library=lib_name)
        # A peer that owns a name and never answers: the call stays in flight.
        silent = await connect(lib_name, pb.address)
        try:
            await silent.request_name("org.unitgen.Silent")
            # Claimed without a reply: the library answers nothing either.
            arrived = asyncio.Event()

            def swallow(msg: Any) -> bool | None:
                if msg.member != "Ping":
                    return None
                arrived.set()
                return True

            silent.add_message_handler(swallow)
            pending = asyncio.ensure_future(
                bus.call(
                    "Ping",
                    interface="org.unitgen.Silent",
                    path="/",
                    destination="org.unitgen.Silent",
                    timeout=20,
                )
            )
            await asyncio.wait_for(arrived.wait(), 10)  # in flight: delivered, unanswered
            started = time.monotonic()
            pb.process.kill()
            with pytest.raises(BusConnectionLostError):
                await pending
            assert time.monotonic() - started < 2
            started = time.monotonic()
            with pytest.raises(BusConnectionLostError):
                await bus.call("GetId", interface=DBUS_NAME, path=DBUS_PATH, destination=DBUS_NAME)
            assert time.monotonic() - started < 0.5
            assert not bus.connected
        finally:
            await bus.close()
            await disconnect(silent)


class FakeBus:
    """A connection that is lost on demand; records what was sent on it."""

    def __init__(self, props: dict[str, Any] | None = None, lost: bool = False) -> None:
        self.props = props or {"ActiveState": "failed", "Job": (0, "/")}
        self.lost = lost
        self.sent: list[str] = []
        self.closed = False

    @property
    def connected(self) -> bool:
        return not self.lost

    def _check(self, what: str) -> None:
        self.sent.append(what)
        if self.lost:
            raise BusConnectionLostError(f"{what}: bus connection failed (connection lost)")

    async def unit_properties(self, name: str, *_a: Any, **_k: Any) -> dict[str, Any]:
        self._check("read")
        return dict(self.props)

    async def reset_and_restart(self, name: str, mode: str = "replace") -> tuple[str, None]:
        self._check("restart")
        return "/job/9", None

    async def restart(self, name: str, mode: str = "replace") -> str:
        self._check("restart")
        return "/job/9"

    async def wait_for(self, name: str, predicate: Any, timeout: float, *a: Any, **k: Any) -> Any:  # noqa: ASYNC109
        self._check("wait")
        return {"ActiveState": "active", "since": k.get("since")}

    async def unpin(self, name: str) -> None:
        self._check("unpin")

    def expect_changes(self, name: str) -> Any:
        return object()

    def forget(self, expectation: Any) -> None:
        self.sent.append("forget")

    async def close(self) -> None:
        self.closed = True


def _handle(bus: FakeBus, **kw: Any) -> RetryingBus:
    return RetryingBus(cast(SystemdBus, bus), **kw)


async def _attach_soon(handle: RetryingBus, bus: FakeBus, old: FakeBus) -> None:
    await asyncio.sleep(0.05)
    old.lost = True
    handle.attach(cast(SystemdBus, bus))


@pytest.mark.asyncio
async def test_a_read_is_sent_again_on_the_next_connection() -> None:
    old, new = FakeBus(lost=True), FakeBus({"ActiveState": "active"})
    handle = _handle(old)
    attach = asyncio.ensure_future(_attach_soon(handle, new, old))
    assert (await handle.unit_properties("a.service"))["ActiveState"] == "active"
    await attach
    assert new.sent == ["read"] and handle.retries <= 1


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("state", "job", "sent_again"),
    [
        ("failed", (0, "/"), True),  # never reached systemd: restart again
        ("inactive", (0, "/"), True),
        ("failed", (12, "/org/freedesktop/systemd1/job/12"), False),  # queued: not twice
        ("activating", (0, "/"), False),
        ("active", (0, "/"), False),
    ],
)
async def test_a_restart_is_sent_again_only_if_systemd_did_not_get_it(
    state: str, job: tuple[int, str], sent_again: bool
) -> None:
    old = FakeBus(lost=True)
    new = FakeBus({"ActiveState": state, "Job": job})
    handle = _handle(old)
    attach = asyncio.ensure_future(_attach_soon(handle, new, old))
    result, _reset = await handle.reset_and_restart("a.service")
    await attach
    assert old.sent == ["restart"]
    assert new.sent == (["read", "restart"] if sent_again else ["read"])
    if not sent_again and job[0]:
        assert result == job[1]


@pytest.mark.asyncio
async def test_a_wait_starts_again_from_a_fresh_read() -> None:
    old, new = FakeBus(lost=True), FakeBus()
    handle = _handle(old)
    attach = asyncio.ensure_future(_attach_soon(handle, new, old))
    props = await handle.wait_for(
        "a.service", lambda p: True, 5, since=cast(Any, "expectation"), initial={}
    )
    await attach
    assert props["since"] is None  # the old connection's expectation is not reused
    # A connection already known lost is not tried: the wait goes to the new one.
    assert old.sent == [] and new.sent == ["wait"]


class _DropsDuringWait(FakeBus):
    """Connected when asked; the connection drops while the wait is on it."""

    async def wait_for(self, name: str, predicate: Any, timeout: float, *a: Any, **k: Any) -> Any:  # noqa: ASYNC109
        self.sent.append("wait")
        self.lost = True
        raise BusConnectionLostError("wait: bus connection failed (connection lost)")


@pytest.mark.asyncio
async def test_a_wait_cut_by_a_lost_connection_goes_on_on_the_next_one() -> None:
    old, new = _DropsDuringWait(), FakeBus()
    handle = _handle(old)
    attach = asyncio.ensure_future(_attach_soon(handle, new, old))
    props = await handle.wait_for(
        "a.service", lambda p: True, 5, since=cast(Any, "expectation"), initial={}
    )
    await attach
    # The first wait carried the expectation; the one on the new connection cannot.
    assert old.sent == ["wait"] and new.sent == ["wait"]
    assert props["since"] is None and handle.retries == 1


@pytest.mark.asyncio
async def test_no_new_connection_in_time_fails_and_unpin_of_a_lost_pin_is_quiet() -> None:
    handle = _handle(FakeBus(lost=True), wait=0.1)
    started = time.monotonic()
    with pytest.raises(BusConnectionLostError, match="no new one within"):
        await handle.unit_properties("a.service")
    assert time.monotonic() - started < 1
    await handle.unpin("a.service")


@pytest.mark.asyncio
async def test_without_a_listener_it_reconnects_itself() -> None:
    old, new = FakeBus(lost=True), FakeBus({"ActiveState": "active"})
    made: list[FakeBus] = []

    async def reconnect() -> SystemdBus:
        made.append(new)
        return cast(SystemdBus, new)

    handle = _handle(old, reconnect=reconnect)
    results = await asyncio.gather(*(handle.unit_properties("a.service") for _ in range(5)))
    assert all(r["ActiveState"] == "active" for r in results)
    assert made == [new] and old.closed and handle.bus is cast(SystemdBus, new)


@pytest.mark.asyncio
async def test_an_expectation_of_a_lost_connection_is_not_waited_on() -> None:
    old, new = FakeBus(), FakeBus()
    handle = _handle(old)
    expectation = handle.expect_changes("a.service")
    old.lost = True
    handle.attach(cast(SystemdBus, new))
    props = await handle.wait_for(
        "a.service", lambda p: True, 5, since=expectation, initial={"ActiveState": "failed"}
    )
    assert props["since"] is None  # a fresh wait on the new connection
    assert old.sent == ["forget"] and new.sent == ["wait"]
