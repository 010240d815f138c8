"""flood: parse + route throughput of the listener, dbus-fast against dbus-next.

flood_emitter.py stands in for systemd: PropertiesChanged pairs shaped like systemd
252's, for 1000 units, pre-marshalled; the receiver is a SystemdBus with the
listener's two match rules and its signal routing.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from handlers import bus as busmod
from handlers.bus import SystemdBus
from handlers.listener import Listener
from listener.common import HERE
from unitgen.paths import Paths, Scope
from unitgen.sandbox import Sandbox

EMITTER = HERE / "flood_emitter.py"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--count", type=int, default=100000)
    p.add_argument("--rate", type=float, default=0.0, help="cap signals/s (0: as fast as possible)")


def main(args: argparse.Namespace) -> None:
    asyncio.run(flood(args.count, args.rate))


async def _flood_one(sb: Sandbox, lib: str, count: int, rate: float) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="unitgen-flood-"))
    paths = Paths(Scope.USER, work / "p", work / "s", work / "r", work / "u")
    listener = Listener(paths, lambda bus: None, globs=["f*.service"], health=False)  # type: ignore[arg-type,return-value]
    listener.watch.rescan()
    bus = await SystemdBus.connect(Scope.USER, sb.bus_address, library=lib)
    got = 0
    first = last = 0.0

    def on_signal(msg: Any) -> None:
        nonlocal got, first, last
        listener._on_signal(msg)
        if msg.member != "PropertiesChanged":
            return  # NameAcquired and the like reach every connection unasked
        got += 1
        if got == 1:
            first = time.monotonic()
        last = time.monotonic()

    emitter = subprocess.Popen(  # noqa: ASYNC220 - harness set-up, before timing
        [sys.executable, str(EMITTER), sb.bus_address, str(count), "1000", str(rate)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert emitter.stdout is not None and emitter.stdin is not None
    name = emitter.stdout.readline().strip()
    bus.add_signal_callback(on_signal)
    for interface in (busmod.UNIT, busmod.SERVICE):
        # The listener's two rules, with the emitter standing in for systemd.
        await bus.add_match(
            busmod.match_rule(
                type="signal",
                sender=name,
                interface=busmod.PROPERTIES,
                member="PropertiesChanged",
                path_namespace=busmod.UNIT_PATH_PREFIX,
                arg0=interface,
            )
        )
    cpu0 = time.process_time()
    emitter.stdin.write("go\n")
    emitter.stdin.flush()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 120
    while got < count and loop.time() < deadline and bus.connected:
        await asyncio.sleep(0.05)
        if emitter.poll() is not None and got < count:
            await asyncio.sleep(1.0)
            break
    cpu = time.process_time() - cpu0
    emitter.wait(30)
    connected = bus.connected
    await bus.close()
    await listener._teardown()
    shutil.rmtree(work, ignore_errors=True)
    span = max(last - first, 1e-9)
    return {
        "lib": lib,
        "rate": int(rate),
        "sent": count,
        "received": got,
        "lost": count - got,
        "still_connected": connected,
        "per_second": got / span,
        "cpu_per_signal_us": 1e6 * cpu / max(got, 1),
        "routed": listener.stats.signals,
    }


async def flood(count: int, rate: float) -> None:
    with Sandbox.start(Scope.USER) as sb:
        results = []
        for cap in (rate, 0.0) if rate else (0.0,):
            for lib in ("fast", "next"):
                results.append(await _flood_one(sb, lib, count, cap))
    print(f"\nflood: {count} PropertiesChanged signals shaped like systemd 252's (Service and")
    print(
        f"Unit pairs for 1000 units), pre-marshalled, offered at {rate or 'no cap'}/s and "
        "uncapped; receiver = SystemdBus + listener routing\n"
    )
    print(
        "| library | offered/s | sent | received | lost | connected | handled/s | CPU/signal (us) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| dbus-{r['lib']} | {r['rate'] or 'max'} | {r['sent']} | {r['received']} | "
            f"{r['lost']} | "
            f"{r['still_connected']} | {r['per_second']:.0f} | {r['cpu_per_signal_us']:.1f} |"
        )
