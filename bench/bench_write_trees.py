"""The all-or-nothing writer alone: write_trees() for the units and policies of N services.

    /opt/unitgen/bin/python bench/bench_write_trees.py [--services N] [--repeat R]

Two cases, alternated run by run: into empty directories (a first install),
and over the same tree already installed (a re-render: every file replaced,
each one hard-linked as its backup until every rename has succeeded).
Reports min and median wall clock per case; docs/reliability.md quotes them.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_spec import generate

from unitgen.paths import Scope
from unitgen.render import RenderOptions, render, render_policies
from unitgen.specfile import parse_spec
from unitgen.writetrees import write_trees


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    spec = parse_spec(generate(args.services), "bench.toml")
    options = RenderOptions(systemd_version=252, scope=Scope.SYSTEM, unitgen_bin="/x/unitgen")
    units, policies = render(spec, options), render_policies(spec, options)
    times: dict[str, list[float]] = {"fresh": [], "replace": []}
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        for run in range(args.repeat):
            for case in ("fresh", "replace") if run % 2 == 0 else ("replace", "fresh"):
                out = Path(tmp) / case
                if case == "fresh":
                    shutil.rmtree(out, ignore_errors=True)
                trees = [(out / "units", units), (out / "policy", policies)]
                if case == "replace" and not out.exists():
                    write_trees(trees)
                start = time.perf_counter()
                write_trees(trees)
                times[case].append(time.perf_counter() - start)
    files = len(units) + len(policies)
    for case, values in times.items():
        print(
            f"{case:8} {files} files: min {min(values) * 1000:.0f} ms, "
            f"median {statistics.median(values) * 1000:.0f} ms ({args.repeat} runs)"
        )


if __name__ == "__main__":
    main()
