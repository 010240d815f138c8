"""What the run-dir ledger adds to a recovery (not a test).

Run: /opt/unitgen/bin/python bench/bench_ledger.py [--trials 2000] [--dir /run/...]

Per recovery the engine reads the unit's ledger once in diagnosis
(``Ledger.entry``), writes one attempt before RestartUnit
(``Ledger.record_attempt``: directory flock, read, temp file, fsync, rename)
and tries to remove the history-gap marker at the end (``clear_gap``). Timed
against the history database's own write before RestartUnit (one
``Store.record_attempts`` transaction), alternating, in directories on tmpfs
(/dev/shm, like /run) and on the disk (a temp dir under the working directory).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from handlers.ledger import Ledger
from handlers.store import AttemptRow, Stamp, Store


def _quantiles(xs: list[float]) -> str:
    xs = sorted(xs)
    med = statistics.median(xs)
    p95 = xs[int(0.95 * (len(xs) - 1))]
    return f"median {med * 1e6:8.1f} us  p95 {p95 * 1e6:8.1f} us"


def run(where: Path, trials: int) -> None:
    ledger = Ledger(where / "ledger")
    store = Store.open(where / "state" / "history.sqlite3")
    unit = "api.service"

    def write(i: int) -> None:
        # A 4 s horizon at one attempt per second keeps ~5, as a real window would.
        ledger.record_attempt(unit, Stamp(float(i), 1.7e9 + i, "b"), horizon=4.0)

    def read(_i: int) -> None:
        ledger.entry(unit)

    def clear(_i: int) -> None:
        ledger.clear_gap()

    def db(i: int) -> None:
        row = AttemptRow("inc", unit, Stamp(float(i), 1.7e9 + i, "b"), 1, "restart", "", "", 0.0)
        store.record_attempts([row])

    steps: dict[str, Callable[[int], None]] = {
        "ledger write": write,
        "ledger read": read,
        "clear_gap": clear,
        "store write": db,
    }
    timings: dict[str, list[float]] = {name: [] for name in steps}
    for i in range(trials):
        # Alternating: each round times every step once, so load hits all alike.
        for name, step in steps.items():
            t = time.perf_counter()
            step(i)
            timings[name].append(time.perf_counter() - t)
    store.close()
    print(f"{where}:")
    for name, xs in timings.items():
        print(f"  {name:15} {_quantiles(xs)}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=2000)
    parser.add_argument("--dir", action="append", default=[])
    args = parser.parse_args()
    dirs = args.dir or ["/dev/shm", os.getcwd()]
    for base in dirs:
        with tempfile.TemporaryDirectory(dir=base, prefix="bench-ledger-") as tmp:
            run(Path(tmp), args.trials)


if __name__ == "__main__":
    main()
