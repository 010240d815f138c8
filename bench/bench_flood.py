"""Recovery latency while a local user floods the D-Bus API (not a test).

Run: /opt/unitgen/bin/python bench/bench_flood.py [--trials 10] [--rounds 40]

In a booted container (the system sandbox) with the rendered ``unitgen
watch`` daemon and the shipped bus policy: a watched ``Restart=no`` unit is
killed (SIGKILL) and the daemon's ladder restarts it. Latency is systemd's
own clock: ``ActiveEnterTimestampMonotonic`` of the new start minus
``InactiveEnterTimestampMonotonic`` (entered failed). Trials alternate idle
and flooded; a flooded trial kills the unit once the flood client
(``tests/flood_client.py``, run as uid 65534) has its 25 connections up and
sends ``--rounds`` rounds of 500 History calls. Prints the medians and their
ratio, and what the flood's calls got back.
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from daemon_sandbox import DAEMON, install_daemon, write_policy  # noqa: E402

from unitgen.paths import Scope  # noqa: E402
from unitgen.sandbox import Sandbox, as_user  # noqa: E402

FLOOD = REPO / "tests" / "flood_client.py"
UNIT = "flooded.service"


def recover_once(sb: Sandbox) -> float:
    first = sb.main_pid(UNIT)
    sb.kill_main(UNIT)
    sb.wait_for(
        UNIT,
        lambda p: p.get("ActiveState") == "active" and p.get("MainPID") not in ("0", str(first)),
        30,
    )
    props = sb.show(UNIT, "ActiveEnterTimestampMonotonic", "InactiveEnterTimestampMonotonic")
    up = int(props["ActiveEnterTimestampMonotonic"])
    down = int(props["InactiveEnterTimestampMonotonic"])
    return (up - down) / 1e6


def flooded_once(sb: Sandbox, rounds: int, totals: collections.Counter[str], dest: str) -> float:
    flood = subprocess.Popen(
        [
            *as_user("nobody"),
            sys.executable,
            str(FLOOD),
            sb.bus_address,
            "--connections=25",
            "--calls=500",
            f"--rounds={rounds}",
            "--timeout=30",
            "--member=History",
            f"--arg={UNIT}",
            f"--dest={dest}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert flood.stderr is not None
        if flood.stderr.readline().strip() != "flooding":
            raise SystemExit(f"flood client failed: {flood.stderr.read()}")
        latency = recover_once(sb)
        still_flooding = flood.poll() is None
        out, _err = flood.communicate(timeout=300)
        totals.update(json.loads(out)["outcomes"])
        if not still_flooding:
            print("  (flood ended before the recovery: raise --rounds)")
        return latency
    finally:
        if flood.poll() is None:
            flood.kill()
            flood.communicate()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument(
        "--flood-dest",
        default="org.unitgen.Recovery1",
        help="where the flood goes; a name nobody owns measures the bus daemon's share alone",
    )
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-flood-") as tmp:
        tmp_path = Path(tmp)
        tmp_path.chmod(0o755)
        sb = Sandbox.start(Scope.SYSTEM, share=[REPO, tmp_path])
        try:
            # No back-off: every kill is measured as a first attempt would be.
            write_policy(
                sb,
                UNIT,
                max_attempts=1000,
                window=60.0,
                min_uptime=0.1,
                backoff={"base": 0.001, "factor": 1.0, "max": 0.001, "jitter": 0.0},
            )
            install_daemon(sb, tmp_path, {UNIT: "[Service]\nExecStart=/bin/sleep infinity\n"})
            sb.systemctl("start", DAEMON, check=True)
            sb.systemctl("start", UNIT, check=True)
            recover_once(sb)  # warm-up: first read of the unit, imports
            idle: list[float] = []
            flooded: list[float] = []
            totals: collections.Counter[str] = collections.Counter()
            try:
                for _ in range(opts.trials):
                    idle.append(recover_once(sb))
                    flooded.append(flooded_once(sb, opts.rounds, totals, opts.flood_dest))
            except Exception:
                print(sb.journal(DAEMON, 60))
                raise
            journal = sb.journal(DAEMON, 5000)
            restarts = sb.show(DAEMON, "NRestarts")["NRestarts"]
        finally:
            sb.close()
    mi, mf = statistics.median(idle), statistics.median(flooded)
    print(
        f"idle    median {mi * 1000:7.1f} ms  "
        f"(min {min(idle) * 1000:.1f}, max {max(idle) * 1000:.1f})"
    )
    print(
        f"flooded median {mf * 1000:7.1f} ms  "
        f"(min {min(flooded) * 1000:.1f}, max {max(flooded) * 1000:.1f})"
    )
    print(f"ratio flooded/idle: {mf / mi:.2f}")
    print(f"flood outcomes: {dict(totals)}")
    print(
        f"daemon restarts: {restarts}; 'bus connection' lines: "
        f"{journal.count('bus connection')}; tracebacks: {journal.count('Traceback')}"
    )


if __name__ == "__main__":
    main()
