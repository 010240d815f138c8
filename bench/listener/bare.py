"""bare: systemd's side of a burst without the ladder, what any D-Bus listener costs it.

A listener that does nothing but ResetFailedUnit + RestartUnit on each ``failed``
signal (``--what restart``), or that first makes unitgen's first read of the unit
(``--what read``); one table row per run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from typing import Any

from handlers.bus import (
    SERVICE,
    UNIT,
    SystemdBus,
    unit_from_path,
    unit_path,
    unit_properties_rule,
    unwrap,
)
from handlers.diagnose import SERVICE_STATIC
from listener.common import cpu_delta, ns_pid_map, others_cpu, start_many, use_sandbox_env
from unitgen.paths import Scope
from unitgen.sandbox import Sandbox


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--units", type=int, default=1000)
    p.add_argument("--fail", type=int, default=200)
    p.add_argument("--what", choices=("restart", "read"), default="restart")


def main(args: argparse.Namespace) -> None:
    asyncio.run(bare(args.units, args.fail, args.what))


async def bare(units: int, fail: int, mode: str) -> tuple[float, float]:
    """systemd's side of a burst without the ladder: what any D-Bus listener costs it.

    Returns this process's CPU seconds for the burst and kill -> last active in ms.
    """
    with Sandbox.start(Scope.USER) as sb:
        use_sandbox_env(sb)
        return await _bare(sb, units, fail, mode)


async def _bare(sb: Sandbox, units: int, fail: int, mode: str) -> tuple[float, float]:
    sb.install_units(
        {
            "n@.service": "[Unit]\nStartLimitIntervalSec=0\n"
            "[Service]\nExecStart=/bin/sleep infinity\n"
        }
    )
    every = [f"n@{i}.service" for i in range(units)]
    start_many(sb, every)
    victims = set(every[:: max(1, units // fail)][:fail])
    await asyncio.sleep(1.0)
    bus = await SystemdBus.connect(Scope.USER, sb.bus_address)
    await bus.add_match(unit_properties_rule())
    await bus.subscribe()
    tasks: set[asyncio.Task[None]] = set()
    back: set[str] = set()
    done = asyncio.Event()

    async def act(unit: str) -> None:
        if mode == "read":
            # The listener's first read of a unit it saw fail: GetAll of the Unit
            # interface and the Service interface's static keys, at the known path.
            await bus.unit_properties(unit, service_keys=SERVICE_STATIC, path=unit_path(unit))
        await asyncio.gather(bus.reset_failed(unit), bus.restart(unit))

    def on_signal(msg: Any) -> None:
        if msg.member != "PropertiesChanged" or msg.body[0] != UNIT:
            return
        state = msg.body[1].get("ActiveState")
        unit = unit_from_path(msg.path)
        if state is None or unit not in victims:
            return
        if unwrap(state) == "failed":
            task = asyncio.ensure_future(act(unit))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        elif unwrap(state) == "active":
            back.add(unit)
            if len(back) == len(victims):
                done.set()

    ns_pids = [int(await bus.get_property(u, "MainPID", SERVICE)) for u in victims]
    pid_map = await asyncio.to_thread(ns_pid_map, sb)
    host_pids = [pid_map[p] for p in ns_pids]
    bus.add_signal_callback(on_signal)
    others0 = others_cpu(sb)
    me0 = os.times()
    t_kill = time.monotonic()
    for pid in host_pids:
        os.kill(pid, 9)
    await asyncio.wait_for(done.wait(), 120)
    took = time.monotonic() - t_kill
    await asyncio.sleep(1.0)
    me1 = os.times()
    others = cpu_delta(others0, others_cpu(sb))
    await bus.close()
    ours = me1.user + me1.system - me0.user - me0.system
    print(
        f"| bare listener ({mode}), {units} loaded, {len(victims)} killed | "
        f"last active {took * 1000:.0f} ms | this process {ours:.2f} s, {others} |"
    )
    return ours, took * 1000
