"""floor: bare restart, bare read+restart and unitgen watch, the same burst, in turn.

What the burst costs a listener that does nothing but restart, one that also
makes unitgen's first read, and unitgen's whole ladder: alternating, so the
machine's drift hits all three alike.
"""

from __future__ import annotations

import argparse
import asyncio

from listener.bare import bare
from listener.scale import scale


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--units", type=int, default=1000)
    p.add_argument("--fail", type=int, default=200)
    p.add_argument("--rounds", type=int, default=3)


def main(args: argparse.Namespace) -> None:
    for _ in range(args.rounds):
        asyncio.run(bare(args.units, args.fail, "restart"))
        asyncio.run(bare(args.units, args.fail, "read"))
        asyncio.run(scale(args.units, args.fail, 1.0, "fast"))
