"""The D-Bus API applies the same unit-name rule as the spec and the command line.

A name the spec refuses (tests/test_unitnames_managed.py) is InvalidUnit over
D-Bus too, and the longest name the spec accepts reaches the backend.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_asyncio
from dbus_next import Message, MessageType
from eventstream_helpers import FakeBackend, PrivateBus, connect, disconnect, private_bus

from handlers.dbus_api import BUS_NAME, INTERFACE, OBJECT_PATH, RecoveryService
from unitgen.unitnames import MANAGED_NAME_MAX

LONGEST = "a" * (MANAGED_NAME_MAX - len(".service")) + ".service"


@pytest.fixture
def bus_daemon() -> Iterator[PrivateBus]:
    with private_bus() as bus:
        yield bus


@pytest_asyncio.fixture
async def served(bus_daemon: PrivateBus) -> AsyncIterator[FakeBackend]:
    backend = FakeBackend()
    service = RecoveryService(backend)
    bus = await connect("next", bus_daemon.address)
    try:
        await service.attach(bus)
        yield backend
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


async def call(bus: Any, member: str, unit: str) -> Any:
    message = Message(
        destination=BUS_NAME,
        path=OBJECT_PATH,
        interface=INTERFACE,
        member=member,
        signature="s",
        body=[unit],
    )
    return await asyncio.wait_for(bus.call(message), 10)


@pytest.mark.asyncio
@pytest.mark.parametrize("unit", ["..service", "-x.service", "a" * MANAGED_NAME_MAX + ".service"])
async def test_names_the_spec_refuses_are_invalid_over_dbus(
    served: FakeBackend, client: Any, unit: str
) -> None:
    for member in ("History", "Reset", "Recover"):
        reply = await call(client, member, unit)
        assert reply.message_type == MessageType.ERROR, member
        assert reply.error_name == f"{INTERFACE}.Error.InvalidUnit", member
        assert "\n" not in reply.body[0]
    assert [c for c in served.calls if c[0] != "status"] == []


@pytest.mark.asyncio
async def test_the_longest_name_the_spec_accepts_reaches_the_backend(
    served: FakeBackend, client: Any
) -> None:
    reply = await call(client, "History", LONGEST)
    assert reply.message_type == MessageType.METHOD_RETURN, reply.body
    assert any(LONGEST in c for c in served.calls)
