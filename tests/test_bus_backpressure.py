"""A burst of writes faster than the bus daemon reads must not end the connection.

Both libraries' writers treat EAGAIN from ``sock.send`` as a lost connection;
``guard_writes`` makes them wait for the socket instead (handlers/bus.py).
Real dbus-daemon, both libraries.
"""

from __future__ import annotations

import asyncio

import pytest
from eventstream_helpers import connect, disconnect, private_bus

from handlers.bus import guard_writes
from handlers.buslib import library_of

BURST = 400  # 16 KiB each: ~6 MiB, thirty times a unix socket's send buffer


@pytest.mark.asyncio
@pytest.mark.parametrize("lib_name", ["next", "fast"])
async def test_a_burst_larger_than_the_socket_buffer_keeps_the_connection(lib_name: str) -> None:
    with private_bus() as pb:
        bus = await connect(lib_name, pb.address)
        try:
            assert guard_writes(bus)
            assert guard_writes(bus)  # idempotent
            lib = library_of(bus)
            payload = "x" * 16384
            sent = [
                bus.send(
                    lib.Message.new_signal(
                        "/org/unitgen/Test", "org.unitgen.Test", "Burst", "s", [payload]
                    )
                )
                for _ in range(BURST)
            ]
            await asyncio.wait_for(asyncio.gather(*sent), 30)
            # A round trip after the burst: answered only once the daemon read all of it.
            reply = await asyncio.wait_for(
                bus.call(
                    lib.Message(
                        destination="org.freedesktop.DBus",
                        path="/org/freedesktop/DBus",
                        interface="org.freedesktop.DBus",
                        member="GetId",
                    )
                ),
                30,
            )
            assert reply.message_type == lib.MessageType.METHOD_RETURN
            assert bus.connected
        finally:
            await disconnect(bus)
