"""floor: bare restart, bare read+restart and unitgen watch, the same burst, in turn.

What the burst costs a listener that does nothing but restart, one that also
makes unitgen's first read, and unitgen's whole ladder: alternating, so the
machine's drift hits all three alike. Ends with each round's CPU and last
running again of the three, and unitgen watch's ratios to the bare read + restart
listener (the CPU target is 1.5x, last running 1.05x).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics

from listener.bare import bare
from listener.scale import scale


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--units", type=int, default=1000)
    p.add_argument("--fail", type=int, default=200)
    p.add_argument("--rounds", type=int, default=3)


def main(args: argparse.Namespace) -> None:
    rows: list[tuple[tuple[float, float], ...]] = []
    for _ in range(args.rounds):
        rows.append(
            (
                asyncio.run(bare(args.units, args.fail, "restart")),
                asyncio.run(bare(args.units, args.fail, "read")),
                asyncio.run(scale(args.units, args.fail, 1.0, "fast")),
            )
        )
    print(
        "\n| round | CPU: bare restart / bare read + restart / unitgen watch | last running (ms) "
        "| watch / read: CPU | watch / read: last running |"
    )
    print("|---|---|---|---|---|")
    for i, ((c0, t0), (c1, t1), (c2, t2)) in enumerate(rows, 1):
        print(
            f"| {i} | {c0:.2f} / {c1:.2f} / {c2:.2f} s | {t0:.0f} / {t1:.0f} / {t2:.0f} "
            f"| {c2 / c1:.2f}x | {t2 / t1:.2f}x |"
        )
    cpu = [statistics.median(r[k][0] for r in rows) for k in range(3)]
    last = [statistics.median(r[k][1] for r in rows) for k in range(3)]
    print(
        f"| median | {cpu[0]:.2f} / {cpu[1]:.2f} / {cpu[2]:.2f} s "
        f"| {last[0]:.0f} / {last[1]:.0f} / {last[2]:.0f} "
        f"| {cpu[2] / cpu[1]:.2f}x | {last[2] / last[1]:.2f}x |"
    )
