"""giveup: the path generated units take, timed from systemd's give-up.

A unit rendered by the generator (Restart=on-failure with its start limit) is
killed until systemd gives up; the give-up is its InactiveEnterTimestamp at the
refused start. Per trial, systemd's own RestartSec=0 path is killed once beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from handlers.bus import SystemdBus
from handlers.listener import Listener
from listener.common import (
    Fifo,
    Marks,
    bench_engine,
    build_stamp,
    giveup_trial,
    line,
    main_pid_host,
    render_generated,
    table_head,
    use_sandbox_env,
)
from unitgen.paths import Scope, paths_for
from unitgen.sandbox import Sandbox


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trials", type=int, default=100)


def main(args: argparse.Namespace) -> None:
    asyncio.run(giveup(args.trials))


async def giveup(trials: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="unitgen-giveup-"))
    try:
        stamp = build_stamp(work)
        with Sandbox.start(Scope.USER, share=[work]) as sb:
            await _giveup(sb, work, stamp, trials)
    finally:
        shutil.rmtree(work, ignore_errors=True)


async def _giveup(sb: Sandbox, work: Path, stamp: Path, trials: int) -> None:
    """Per trial: the generated unit killed until systemd's start limit gives up (the
    listener restarts it), then systemd's own RestartSec=0 path killed once."""
    use_sandbox_env(sb)
    paths = dataclasses.replace(paths_for(Scope.USER), policy_dir=work / "policy-gen")
    gen, sd0 = "b-gen.service", "b-sd0.service"
    fifos = {u: Fifo(work / f"{u}.fifo") for u in (gen, sd0)}
    units = {
        gen: render_generated(work, "b-gen", stamp, work / f"{gen}.fifo", paths.policy_dir),
        sd0: "[Unit]\nStartLimitIntervalSec=0\n[Service]\n"
        f"ExecStart={stamp} {work}/{sd0}.fifo\nRestart=always\nRestartSec=0\n",
    }
    sb.install_units(units)
    for unit in units:
        sb.systemctl("start", unit, check=True)
    marks = Marks("fast")

    def make(bus: SystemdBus) -> Any:
        return bench_engine(bus, paths, marks)

    listener = Listener(
        paths,
        make,
        address=sb.bus_address,
        library="fast",
        health=False,
        trigger_factory=marks.trigger_factory,
    )
    task = asyncio.create_task(listener.run())
    await asyncio.wait_for(listener.ready.wait(), 20)
    to_restart: list[float] = []
    to_signal: list[float] = []
    to_running: list[float] = []
    last_kill_running: list[float] = []
    systemd_kills: list[int] = []
    base: list[float] = []
    try:
        for trial in range(trials):
            got = await giveup_trial(sb, gen, fifos[gen], marks, trial)
            if got is not None:
                to_signal.extend(got.signal)
                to_restart.append(got.restart)
                to_running.append(got.running)
                last_kill_running.append(got.last_kill)
                systemd_kills.append(got.systemd_restarts)
            await asyncio.sleep(0.3)
            pid = await asyncio.to_thread(main_pid_host, sb, sd0)
            fifos[sd0].drain()
            t_kill = time.monotonic_ns()
            os.kill(pid, 9)
            ts = await asyncio.to_thread(fifos[sd0].next_stamp, 10.0)
            if ts is not None:
                base.append((ts - t_kill) / 1e6)
            await asyncio.sleep(0.3)
    finally:
        listener.stop()
        await task
    sd_median = statistics.median(base or [1.0])
    print(
        f"\ngenerated unit (Restart=on-failure, RestartSec=100ms, StartLimitBurst=3, rendered"
        f" by unitgen) killed until systemd gives up, {len(to_restart)} give-ups; "
        f"systemd RestartSec=0 killed once per trial, alternating; listener dbus-fast, "
        f"full ladder (ms)\n"
    )
    print(table_head("path", "vs RestartSec=0"))
    print(line("systemd RestartSec=0: kill -> running", base, sd_median))
    print(line("generated: give-up -> failed signal received", to_signal))
    print(line("generated: give-up -> RestartUnit issued", to_restart))
    print(line("generated: give-up -> running again", to_running, sd_median))
    print(line("generated: last kill -> running (incl. RestartSec)", last_kill_running))
    print(
        f"\nsystemd's own restarts before each give-up: {sorted(set(systemd_kills))}; "
        f"listener stats: {dataclasses.asdict(listener.stats)}"
    )
