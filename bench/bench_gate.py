"""What a health gate adds to a start when the service is already healthy.

Run: /opt/unitgen/bin/python bench/bench_gate.py [--trials 20]

Times ``python3 -m handlers.gate POLICY UNIT`` (what ``ExecStartPost=`` runs
with ``health.gate = true``) against a TCP port and an HTTP server that answer
at once, next to a bare ``python3 -c pass`` of the same interpreter, trial by
trial in alternation so machine noise hits all alike. The difference is the
gate's own cost: interpreter start, imports, one probe.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from receivers import Receiver

from unitgen.model import Health, Probe
from unitgen.policy import Policy, to_json


def timed(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=20)
    args = parser.parse_args()
    with Receiver() as http, tempfile.TemporaryDirectory() as tmp:
        policies = {}
        for kind, target in (
            ("tcp", f"127.0.0.1:{http.port}"),
            ("http", http.url("/healthz")),
        ):
            probe = Probe(kind, target, timeout=2.0)  # type: ignore[arg-type]
            path = Path(tmp) / f"{kind}.service.json"
            path.write_text(to_json(Policy(unit=path.stem, health=Health(probe, gate=True))))
            policies[kind] = [sys.executable, "-m", "handlers.gate", str(path), path.stem]
        runs: dict[str, list[float]] = {"python -c pass": [], **{f"gate {k}": [] for k in policies}}
        for _ in range(args.trials):
            runs["python -c pass"].append(timed([sys.executable, "-c", "pass"]))
            for kind, argv in policies.items():
                runs[f"gate {kind}"].append(timed(argv))
    base = statistics.median(runs["python -c pass"])
    print(f"{args.trials} trials each, alternating; wall ms: min / median / max")
    for name, values in runs.items():
        ms = [v * 1000 for v in values]
        extra = "" if name.startswith("python") else f"  ({statistics.median(values) / base:.1f}x)"
        print(f"  {name:<16} {min(ms):7.1f} {statistics.median(ms):7.1f} {max(ms):7.1f}{extra}")


if __name__ == "__main__":
    main()
