"""What one crash report costs the listener's loop, with the daemon's real sinks.

The give-up path's end-to-end latency is `bench_listener.py giveup` (no event sinks
there); this isolates the part the listener adds per crash: the Crashed event
built and sent through the FanOut `unitgen watch` uses (Metrics, a JournalSink
writing datagrams to a socket bound here, standing in for journald) and the
flapping count (with and without an ``alert_on`` in the unit's policy, the
alert itself not sent: the threshold is never reached). Alternating, in one run.

    /opt/unitgen/bin/python bench/bench_crash_report.py [--n 20000 --rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
if str(BENCH.parent) not in sys.path:
    sys.path.insert(0, str(BENCH.parent))

from handlers.events import FanOut, NullSink  # noqa: E402
from handlers.flapping import FlapWatch  # noqa: E402
from handlers.journal import JournalSink  # noqa: E402
from handlers.listener import Listener, UnitState  # noqa: E402
from handlers.metrics import Metrics  # noqa: E402
from unitgen.model import AlertOn  # noqa: E402
from unitgen.paths import Paths, Scope  # noqa: E402
from unitgen.policy import Policy  # noqa: E402

PROPS = {
    "ActiveState": "activating",
    "SubState": "auto-restart",
    "Result": "exit-code",
    "ExecMainCode": 1,
    "ExecMainStatus": 3,
    "NRestarts": 2,
}


def make(tmp: Path, sinks: str, alert_on: bool) -> Listener:
    paths = Paths(Scope.USER, tmp / "p", tmp / "s", tmp / "r", tmp / "u")
    if sinks == "daemon":
        journal = JournalSink(str(tmp / "journal.sock"), object_unit=True)
        events: FanOut | NullSink = FanOut([Metrics(), journal])
    else:
        events = NullSink()
    # A huge window and threshold: every crash is counted, none alerts.
    policy = Policy(unit="x.service", alert_on=AlertOn(1000, 86400.0) if alert_on else None)
    return Listener(
        paths,
        lambda bus: None,  # type: ignore[arg-type,return-value]
        health=False,
        events=events,
        flapping=FlapWatch(lambda unit: policy),
    )


def per_report_us(listener: Listener, n: int) -> float:
    state = UnitState()
    props = dict(PROPS)
    started = time.perf_counter_ns()
    for i in range(n):
        props["InvocationID"] = i.to_bytes(16, "big")
        listener._crashed("x.service", state, props, "systemd")
    return (time.perf_counter_ns() - started) / n / 1000


async def run(n: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        journald = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        journald.bind(str(tmp / "journal.sock"))
        journald.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        journald.setblocking(False)
        cases = {
            "no sinks, no alert_on": make(tmp, "none", False),
            "daemon sinks (metrics, journal), no alert_on": make(tmp, "daemon", False),
            "daemon sinks, alert_on counted": make(tmp, "daemon", True),
        }
        got: dict[str, list[float]] = {k: [] for k in cases}
        for _ in range(rounds):
            for name, listener in cases.items():
                got[name].append(per_report_us(listener, n))
                while True:  # keep the stand-in journal drained, as journald would
                    try:
                        journald.recv(1 << 16)
                    except BlockingIOError:
                        break
        journald.close()
        for listener in cases.values():
            await listener.flapping.aclose()
    print(f"\none crash report (Crashed event + flapping count), us; {rounds} rounds x {n}\n")
    print("| case | median | min | max |")
    print("|---|---|---|---|")
    for name, values in got.items():
        print(
            f"| {name} | {statistics.median(values):.1f} | {min(values):.1f} | {max(values):.1f} |"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("--n", type=int, default=20000)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    asyncio.run(run(args.n, args.rounds))


if __name__ == "__main__":
    main()
