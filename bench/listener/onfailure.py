"""onfailure: the fallback when the daemon is down, against its anchor.

OnFailure= running `unitgen recover` (no daemon) against an OnFailure= oneshot
running `systemctl restart` (the anchor) and a bare Python floor (pyfloor.py),
all on Restart=no units, alternating; systemd's RestartSec=0 alongside.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from listener.common import (
    HERE,
    UNITGEN,
    Fifo,
    build_stamp,
    env_lines,
    line,
    main_pid_host,
    oneshot_unit,
    policy,
    stamped_unit,
    table_head,
)
from unitgen.paths import Scope
from unitgen.sandbox import Sandbox


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trials", type=int, default=60)


def main(args: argparse.Namespace) -> None:
    asyncio.run(onfailure(args.trials))


async def onfailure(trials: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="unitgen-onfailure-"))
    try:
        stamp = build_stamp(work)
        with Sandbox.start(Scope.USER, share=[work]) as sb:
            await _onfailure(sb, work, stamp, trials)
    finally:
        shutil.rmtree(work, ignore_errors=True)


async def _onfailure(sb: Sandbox, work: Path, stamp: Path, trials: int) -> None:
    pol = work / "onf-policy"
    policy(pol, "b-onf.service")
    env = env_lines(sb)
    approaches = {
        "systemd RestartSec=0": "b-sd0.service",
        "anchor: OnFailure= systemctl restart": "b-anchor.service",
        "OnFailure= unitgen recover (no daemon)": "b-onf.service",
        "floor: OnFailure= python, bare RestartUnit": "b-pyfloor.service",
    }
    units: dict[str, str] = {}
    extras = {
        "b-sd0.service": {"service_extra": "Restart=always\nRestartSec=0\n"},
        "b-anchor.service": {"unit_extra": "OnFailure=b-anchor-restart@%n.service\n"},
        "b-pyfloor.service": {"unit_extra": "OnFailure=b-pyfloor-restart@%n.service\n"},
        "b-onf.service": {"unit_extra": "OnFailure=b-recover@%n.service\n"},
    }
    for unit in approaches.values():
        units[unit] = stamped_unit(work, stamp, unit, **extras[unit])
    systemctl = shutil.which("systemctl") or "/usr/bin/systemctl"
    units["b-anchor-restart@.service"] = oneshot_unit(
        env, f"ExecStart={systemctl} --user restart %i"
    )
    floor = work / "pyfloor.py"
    shutil.copy(HERE / "pyfloor.py", floor)
    units["b-pyfloor-restart@.service"] = oneshot_unit(
        env, f"ExecStart={sys.executable} {floor} %i"
    )
    units["b-recover@.service"] = oneshot_unit(
        env, f"Environment=UNITGEN_POLICY_DIR={pol}", f"ExecStart={UNITGEN} recover --user %i"
    )
    sb.install_units(units)
    fifos = {u: Fifo(work / f"{u}.fifo") for u in approaches.values()}
    for unit in approaches.values():
        sb.systemctl("start", unit, check=True)
    results: dict[str, list[float]] = {name: [] for name in approaches}
    begun: dict[str, list[float]] = {name: [] for name in approaches}
    for trial in range(trials):
        for name, unit in approaches.items():
            pid = await asyncio.to_thread(main_pid_host, sb, unit)
            fifos[unit].drain()
            t_kill = time.monotonic_ns()
            os.kill(pid, 9)
            ts = await asyncio.to_thread(fifos[unit].next_stamp, 10.0)
            if ts is None:
                print(f"trial {trial}: {name}: no restart within 10 s", file=sys.stderr)
                sb.systemctl("reset-failed", unit)
                sb.systemctl("start", unit)
                continue
            results[name].append((ts - t_kill) / 1e6)
            props = await asyncio.to_thread(sb.show, unit, "InactiveExitTimestampMonotonic")
            begun[name].append((1000 * int(props["InactiveExitTimestampMonotonic"]) - t_kill) / 1e6)
            await asyncio.sleep(0.3)
            if unit != "b-sd0.service":
                # The oneshot must be gone before the unit's next kill.
                tpl = {
                    "b-anchor.service": "b-anchor-restart@",
                    "b-pyfloor.service": "b-pyfloor-restart@",
                }.get(unit, "b-recover@")
                await asyncio.to_thread(
                    sb.wait_for, f"{tpl}{unit}.service", {"inactive", "failed"}, 20
                )
    anchor = statistics.median(results["anchor: OnFailure= systemctl restart"] or [1.0])
    print(f"\nOnFailure= paths, Restart=no units, {trials} trials, alternating (ms)\n")
    print(table_head("path", "vs anchor"))
    for name in approaches:
        print(line(f"{name}: kill -> running", results[name], anchor))
    for name in approaches:
        print(line(f"{name}: kill -> start begun (InactiveExit)", begun[name]))
