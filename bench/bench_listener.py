"""Listener benchmarks. Not a test: prints the tables of docs/listener.md.

Run (root; a disposable user manager is started for each mode):

    /opt/unitgen/bin/python bench/bench_listener.py latency [--trials 100 --libs fast]
    /opt/unitgen/bin/python bench/bench_listener.py giveup [--trials 120]
    /opt/unitgen/bin/python bench/bench_listener.py onfailure [--trials 60]
    /opt/unitgen/bin/python bench/bench_listener.py scale [--units 1000 --fail 200 --idle 60]
    /opt/unitgen/bin/python bench/bench_listener.py scale --generated
    /opt/unitgen/bin/python bench/bench_listener.py flood [--count 100000 --rate 20000]
    /opt/unitgen/bin/python bench/bench_listener.py bare [--units 1000 --fail 200 --what read]
    /opt/unitgen/bin/python bench/bench_listener.py floor [--rounds 3]

Each mode is a module of bench/listener/ (its docstring says what it measures);
bench/listener/common.py is the harness they share. Method (docs/listener.md,
Benchmarks): the service is bench/stamp.c, which writes its CLOCK_MONOTONIC start
time to a FIFO first thing; approaches of one mode alternate in one run.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
for root in (BENCH, BENCH.parent):
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))

MODES = ("latency", "giveup", "onfailure", "flood", "scale", "bare", "floor")


def parser() -> argparse.ArgumentParser:
    """Every mode's arguments, from its module's ``add_arguments``."""
    top = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    sub = top.add_subparsers(dest="mode", required=True)
    for mode in MODES:
        module = importlib.import_module(f"listener.{mode}")
        doc = (module.__doc__ or "").split("\n")[0]
        module.add_arguments(sub.add_parser(mode, help=doc.partition(": ")[2], description=doc))
    return top


def cli(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    importlib.import_module(f"listener.{args.mode}").main(args)


if __name__ == "__main__":
    cli()
