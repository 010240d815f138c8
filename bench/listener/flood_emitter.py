"""The flood benchmark's sender: systemd 252's PropertiesChanged pairs, pre-marshalled.

Run by flood.py as ``python flood_emitter.py ADDRESS COUNT UNITS RATE``: prints its
unique name, waits for a line on stdin, sends COUNT signals (RATE per second, 0:
uncapped) for UNITS units, prints the seconds it took. dbus-daemon fills in the
sender. Kept free of the project's imports.
"""

import asyncio
import struct
import sys
import time

from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus


def pair(i, inv):
    # What systemd 252 sends when a service changes state: the Service interface's
    # PropertiesChanged (17 values, 14 invalidated names), then the Unit's (22, 2).
    path = "/org/freedesktop/systemd1/unit/f" + str(i) + "_2eservice"
    t = Variant("t", 1700000000000000)
    service = {
        k: Variant("u", 0)
        for k in ("MainPID", "ControlPID", "NRestarts", "ExecMainPID", "UID", "GID")
    }
    service.update(
        {
            k: Variant("s", "success")
            for k in ("Result", "ReloadResult", "CleanResult", "StatusText")
        }
    )
    service.update({k: Variant("i", 0) for k in ("ExecMainCode", "ExecMainStatus", "StatusErrno")})
    service.update(
        {
            k: t
            for k in (
                "ExecMainStartTimestamp",
                "ExecMainStartTimestampMonotonic",
                "ExecMainExitTimestamp",
                "ExecMainExitTimestampMonotonic",
            )
        }
    )
    invalid = [
        "Exec" + n + x
        for n in ("Condition", "StartPre", "Start", "StartPost", "Reload", "Stop", "StopPost")
        for x in ("", "Ex")
    ]
    unit = {
        k: t
        for k in (
            "StateChangeTimestamp",
            "StateChangeTimestampMonotonic",
            "InactiveExitTimestamp",
            "InactiveExitTimestampMonotonic",
            "ActiveEnterTimestamp",
            "ActiveEnterTimestampMonotonic",
            "ActiveExitTimestamp",
            "ActiveExitTimestampMonotonic",
            "InactiveEnterTimestamp",
            "InactiveEnterTimestampMonotonic",
            "ConditionTimestamp",
            "ConditionTimestampMonotonic",
            "AssertTimestamp",
            "AssertTimestampMonotonic",
        )
    }
    unit.update(
        ActiveState=Variant("s", "active"),
        SubState=Variant("s", "running"),
        FreezerState=Variant("s", "running"),
        InvocationID=inv,
        Job=Variant("(uo)", [0, "/"]),
        ConditionResult=Variant("b", True),
        AssertResult=Variant("b", True),
        ActivationDetails=Variant("a(ss)", []),
    )
    out = []
    for iface, changed, names in (
        ("org.freedesktop.systemd1.Service", service, invalid),
        ("org.freedesktop.systemd1.Unit", unit, ["Conditions", "Asserts"]),
    ):
        m = Message(
            message_type=MessageType.SIGNAL,
            path=path,
            interface="org.freedesktop.DBus.Properties",
            member="PropertiesChanged",
            signature="sa{sv}as",
            body=[iface, changed, names],
            serial=1,
        )
        out.append(bytes(m._marshall(False)))
    return out


async def main(address, count, units, rate):
    bus = await MessageBus(bus_address=address).connect()
    sock = bus._sock
    # The messages are marshalled once and written as raw bytes, many per
    # sendall, on a blocking socket: a sender that marshals each message is slower
    # than the listener and measures itself (docs/listener.md, flood).
    sock.setblocking(True)
    print(bus.unique_name, flush=True)
    sys.stdin.readline()  # go
    inv = Variant("ay", bytes(range(16)))
    wire = [m for i in range(units) for m in pair(i, inv)]
    batch = 200
    start = time.monotonic()
    sent = 0
    serial = 1
    while sent < count:
        n = min(batch, count - sent)
        chunk = bytearray()
        for k in range(n):
            m = bytearray(wire[(sent + k) % len(wire)])
            struct.pack_into("<I", m, 8, serial)
            serial = serial % 0xFFFFFFF0 + 1
            chunk += m
        sock.sendall(chunk)
        sent += n
        if rate:
            ahead = sent / rate - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)  # noqa: ASYNC251 - a blocking sender, alone on its loop
    took = time.monotonic() - start
    time.sleep(0.5)  # noqa: ASYNC251
    print(took, flush=True)
    bus.disconnect()


asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])))
