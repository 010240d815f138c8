"""`unitgen render` end to end on a spec of N services (default 1,000).

    /opt/unitgen/bin/python bench/bench_render_cli.py [--services N] [--repeat R]

What an operator waits for: a new process starts, imports, reads and validates
the spec (bench_spec.py's generator: every service uses most keys), renders
every unit and policy, and writes them all-or-nothing into an empty directory.
Reports min and median of R runs: wall clock, and the child's CPU time (the
figure to compare on a shared, loaded machine). bench_spec.py and
bench_render.py split this into its parts.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_spec import generate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    walls: list[float] = []
    cpus: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "spec.toml"
        spec.write_text(generate(args.services))
        size = spec.stat().st_size
        for run in range(args.repeat):
            out = Path(tmp) / f"out{run}"
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            start = time.perf_counter()
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "unitgen",
                    "render",
                    str(spec),
                    "--out",
                    str(out / "units"),
                    "--policy-dir",
                    str(out / "policy"),
                    "--systemd-version",
                    "252",
                ],
                check=True,
                stdout=subprocess.DEVNULL,
            )
            walls.append(time.perf_counter() - start)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
            written = sum(1 for p in out.rglob("*") if p.is_file())
    print(
        f"{args.services} services, {written} files written, spec {size // 1024} KiB, "
        f"{args.repeat} runs"
    )
    print(f"wall min {min(walls):.3f} s  median {statistics.median(walls):.3f} s")
    print(f"CPU  min {min(cpus):.3f} s  median {statistics.median(cpus):.3f} s")


if __name__ == "__main__":
    main()
