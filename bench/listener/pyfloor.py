"""The floor of any Python OnFailure= handler: start up, connect, reset and restart.

Run by the benchmarks' OnFailure= oneshots as ``python pyfloor.py UNIT``: this
venv's interpreter and site, asyncio and dbus-fast, one connection, then
ResetFailedUnit and RestartUnit, nothing else. Kept free of the project's imports.
"""

import asyncio
import sys

from dbus_fast import Message
from dbus_fast.aio import MessageBus
from dbus_fast.constants import BusType


async def main(unit: str) -> None:
    bus = await MessageBus(bus_type=BusType.SESSION).connect()

    def call(member, sig, body):  # type: ignore[no-untyped-def]
        return bus.call(
            Message(
                destination="org.freedesktop.systemd1",
                path="/org/freedesktop/systemd1",
                interface="org.freedesktop.systemd1.Manager",
                member=member,
                signature=sig,
                body=body,
            )
        )

    await asyncio.gather(
        call("ResetFailedUnit", "s", [unit]), call("RestartUnit", "ss", [unit, "replace"])
    )
    bus.disconnect()


asyncio.run(main(sys.argv[1]))
