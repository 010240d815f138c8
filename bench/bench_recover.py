"""How fast `unitgen recover` acts, and what the ladder itself costs (not a test).

Run: /opt/unitgen/bin/python bench/bench_recover.py [--trials 30] [--incidents 300]

Four measurements, all in one run (the machine is noisy: compare within a run):

1. Python start-up, side by side: bare ``python -c pass``; the imports of the
   recover path (cli, command, engine, bus layer, the D-Bus library); and
   ``unitgen --version`` (the console script, argparse, no command imported).
2. Failed -> RestartUnit through the real OnFailure= path in a disposable user
   manager: a service with ``OnFailure=unitgen-recover@%n.service`` is killed
   (SIGKILL) and systemd's own ``InactiveEnterTimestampMonotonic`` (entered
   failed) is compared with the monotonic time the ladder stamped on its
   ``restart`` row, just before ResetFailedUnit + RestartUnit. Same clock:
   CLOCK_MONOTONIC is system-wide. Also: failed -> new main process started
   (``ExecMainStartTimestampMonotonic``).
3. The same failure handled in-process (as the listener does): recover() call
   -> RestartUnit issued, over the same bus. This is the handler without
   Python start-up.
4. The handler's own overhead per incident: RecoveryEngine.recover() against an
   instant fake systemd (state machine, SQLite writes, events), median per
   incident over ``--incidents`` incidents.

Method: docs/listener.md, "Benchmarks" (medians, same-run comparisons).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

UNITGEN = str(Path(sys.executable).with_name("unitgen"))
REPO = Path(__file__).resolve().parent.parent


def stats(values: list[float]) -> str:
    if not values:
        return "no samples"
    v = sorted(values)
    p95 = v[min(len(v) - 1, round(0.95 * (len(v) - 1)))]
    return (
        f"min {v[0]:7.1f}  median {statistics.median(v):7.1f}  p95 {p95:7.1f}  "
        f"max {v[-1]:7.1f} ms  (n={len(v)})"
    )


def startup(n: int) -> dict[str, list[float]]:
    cases = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "imports of the recover path (dbus-fast)": [
            sys.executable,
            "-c",
            "import unitgen.cli, unitgen.commands.recover, handlers.recovery, handlers.bus,"
            " dbus_fast.aio",
        ],
        "imports of the recover path (dbus-next)": [
            sys.executable,
            "-c",
            "import unitgen.cli, unitgen.commands.recover, handlers.recovery, handlers.bus,"
            " dbus_next.aio",
        ],
        "unitgen --version": [UNITGEN, "--version"],
    }
    out: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(n):
        # Alternate the cases so load changes hit all of them alike.
        for name, argv in cases.items():
            t = time.perf_counter()
            subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
            out[name].append((time.perf_counter() - t) * 1000)
    return out


def _policy_json(unit: str) -> str:
    from unitgen.model import Backoff, Recovery
    from unitgen.policy import Policy, to_json

    # A window shorter than the pause between trials: every trial is a first attempt,
    # so no back-off and no budget, and min_uptime 0 so the process exits at once.
    rec = Recovery(
        max_attempts=1000,
        window=0.5,
        min_uptime=0.0,
        stable_after=0.5,
        start_timeout=10.0,
        backoff=Backoff(base=0.0, jitter=0.0),
    )
    return to_json(Policy(unit=unit, recovery=rec))


def onfailure_trials(trials: int, pause: float) -> dict[str, list[float]]:
    from handlers.store import Store
    from unitgen.paths import Scope
    from unitgen.sandbox import Sandbox

    base = Path(tempfile.mkdtemp(prefix="bench-recover-"))
    sb = Sandbox.start(Scope.USER, share=[base], journal=False)
    results: dict[str, list[float]] = {"failed -> RestartUnit": [], "failed -> new process": []}
    try:
        unit = "victim.service"
        policy_dir, state, run = base / "policy", base / "state", base / "run"
        policy_dir.mkdir()
        (policy_dir / f"{unit}.json").write_text(_policy_json(unit))
        env = "".join(
            f'Environment="{k}={v}"\n'
            for k, v in {
                "DBUS_SESSION_BUS_ADDRESS": sb.env["DBUS_SESSION_BUS_ADDRESS"],
                "UNITGEN_POLICY_DIR": str(policy_dir),
                "UNITGEN_STATE_DIR": str(state),
                "UNITGEN_RUN_DIR": str(run),
            }.items()
        )
        sb.install_units(
            {
                unit: "[Unit]\nOnFailure=unitgen-recover@%n.service\n"
                "[Service]\nExecStart=/bin/sleep infinity\nRestart=no\n",
                # No start limit on the recovery unit: trials come faster than its default
                # 5 starts per 10 s, which would refuse the OnFailure= job.
                "unitgen-recover@.service": (
                    "[Unit]\nStartLimitIntervalSec=0\n"
                    f"[Service]\nType=oneshot\n{env}ExecStart={UNITGEN} recover --user %i\n"
                ),
            }
        )
        sb.systemctl("start", unit, check=True)
        for _ in range(trials):
            pid = sb.main_pid(unit)
            sb.kill_main(unit)
            sb.wait_for(
                unit,
                lambda p, old=pid: (
                    p.get("ActiveState") == "active" and p.get("MainPID") not in ("0", str(old))
                ),
                timeout=30,
                prop="ActiveState",
            )
            props = sb.show(
                unit, "InactiveEnterTimestampMonotonic", "ExecMainStartTimestampMonotonic"
            )
            failed_at = int(props["InactiveEnterTimestampMonotonic"]) / 1e6
            started_at = int(props["ExecMainStartTimestampMonotonic"]) / 1e6
            store = Store.open(state / "history.sqlite3")
            rows = store._query(
                "SELECT mono, duration FROM attempts WHERE action = 'restart' ORDER BY id DESC"
                " LIMIT 1"
            )
            store.close()
            if rows:
                # The restart row is stamped just before ResetFailedUnit + RestartUnit
                # (it is written before the call, so a killed process still counts it).
                restart_call = float(rows[0][0])
                results["failed -> RestartUnit"].append((restart_call - failed_at) * 1000)
            results["failed -> new process"].append((started_at - failed_at) * 1000)
            # Let the recovery unit finish before the next kill.
            sb.wait_for(
                f"unitgen-recover@{unit}.service",
                lambda p: p.get("ActiveState") != "activating",
                timeout=30,
            )
            time.sleep(pause)
    finally:
        sb.close()
        shutil.rmtree(base, ignore_errors=True)
    return results


async def _inprocess(trials: int, pause: float) -> list[float]:
    from handlers.bus import SystemdBus
    from handlers.recovery import RecoveryEngine, Trigger
    from unitgen.paths import Paths, Scope
    from unitgen.sandbox import Sandbox

    base = Path(tempfile.mkdtemp(prefix="bench-recover-ip-"))
    sb = await asyncio.to_thread(Sandbox.start, Scope.USER, share=[base], journal=False)
    out: list[float] = []
    try:
        unit = "victim.service"
        paths = Paths(Scope.USER, base / "policy", base / "state", base / "run", base / "u")
        paths.policy_dir.mkdir()
        (paths.policy_dir / f"{unit}.json").write_text(_policy_json(unit))
        sb.install_units({unit: "[Service]\nExecStart=/bin/sleep infinity\nRestart=no\n"})
        bus = await SystemdBus.connect(Scope.USER, address=sb.bus_address)
        try:
            engine = RecoveryEngine(bus, paths, read_journal_lines=False)
            real_restart = bus.restart
            issued: list[float] = []

            async def timed_restart(name: str, mode: str = "replace") -> str:
                issued.append(time.monotonic())
                return await real_restart(name, mode)

            bus.restart = timed_restart  # type: ignore[method-assign]
            await asyncio.to_thread(sb.systemctl, "start", unit)
            for _ in range(trials):
                await asyncio.to_thread(sb.systemctl, "kill", "--signal=KILL", unit)
                await bus.wait_for(unit, lambda p: p.get("ActiveState") == "failed", 10)
                t0 = time.monotonic()
                await engine.recover(unit, Trigger("listener", result="signal"))
                out.append((issued[-1] - t0) * 1000)
                await asyncio.sleep(pause)
            await engine.aclose()
        finally:
            await bus.close()
    finally:
        await asyncio.to_thread(sb.close)
        shutil.rmtree(base, ignore_errors=True)
    return out


async def _overhead(incidents: int) -> list[float]:
    sys.path.insert(0, str(REPO / "tests"))
    from test_recovery import FakeBus, FakeUnit  # the tests' instant fake systemd

    from handlers.recovery import RecoveryEngine, Trigger
    from unitgen.paths import Paths, Scope

    base = Path(tempfile.mkdtemp(prefix="bench-recover-oh-"))
    try:
        paths = Paths(Scope.USER, base / "policy", base / "state", base / "run", base / "u")
        paths.policy_dir.mkdir()
        out: list[float] = []
        units = [FakeUnit(f"u{i}.service") for i in range(incidents)]
        bus = FakeBus(*units)
        engine = RecoveryEngine(bus, paths, read_journal_lines=False)
        for u in units:
            (paths.policy_dir / f"{u.name}.json").write_text(_policy_json(u.name))
            t0 = time.perf_counter()
            await engine.recover(u.name, Trigger("listener", result="signal"))
            out.append((time.perf_counter() - t0) * 1000)
        await engine.aclose()
        return out
    finally:
        shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=30)
    ap.add_argument("--startup", type=int, default=20)
    ap.add_argument("--incidents", type=int, default=300)
    ap.add_argument("--pause", type=float, default=0.7)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    report: dict[str, Any] = {"load": os.getloadavg()}
    print(f"load average at start: {report['load']}")
    for name, values in startup(args.startup).items():
        report[name] = values
        print(f"start-up  {name:42} {stats(values)}")
    for name, values in onfailure_trials(args.trials, args.pause).items():
        report[name] = values
        print(f"OnFailure {name:42} {stats(values)}")
    values = asyncio.run(_inprocess(args.trials, args.pause))
    report["in-process recover() -> RestartUnit"] = values
    print(f"listener  {'in-process recover() -> RestartUnit':42} {stats(values)}")
    values = asyncio.run(_overhead(args.incidents))
    report["handler overhead per incident (fake systemd)"] = values
    print(f"handler   {'overhead per incident (fake systemd)':42} {stats(values)}")
    if args.json:
        print(json.dumps({k: v for k, v in report.items()}, default=list))


if __name__ == "__main__":
    main()
