"""A D-Bus caller that floods org.unitgen.Recovery1, as a hostile local user would.

Standalone (only dbus-fast), so a test or a benchmark can run it as another uid::

    python tests/flood_client.py ADDRESS --connections 25 --calls 500 \
        --member History --arg web.service

Opens the connections, then sends every call at once (``calls`` spread over
them, none waiting for another) and prints one JSON object: how many calls got
a reply, how many each D-Bus error, how many none within ``--timeout``, and
how long the whole flood took.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import sys
import time
from typing import Any

BUS_NAME = "org.unitgen.Recovery1"
OBJECT_PATH = "/org/unitgen/Recovery1"
INTERFACE = "org.unitgen.Recovery1"


async def _one(bus: Any, msg: Any, timeout: float) -> str:  # noqa: ASYNC109 - per call
    from dbus_fast import MessageType

    try:
        reply = await asyncio.wait_for(bus.call(msg), timeout)
    except TimeoutError:
        return "timeout"
    except Exception as exc:
        return f"exception:{type(exc).__name__}"
    if reply.message_type == MessageType.ERROR:
        return str(reply.error_name)
    return "ok"


async def flood(
    address: str,
    connections: int,
    calls: int,
    member: str,
    args: list[str],
    timeout: float,  # noqa: ASYNC109 - per call
    rounds: int = 1,
    destination: str = BUS_NAME,
) -> dict[str, Any]:
    from dbus_fast import Message
    from dbus_fast.aio import MessageBus

    buses = [await MessageBus(bus_address=address).connect() for _ in range(connections)]
    # The caller may wait for this line to act during the flood.
    print("flooding", file=sys.stderr, flush=True)
    outcomes: collections.Counter[str] = collections.Counter()
    started = time.monotonic()
    try:
        for _ in range(rounds):
            pending = []
            for i in range(calls):
                msg = Message(
                    destination=destination,
                    path=OBJECT_PATH,
                    interface=INTERFACE,
                    member=member,
                    signature="s" * len(args),
                    body=list(args),
                )
                pending.append(_one(buses[i % connections], msg, timeout))
            outcomes.update(await asyncio.gather(*pending))
    finally:
        elapsed = time.monotonic() - started
        for bus in buses:
            bus.disconnect()
        await asyncio.gather(*(b.wait_for_disconnect() for b in buses), return_exceptions=True)
    return {"outcomes": dict(outcomes), "seconds": round(elapsed, 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("address")
    parser.add_argument("--connections", type=int, default=25)
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--member", default="History")
    parser.add_argument("--arg", action="append", default=[])
    parser.add_argument("--timeout", type=float, default=25.0)
    parser.add_argument("--dest", default=BUS_NAME, help="bus name to call (a baseline: none)")
    opts = parser.parse_args(argv)
    result = asyncio.run(
        flood(
            opts.address,
            opts.connections,
            opts.calls,
            opts.member,
            opts.arg,
            opts.timeout,
            opts.rounds,
            opts.dest,
        )
    )
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
