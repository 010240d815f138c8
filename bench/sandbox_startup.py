"""Start + teardown time of the disposable systemd (user manager and nspawn container).

    /opt/unitgen/bin/python bench/sandbox_startup.py [--runs N] [--system]

Prints min / median / max seconds for "start until the manager reports running"
and for "close() until every process, cgroup and file is gone".
"""

from __future__ import annotations

import argparse
import statistics
import time

from unitgen.paths import Scope
from unitgen.sandbox import Sandbox


def measure(scope: Scope, runs: int, **kwargs: bool) -> tuple[list[float], list[float]]:
    starts, closes = [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        sb = Sandbox.start(scope, **kwargs)  # type: ignore[arg-type]
        t1 = time.perf_counter()
        sb.close()
        t2 = time.perf_counter()
        starts.append(t1 - t0)
        closes.append(t2 - t1)
    return starts, closes


def line(label: str, values: list[float]) -> str:
    return (
        f"{label:34} min {min(values):.3f}  median {statistics.median(values):.3f}  "
        f"max {max(values):.3f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--system", action="store_true", help="also measure the container")
    args = parser.parse_args()
    cases: list[tuple[str, Scope, dict[str, bool]]] = [
        ("user", Scope.USER, {}),
        ("user, no journald", Scope.USER, {"journal": False}),
    ]
    if args.system:
        cases.append(("system (nspawn -b)", Scope.SYSTEM, {}))
    for label, scope, kwargs in cases:
        runs = args.runs if scope is Scope.USER else max(3, args.runs // 4)
        starts, closes = measure(scope, runs, **kwargs)
        print(line(f"{label}: start ({runs} runs)", starts))
        print(line(f"{label}: teardown", closes))
        total = [a + b for a, b in zip(starts, closes, strict=True)]
        print(line(f"{label}: start + teardown", total))


if __name__ == "__main__":
    main()
