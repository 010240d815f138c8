"""org.unitgen.Recovery1 against a real (private) dbus-daemon, on dbus-next and dbus-fast.

The service side runs on the library under test; the consumer is always an
independent dbus-next connection (or a command-line tool), so what is checked
is what any other program on the bus sees.
"""

from __future__ import annotations

import asyncio
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from dbus_next import Message, MessageType, Variant
from eventstream_helpers import NOBODY, FakeBackend, PrivateBus, connect, disconnect, private_bus

from handlers.access import AccessPolicy, Decision
from handlers.dbus_api import (
    BUS_NAME,
    INTERFACE,
    INTROSPECTION_XML,
    OBJECT_PATH,
    RecoveryService,
)
from handlers.events import Event, EventKind
from unitgen.errors import LockBusyError, SystemdError, UnitNotFoundError

ALL_KINDS = list(EventKind)


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
) -> AsyncIterator[tuple[RecoveryService, FakeBackend, Any]]:
    backend = FakeBackend()
    service = RecoveryService(backend)
    bus = await connect(lib_name, bus_daemon.address)
    try:
        await service.attach(bus)
        yield service, backend, bus
    finally:
        await service.close()
        await disconnect(bus)


@pytest_asyncio.fixture
async def client(bus_daemon: PrivateBus) -> AsyncIterator[Any]:
    bus = await connect("next", bus_daemon.address)
    try:
        yield bus
    finally:
        await disconnect(bus)


async def call(bus: Any, member: str, signature: str = "", body: list[Any] | None = None) -> Any:
    return await asyncio.wait_for(
        bus.call(
            Message(
                destination=BUS_NAME,
                path=OBJECT_PATH,
                interface=INTERFACE,
                member=member,
                signature=signature,
                body=body or [],
            )
        ),
        10,
    )


async def subscribe(bus: Any) -> asyncio.Queue[Any]:
    """Every org.unitgen.Recovery1 signal this independent client receives."""
    queue: asyncio.Queue[Any] = asyncio.Queue()

    def handler(msg: Any) -> None:
        if msg.message_type == MessageType.SIGNAL and msg.interface == INTERFACE:
            queue.put_nowait(msg)

    bus.add_message_handler(handler)
    rule = f"type='signal',sender='{BUS_NAME}',interface='{INTERFACE}',path='{OBJECT_PATH}'"
    reply = await bus.call(
        Message(
            destination="org.freedesktop.DBus",
            path="/org/freedesktop/DBus",
            interface="org.freedesktop.DBus",
            member="AddMatch",
            signature="s",
            body=[rule],
        )
    )
    assert reply.message_type == MessageType.METHOD_RETURN
    return queue


def event(kind: EventKind, unit: str = "web.service", **fields: Any) -> Event:
    return Event(kind=kind, unit=unit, incident_id="inc-1", fields=fields, timestamp=1700000000.5)


@pytest.mark.asyncio
async def test_every_signal_kind_reaches_an_independent_client(
    served: tuple[RecoveryService, FakeBackend, Any], client: Any
) -> None:
    service, _, _ = served
    queue = await subscribe(client)
    for i, kind in enumerate(ALL_KINDS):
        service.emit(event(kind, unit=f"u{i}.service", level="restart", attempt=i, healthy=True))
    got = [await asyncio.wait_for(queue.get(), 10) for _ in ALL_KINDS]
    assert [m.member for m in got] == [k.value for k in ALL_KINDS]
    for i, msg in enumerate(got):
        assert msg.signature == "ssta{sv}"
        unit, incident, ts, details = msg.body
        assert (unit, incident, ts) == (f"u{i}.service", "inc-1", 1700000000500000)
        assert details["level"].signature == "s" and details["level"].value == "restart"
        assert details["attempt"].signature == "x" and details["attempt"].value == i
        assert details["healthy"].signature == "b" and details["healthy"].value is True
    assert service.sent == len(ALL_KINDS) and service.dropped == 0


def _interface_shape(xml: str, with_names: bool) -> dict[str, list[tuple[str, ...]]]:
    root = ET.fromstring(xml)
    iface = next(i for i in root.iter("interface") if i.get("name") == INTERFACE)
    shape: dict[str, list[tuple[str, ...]]] = {}
    for member in iface:
        if member.tag not in ("method", "signal"):
            continue
        args = []
        for arg in member.iter("arg"):
            direction = arg.get("direction") or ("out" if member.tag == "signal" else "in")
            name = arg.get("name") or "" if with_names else ""
            args.append((direction, arg.get("type") or "", name))
        shape[f"{member.tag}:{member.get('name')}"] = args
    return shape


@pytest.mark.asyncio
async def test_live_introspection_matches_the_checked_in_xml(
    served: tuple[RecoveryService, FakeBackend, Any], client: Any
) -> None:
    reply = await asyncio.wait_for(
        client.call(
            Message(
                destination=BUS_NAME,
                path=OBJECT_PATH,
                interface="org.freedesktop.DBus.Introspectable",
                member="Introspect",
            )
        ),
        10,
    )
    assert reply.message_type == MessageType.METHOD_RETURN
    live = _interface_shape(reply.body[0], with_names=True)
    checked_in = _interface_shape(INTROSPECTION_XML.read_text(), with_names=True)
    assert set(live) == set(checked_in)
    assert {f"signal:{k.value}" for k in EventKind} <= set(live)
    for member, args in live.items():
        want = checked_in[member]
        assert [a[:2] for a in args] == [w[:2] for w in want], member
        # The libraries name in-arguments only; where they name one, it must agree.
        for got, expected in zip(args, want, strict=True):
            assert got[2] in ("", expected[2]), member


@pytest.mark.asyncio
async def test_status_and_history_return_what_the_backend_says(
    served: tuple[RecoveryService, FakeBackend, Any], client: Any
) -> None:
    _, backend, _ = served
    backend.statuses = [
        {"unit": "a.service", "state": "ok", "attempts": 0, "mttr": 1.5, "default": False},
        {"unit": "b.service", "state": "gave-up", "attempts": 5, "last_reason": None},
    ]
    backend.histories["a.service"] = [
        {
            "incident_id": "i1",
            "level": "restart",
            "closed": None,
            "attempts": [{"action": "restart", "result": "ok", "duration": 0.25}],
        }
    ]
    reply = await call(client, "Status")
    assert reply.message_type == MessageType.METHOD_RETURN and reply.signature == "aa{sv}"
    plain = [{k: v.value for k, v in rec.items()} for rec in reply.body[0]]
    assert plain == [
        {"unit": "a.service", "state": "ok", "attempts": 0, "mttr": 1.5, "default": False},
        {"unit": "b.service", "state": "gave-up", "attempts": 5},  # None is left out
    ]
    reply = await call(client, "History", "s", ["a.service"])
    assert reply.signature == "aa{sv}"
    (incident,) = reply.body[0]
    assert set(incident) == {"incident_id", "level", "attempts"}  # None is left out
    assert incident["attempts"].signature == "aa{sv}"
    (attempt,) = incident["attempts"].value
    assert {k: v.value for k, v in attempt.items()} == {
        "action": "restart",
        "result": "ok",
        "duration": 0.25,
    }
    assert ("history", "a.service") in backend.calls


@pytest.mark.asyncio
async def test_root_may_reset_and_recover(
    served: tuple[RecoveryService, FakeBackend, Any], client: Any
) -> None:
    _, backend, _ = served
    reply = await call(client, "Reset", "s", ["web.service"])
    assert reply.message_type == MessageType.METHOD_RETURN, reply.body
    reply = await call(client, "Recover", "s", ["web.service"])
    assert reply.message_type == MessageType.METHOD_RETURN, reply.body
    assert reply.signature == "a{sv}"
    assert {k: v.value for k, v in reply.body[0].items()} == {
        "unit": "web.service",
        "result": "recovered",
        "attempts": 1,
        "trigger": "dbus",
    }
    assert backend.calls == [("reset", "web.service"), ("recover", "web.service")]


@pytest.mark.parametrize(
    ("exc", "error_name"),
    [
        (RuntimeError("boom\nTraceback (most recent call last):\n  File x"), "Error.Failed"),
        (UnitNotFoundError("ghost.service: systemd has no such unit"), "Error.NoSuchUnit"),
        (LockBusyError("web.service: another recovery holds the lock"), "Error.Busy"),
    ],
)
@pytest.mark.asyncio
async def test_errors_are_one_line_and_carry_no_traceback(
    served: tuple[RecoveryService, FakeBackend, Any],
    client: Any,
    exc: BaseException,
    error_name: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, backend, _ = served
    backend.fail_with = exc
    for member, sig, body in [
        ("Status", "", []),
        ("History", "s", ["web.service"]),
        ("Reset", "s", ["web.service"]),
        ("Recover", "s", ["web.service"]),
    ]:
        reply = await call(client, member, sig, body)
        assert reply.message_type == MessageType.ERROR, member
        assert reply.error_name == f"{INTERFACE}.{error_name}", member
        text = reply.body[0]
        assert "\n" not in text and "Traceback" not in text and 'File "' not in text, text
        assert member in text or "web.service" in text or "ghost" in text
    if type(exc) is RuntimeError:
        # The operator still gets the traceback, in the daemon's log.
        assert any(r.exc_info for r in caplog.records)


@pytest.mark.asyncio
async def test_bad_unit_names_and_signatures_get_clean_errors(
    served: tuple[RecoveryService, FakeBackend, Any], client: Any
) -> None:
    _, backend, _ = served
    for member in ("History", "Reset", "Recover"):
        reply = await call(client, member, "s", ["../../etc/passwd"])
        assert reply.message_type == MessageType.ERROR
        assert reply.error_name == f"{INTERFACE}.Error.InvalidUnit", member
        assert "\n" not in reply.body[0]
    reply = await call(client, "Reset", "u", [3])
    assert reply.error_name == "org.freedesktop.DBus.Error.InvalidArgs"
    reply = await call(client, "Reset")
    assert reply.error_name == "org.freedesktop.DBus.Error.InvalidArgs"
    assert [c for c in backend.calls if c[0] != "status"] == []


def _as_nobody(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *argv],
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )


def _dbus_send(address: str, member: str, *args: str) -> list[str]:
    return [
        "dbus-send",
        f"--bus={address}",
        "--print-reply",
        f"--dest={BUS_NAME}",
        OBJECT_PATH,
        f"{INTERFACE}.{member}",
        *args,
    ]


@pytest.mark.asyncio
async def test_non_root_caller_is_denied_by_the_daemon_itself(
    served: tuple[RecoveryService, FakeBackend, Any], bus_daemon: PrivateBus
) -> None:
    """This bus lets anyone send anything: only the in-daemon check stands in the way."""
    _, backend, _ = served
    for member in ("Reset", "Recover"):
        res = await asyncio.to_thread(
            _as_nobody, _dbus_send(bus_daemon.address, member, "string:web.service"), {}
        )
        assert res.returncode != 0
        assert "org.freedesktop.DBus.Error.AccessDenied" in res.stderr, res.stderr
        assert f"uid {NOBODY} may not call this" in res.stderr
    res = await asyncio.to_thread(_as_nobody, _dbus_send(bus_daemon.address, "Status"), {})
    assert res.returncode == 0, res.stderr
    assert backend.calls == [("status", None)]


class GatedPolicy(AccessPolicy):
    """Holds the check until the test says go, and remembers the decision."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = asyncio.Event()
        self.go = asyncio.Event()
        self.decisions: list[Decision] = []

    async def check(self, *args: Any) -> Decision:
        self.entered.set()
        await self.go.wait()
        decision = await super().check(*args)
        self.decisions.append(decision)
        return decision


async def _has_owner(bus: Any, name: str) -> bool:
    reply = await bus.call(
        Message(
            destination="org.freedesktop.DBus",
            path="/org/freedesktop/DBus",
            interface="org.freedesktop.DBus",
            member="NameHasOwner",
            signature="s",
            body=[name],
        )
    )
    return bool(reply.body[0])


@pytest.mark.asyncio
async def test_a_caller_that_left_before_the_check_is_denied(
    bus_daemon: PrivateBus, lib_name: str, client: Any
) -> None:
    backend = FakeBackend()
    policy = GatedPolicy()
    service = RecoveryService(backend, access=policy)
    bus = await connect(lib_name, bus_daemon.address)
    leaver = await connect("next", bus_daemon.address)
    try:
        await service.attach(bus)
        name = leaver.unique_name
        leaver.send(
            Message(
                destination=BUS_NAME,
                path=OBJECT_PATH,
                interface=INTERFACE,
                member="Reset",
                signature="s",
                body=["web.service"],
            )
        )
        await asyncio.wait_for(policy.entered.wait(), 10)
        await disconnect(leaver)
        deadline = asyncio.get_running_loop().time() + 10
        while await _has_owner(client, name):
            assert asyncio.get_running_loop().time() < deadline, "caller never left the bus"
            await asyncio.sleep(0.01)
        policy.go.set()
        while not policy.decisions:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.01)
        assert policy.decisions[0].allowed is False
        assert policy.decisions[0].uid is None
        assert backend.calls == []
    finally:
        await service.close()
        await disconnect(bus)
        await disconnect(leaver)


@pytest.mark.asyncio
async def test_mutating_methods_fail_closed_without_the_guard(
    served: tuple[RecoveryService, FakeBackend, Any], client: Any
) -> None:
    service, backend, bus = served
    bus.remove_message_handler(service._on_message)
    for member in ("Reset", "Recover"):
        reply = await call(client, member, "s", ["web.service"])
        assert reply.error_name == "org.freedesktop.DBus.Error.AccessDenied"
        assert "\n" not in reply.body[0]
    assert backend.calls == []


@pytest.mark.asyncio
async def test_a_second_daemon_cannot_take_the_name(
    served: tuple[RecoveryService, FakeBackend, Any], bus_daemon: PrivateBus, lib_name: str
) -> None:
    other = RecoveryService(FakeBackend())
    bus = await connect(lib_name, bus_daemon.address)
    try:
        with pytest.raises(SystemdError, match="another process owns it"):
            await other.attach(bus)
        assert not other.attached
    finally:
        await other.close()
        await disconnect(bus)


@pytest.mark.asyncio
async def test_events_wait_for_the_bus_and_the_oldest_go_first_when_full(
    bus_daemon: PrivateBus, lib_name: str, client: Any
) -> None:
    drops: list[str] = []
    service = RecoveryService(FakeBackend(), on_drop=drops.append, max_queue=3)
    for i in range(5):  # emitted before there is a bus, e.g. across a reconnect
        service.emit(event(EventKind.STEP_STARTED, unit=f"q{i}.service"))
    assert service.dropped == 2 and drops == ["dbus", "dbus"]
    queue = await subscribe(client)
    bus = await connect(lib_name, bus_daemon.address)
    try:
        await service.attach(bus)
        got = [(await asyncio.wait_for(queue.get(), 10)).body[0] for _ in range(3)]
    finally:
        await service.close()
        await disconnect(bus)
    assert got == ["q2.service", "q3.service", "q4.service"]


@pytest.mark.asyncio
async def test_a_burst_of_signals_does_not_break_the_connection(
    served: tuple[RecoveryService, FakeBackend, Any], client: Any
) -> None:
    """Both libraries drop the connection on EAGAIN (python-dbus-next#153): flow control."""
    service, _, bus = served
    queue = await subscribe(client)
    n = 5000
    for i in range(n):
        service.emit(event(EventKind.STEP_FINISHED, unit=f"b{i}.service", step="restarting"))
    for i in range(n):
        msg = await asyncio.wait_for(queue.get(), 30)
        assert msg.body[0] == f"b{i}.service"
    assert service.sent == n and service.dropped == 0
    assert bus.connected


@pytest.mark.asyncio
async def test_emit_from_a_worker_thread_is_sent_on_the_loop(
    served: tuple[RecoveryService, FakeBackend, Any], client: Any
) -> None:
    service, _, _ = served
    queue = await subscribe(client)
    await asyncio.to_thread(service.emit, event(EventKind.RECOVERED, duration=1.25))
    msg = await asyncio.wait_for(queue.get(), 10)
    assert msg.member == "Recovered" and msg.body[3]["duration"].value == 1.25


def test_checked_in_xml_is_well_formed_and_names_every_argument() -> None:
    shape = _interface_shape(Path(INTROSPECTION_XML).read_text(), with_names=True)
    assert all(name for args in shape.values() for (_, _, name) in args)
    assert shape["signal:GaveUp"] == [
        ("out", "s", "unit"),
        ("out", "s", "incident_id"),
        ("out", "t", "timestamp_usec"),
        ("out", "a{sv}", "details"),
    ]


@pytest.mark.asyncio
async def test_library_handled_calls_answer_cleanly_too(
    served: tuple[RecoveryService, FakeBackend, Any], client: Any
) -> None:
    """Properties and unknown members are answered by the library: still no traceback."""
    calls = [
        ("org.freedesktop.DBus.Properties", "Get", "ss", [INTERFACE, "Nope"]),
        ("org.freedesktop.DBus.Properties", "GetAll", "s", [INTERFACE]),
        ("org.freedesktop.DBus.Properties", "Set", "ssv", [INTERFACE, "Nope", Variant("s", "x")]),
        (INTERFACE, "NoSuchMethod", "", []),
        (INTERFACE, "History", "u", [7]),
    ]
    for interface, member, sig, body in calls:
        reply = await asyncio.wait_for(
            client.call(
                Message(
                    destination=BUS_NAME,
                    path=OBJECT_PATH,
                    interface=interface,
                    member=member,
                    signature=sig,
                    body=body,
                )
            ),
            10,
        )
        if reply.message_type == MessageType.ERROR:
            text = reply.body[0] if reply.body else ""
            assert "Traceback" not in text and "\n" not in text, (member, text)
        else:
            assert member == "GetAll" and reply.body == [{}]


@pytest.mark.asyncio
async def test_history_pages_are_served_from_memory_until_an_event_of_their_unit(
    served: tuple[RecoveryService, FakeBackend, Any], client: Any
) -> None:
    service, backend, _bus = served
    backend.histories["a.service"] = [{"id": "i1", "unit": "a.service", "state": "recovered"}]
    backend.histories["b.service"] = [{"id": "i2", "unit": "b.service", "state": "recovered"}]

    async def page(unit: str) -> None:
        reply = await call(client, "HistoryPage", "suu", [unit, 0, 5])
        assert reply.message_type == MessageType.METHOD_RETURN, reply.body

    def reads(unit: str) -> int:
        return backend.calls.count(("history", unit))

    await page("a.service")
    await page("b.service")
    await page("a.service")
    assert (reads("a.service"), reads("b.service")) == (1, 1)  # the second from memory
    # An event of b drops b's pages only.
    service.emit(Event(EventKind.INCIDENT_OPENED, "b.service", "inc"))
    await page("a.service")
    await page("b.service")
    assert (reads("a.service"), reads("b.service")) == (1, 2)
