"""What following parked units' dependencies adds to the listener's signal path (not a test).

Run: /opt/unitgen/bin/python bench/bench_parking.py [--rounds 20 --signals 20000]

Every PropertiesChanged now asks whether a parked unit waits for the unit it
is about, and every ActiveState of a watched unit whether that unit is itself
parked (one membership test on a live dict view each). Timed in-process on
``Listener._on_properties`` with a flood of signals of 1,000 watched units
that nobody waits for, three ways, alternating round by round: the method
as it was before parking (its source with the parking lines removed), no unit
parked, and 1,000 units parked on other units. Prints the medians of the
rounds' per-signal times and their ratios to the first.
"""

from __future__ import annotations

import argparse
import inspect
import statistics
import tempfile
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from handlers.bus import UNIT, unit_path
from handlers.listener import Listener
from handlers.parking import ParkedUnit, _Entry
from unitgen.paths import Paths, Scope


@dataclass
class _Variant:
    signature: str
    value: Any


@dataclass
class _Msg:
    member: str
    body: list[Any]
    path: str


def _before() -> Callable[[Listener, Any], None]:
    """``Listener._on_properties`` as it was before parking: its parking lines removed."""
    import handlers.listener as mod

    lines = inspect.getsource(Listener._on_properties).splitlines()
    kept: list[str] = []
    skip = 0
    for line in lines:
        if skip:
            skip -= 1
            continue
        if "_park_deps" in line:
            skip = 2  # the comment and the call under it
            continue
        if "_parked_units" in line:
            skip = 1
            continue
        kept.append(line)
    source = textwrap.dedent("\n".join(kept))
    namespace: dict[str, Any] = {}
    exec(compile(source, "<before>", "exec"), vars(mod), namespace)
    fn: Callable[[Listener, Any], None] = namespace["_on_properties"]
    return fn


def _messages(n: int) -> list[_Msg]:
    states = ("activating", "active", "deactivating", "failed")
    return [
        _Msg(
            "PropertiesChanged",
            [
                UNIT,
                {
                    "ActiveState": _Variant("s", states[i % 4]),
                    "SubState": _Variant("s", "running"),
                },
                [],
            ],
            unit_path(f"u{i % 1000}.service"),
        )
        for i in range(n)
    ]


def _listener(tmp: Path, parked: int) -> Listener:
    paths = Paths(Scope.USER, tmp / "p", tmp / "s", tmp / "r", tmp / "u")
    listener = Listener(paths, _no_engine, globs=["u*.service"], health=False)
    listener.watch.rescan()
    registry = listener.parked.registry
    for i in range(parked):
        # Registered without their tasks: only the lookups are timed here.
        info = ParkedUnit(f"p{i}.service", "i", (f"d{i}.service",), "", 0.0, 0.0, 600.0)
        registry._entries[info.unit] = _Entry(info)
        registry._waiters[f"d{i}.service"] = {info.unit}
    # Failures are queued, never handled: the queue must not fill.
    listener._enqueue = lambda unit, reason: None  # type: ignore[method-assign]
    return listener


def _no_engine(bus: Any) -> Any:
    raise AssertionError("no engine in this benchmark")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--signals", type=int, default=20000)
    args = ap.parse_args()
    msgs = _messages(args.signals)
    before = _before()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        old, empty, full = _listener(tmp, 0), _listener(tmp, 0), _listener(tmp, 1000)
        variants: dict[str, Callable[[Any], None]] = {
            "before parking": lambda m: before(old, m),
            "nothing parked": empty._on_properties,
            "1000 parked": full._on_properties,
        }
        times: dict[str, list[float]] = {k: [] for k in variants}
        for r in range(args.rounds):
            # Alternate the order too: the first of a round may pay for the others' garbage.
            order = list(variants.items())
            for name, handle in order if r % 2 == 0 else reversed(order):
                t0 = time.perf_counter()
                for m in msgs:
                    handle(m)
                times[name].append((time.perf_counter() - t0) / len(msgs))
    base = statistics.median(times["before parking"])
    for name, xs in times.items():
        med = statistics.median(xs)
        print(f"{name:16} {med * 1e9:8.1f} ns/signal  ratio {med / base:5.3f}")
    print(f"({args.rounds} rounds of {args.signals} signals, alternating; medians)")


if __name__ == "__main__":
    main()
