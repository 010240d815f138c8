"""``unitgen harden`` on the Debian daemons install.sh installs: trials, time, exposure.

    /opt/unitgen/bin/python bench/bench_harden.py [--runs N] [--settle S] [UNIT=PROBE ...]

Default units: nginx.service with http://127.0.0.1/ and redis-server.service with
``cmd /usr/bin/redis-cli -h 127.0.0.1 ping``. Each run is a full search (a
container per trial). Prints per unit: trials, wall time (min/median/max), the
time of one trial by verdict (a failing start is cheap, a failing probe costs
the settle time and a probe timeout), exposure before and after. Figures go to
docs/hardening.md; the machine is shared, so quote the load average with them.
"""

from __future__ import annotations

import argparse
import os
import statistics

from unitgen import systemd_version
from unitgen.harden import HardenOptions, harden, parse_probe

DEFAULT = {
    "nginx.service": "http://127.0.0.1/",
    "redis-server.service": "cmd /usr/bin/redis-cli -h 127.0.0.1 ping",
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--settle", type=float, default=2.0)
    parser.add_argument("units", nargs="*", metavar="UNIT=PROBE")
    args = parser.parse_args()
    units = dict(u.split("=", 1) for u in args.units) if args.units else DEFAULT
    version = systemd_version.resolve(None)
    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    for unit, probe in units.items():
        seconds: list[float] = []
        ok_trials: list[float] = []
        bad_trials: list[float] = []
        result = None
        for _ in range(args.runs):
            result = harden(
                unit,
                parse_probe(probe),
                systemd_version=version,
                options=HardenOptions(settle=args.settle),
            )
            seconds.append(result.seconds)
            for t in result.search.trials:
                (ok_trials if t.verdict.ok else bad_trials).append(t.seconds)
        assert result is not None
        print(
            f"{unit}: {len(result.search.trials)} trials; wall min {min(seconds):.1f} "
            f"median {statistics.median(seconds):.1f} max {max(seconds):.1f} s; "
            f"exposure {result.before:.1f} -> {result.after:.1f}; left off: "
            f"{', '.join(result.search.dropped) or 'nothing'}"
        )
        for label, values in (("passing trial", ok_trials), ("failing trial", bad_trials)):
            if values:
                print(
                    f"  {label}: n={len(values)} median {statistics.median(values):.2f} s, "
                    f"max {max(values):.2f} s"
                )
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
