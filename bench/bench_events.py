"""Cost of publishing recovery events: D-Bus signals, journal, metrics (not a test).

Run: /opt/unitgen/bin/python bench/bench_events.py [--events 5000] [--units 1000]

* D-Bus, side by side on dbus-next and dbus-fast, each in the same run on a
  private dbus-daemon: the time ``RecoveryService.emit`` takes (this is what
  the ladder pays per event, on its own loop), and the end-to-end rate an
  independent dbus-next consumer receives them at.
* Journal: ``JournalSink.emit`` to a datagram socket drained by a thread.
* Metrics: ``Metrics.emit``, ``render()`` with ``--units`` units that each
  had an incident, and one real HTTP scrape of that.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from eventstream_helpers import FakeBackend, connect, disconnect, private_bus

from handlers.buslib import library_of
from handlers.dbus_api import INTERFACE, RecoveryService
from handlers.events import Event, EventKind
from handlers.journal import JournalSink
from handlers.metrics import Metrics, MetricsPublisher

KINDS = list(EventKind)


def make_events(n: int) -> list[Event]:
    fields: dict[str, Any] = {
        "level": "restart",
        "step": "restarting",
        "result": "ok",
        "duration": 0.01,
    }
    return [
        Event(KINDS[i % len(KINDS)], f"w@{i % 200}.service", f"inc-{i}", fields) for i in range(n)
    ]


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def us(seconds: float) -> str:
    return f"{seconds * 1e6:8.1f} µs"


async def bench_dbus(lib: str, address: str, events: list[Event]) -> None:
    """Emit a burst; time until the pump has pushed all of it through the bus daemon."""
    service = RecoveryService(FakeBackend())
    bus = await connect(lib, address)
    try:
        await service.attach(bus)
        per_emit: list[float] = []
        start = time.perf_counter()
        cpu = time.process_time()
        for event in events:
            t0 = time.perf_counter()
            service.emit(event)
            per_emit.append(time.perf_counter() - t0)
        while service.sent + service.dropped < len(events):  # noqa: ASYNC110 - a bench
            await asyncio.sleep(0.001)
        # One more round trip: the bus daemon has read (and routed) everything before it.
        await bus.call(
            library_of(bus).Message(
                destination="org.freedesktop.DBus",
                path="/org/freedesktop/DBus",
                interface="org.freedesktop.DBus",
                member="GetId",
            )
        )
        total = time.perf_counter() - start
        cpu = time.process_time() - cpu
        print(
            f"dbus-{lib:4}  emit median {us(statistics.median(per_emit))}"
            f"  p99 {us(pct(per_emit, 0.99))}  | {len(events)} signals through the bus in"
            f" {total:.2f} s = {len(events) / total:,.0f}/s, {cpu / len(events) * 1e6:.0f} µs CPU"
            f" each (dropped {service.dropped}, still connected: {bus.connected})"
        )
    finally:
        await service.close()
        await disconnect(bus)


_DRAIN = """
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
print("ready", flush=True)
s.settimeout(2)
n = 0
try:
    while True:
        s.recv(65536)
        n += 1
except TimeoutError:
    print(n, flush=True)
"""


def bench_journal(events: list[Event]) -> None:
    """JournalSink.emit to a datagram socket drained by another process, as journald is."""
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "journal.sock")
        reader = subprocess.Popen(
            [sys.executable, "-c", _DRAIN, path], stdout=subprocess.PIPE, text=True
        )
        assert reader.stdout is not None
        assert reader.stdout.readline().strip() == "ready"
        sink = JournalSink(path)
        per_emit = []
        for event in events:
            t0 = time.perf_counter()
            sink.emit(event)
            per_emit.append(time.perf_counter() - t0)
        sink.close()
        received = int(reader.stdout.readline())
        reader.wait()
        reader.stdout.close()
        print(
            f"journal    emit median {us(statistics.median(per_emit))}"
            f"  p99 {us(pct(per_emit, 0.99))}  | sent {sink.sent}, received {received},"
            f" dropped {sink.dropped} (never waited for)"
        )


async def bench_metrics(events: list[Event], units: int) -> None:
    metrics = Metrics()
    per_emit = []
    for event in events:
        t0 = time.perf_counter()
        metrics.emit(event)
        per_emit.append(time.perf_counter() - t0)
    for i in range(units):
        unit = f"svc{i}.service"
        metrics.emit(Event(EventKind.INCIDENT_OPENED, unit, f"m{i}", {"classification": "signal"}))
        metrics.emit(
            Event(
                EventKind.STEP_FINISHED,
                unit,
                f"m{i}",
                {"step": "verifying", "result": "ok", "level": "restart"},
            )
        )
        metrics.emit(Event(EventKind.RECOVERED, unit, f"m{i}", {"duration": 0.2}))
    t0 = time.perf_counter()
    text = metrics.render()
    render = time.perf_counter() - t0
    publisher = MetricsPublisher(metrics, listen=("127.0.0.1", 0))
    await publisher.start()
    try:
        assert publisher.address is not None
        t0 = time.perf_counter()
        reader, writer = await asyncio.open_connection(*publisher.address)
        writer.write(b"GET /metrics HTTP/1.1\r\n\r\n")
        body = await reader.read()
        scrape = time.perf_counter() - t0
        writer.close()
        await writer.wait_closed()
    finally:
        await publisher.close()
    print(
        f"metrics    emit median {us(statistics.median(per_emit))}  p99 {us(pct(per_emit, 0.99))}"
        f"  | render {units} units: {render * 1e3:.1f} ms, {len(text) / 1024:.0f} KiB;"
        f" HTTP scrape {scrape * 1e3:.1f} ms ({len(body) / 1024:.0f} KiB)"
    )


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--units", type=int, default=1000)
    args = parser.parse_args()
    events = make_events(args.events)
    with private_bus() as bus:
        # A real consumer in another process, so the bus daemon routes every signal.
        monitor = await asyncio.create_subprocess_exec(
            "dbus-monitor", "--address", bus.address, f"interface='{INTERFACE}'",
            stdout=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        try:
            for lib in ("next", "fast", "next", "fast"):  # alternated, same run
                await bench_dbus(lib, bus.address, events)
        finally:
            monitor.terminate()
            await monitor.wait()
    bench_journal(events)
    await bench_metrics(events, args.units)


if __name__ == "__main__":
    asyncio.run(main())
