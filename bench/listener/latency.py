"""latency: kill -9 -> new process running, every path in one run, alternating.

* ``systemd RestartSec=0``      Restart=always, RestartSec=0
* ``systemd RestartSec=100ms``  Restart=always and systemd's default RestartSec
* ``listener (dbus-fast)``      Restart=no; the in-process listener + full ladder
* ``listener (dbus-next)``      the same, a second listener on dbus-next
* ``OnFailure= unitgen recover`` Restart=no; OnFailure= runs `unitgen recover`
* ``generated unit``            rendered by the generator (Restart=on-failure, start
                                limit), killed until systemd gives up; from the give-up

For the listeners, "signal" is kill -> the ``failed`` PropertiesChanged received,
"ladder called" kill -> the listener's trigger made, and "detection" kill ->
RestartUnit issued by the ladder (common.Marks says where each is taken).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from handlers.bus import SystemdBus
from handlers.listener import Listener, ListenerOptions
from listener.common import (
    HERE,
    UNITGEN,
    Fifo,
    Marks,
    bench_engine,
    build_stamp,
    env_lines,
    giveup_trial,
    line,
    main_pid_host,
    oneshot_unit,
    policy,
    render_generated,
    stamped_unit,
    table_head,
    use_sandbox_env,
)
from unitgen.paths import Scope, paths_for
from unitgen.sandbox import Sandbox


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--libs", default="fast,next", help="listeners to run side by side (fast, next or both)"
    )
    p.add_argument("--trials", type=int, default=100)


def main(args: argparse.Namespace) -> None:
    asyncio.run(latency(args.trials, tuple(args.libs.split(","))))


async def latency(trials: int, libs: tuple[str, ...] = ("fast", "next")) -> None:
    work = Path(tempfile.mkdtemp(prefix="unitgen-bench-"))
    try:
        stamp = build_stamp(work)
        with Sandbox.start(Scope.USER, share=[work]) as sb:
            await _latency(sb, work, stamp, trials, libs)
    finally:
        shutil.rmtree(work, ignore_errors=True)


async def _latency(
    sb: Sandbox, work: Path, stamp: Path, trials: int, libs: tuple[str, ...]
) -> None:
    use_sandbox_env(sb)
    base_paths = paths_for(Scope.USER)
    approaches = {
        "systemd RestartSec=0": "b-sd0.service",
        "systemd RestartSec=100ms (default)": "b-sd100.service",
        "listener dbus-fast (full ladder)": "b-lfast.service",
        "listener dbus-next (full ladder)": "b-lnext.service",
        "OnFailure= unitgen recover": "b-onf.service",
    }
    # Each listener parses every unit's signals, the other trials' too: an idle
    # dbus-next listener competes with systemd for the two cores during every other
    # path's restart (docs/listener.md). --libs measures one at a time.
    for lib in ("fast", "next"):
        if lib not in libs:
            del approaches[f"listener dbus-{lib} (full ladder)"]
    tags = tuple((lib, f"b-l{lib}.service") for lib in ("fast", "next") if lib in libs)
    by_unit = {unit: tag for tag, unit in tags}
    # The path generated units take (Restart=on-failure and a start limit, as the
    # generator renders them): killed until systemd gives up; the first listener's.
    gen = f"b-gen{tags[0][0]}.service" if tags else ""
    gen_name = f"generated unit, give-up -> running (listener dbus-{tags[0][0]})" if tags else ""
    fifos = {u: Fifo(work / f"{u}.fifo") for u in approaches.values()}
    if gen:
        fifos[gen] = Fifo(work / f"{gen}.fifo")
    units: dict[str, str] = {}
    if gen:
        units[gen] = render_generated(
            work,
            gen.removesuffix(".service"),
            stamp,
            work / f"{gen}.fifo",
            work / f"policy-{tags[0][0]}",
        )
    extras = {
        "b-sd0.service": {"service_extra": "Restart=always\nRestartSec=0\n"},
        "b-sd100.service": {"service_extra": "Restart=always\n"},
        "b-onf.service": {"unit_extra": "OnFailure=b-recover@%n.service\n"},
    }
    for unit in approaches.values():
        units[unit] = stamped_unit(work, stamp, unit, **extras.get(unit, {}))
    onf_policy = work / "onf-policy"
    policy(onf_policy, "b-onf.service")
    env = env_lines(sb)
    floor = work / "pyfloor.py"
    shutil.copy(HERE / "pyfloor.py", floor)
    units["b-pyfloor-restart@.service"] = oneshot_unit(
        env, f"ExecStart={sys.executable} {floor} %i"
    )
    units["b-recover@.service"] = oneshot_unit(
        env, f"Environment=UNITGEN_POLICY_DIR={onf_policy}", f"ExecStart={UNITGEN} recover %i"
    )
    sb.install_units(units)
    for unit in [*approaches.values(), *([gen] if gen else [])]:
        sb.systemctl("start", unit, check=True)

    marks = {tag: Marks(tag) for tag, _ in tags}
    engines: dict[str, Any] = {}

    def engine_factory(tag: str) -> Any:
        def make(bus: SystemdBus) -> Any:
            paths = dataclasses.replace(base_paths, policy_dir=work / f"policy-{tag}")
            engines[tag] = bench_engine(bus, paths, marks[tag])
            return engines[tag]

        return make

    listeners = []
    for tag, unit in tags:
        policy(work / f"policy-{tag}", unit)
        paths = dataclasses.replace(base_paths, policy_dir=work / f"policy-{tag}")
        listener = Listener(
            paths,
            engine_factory(tag),
            address=sb.bus_address,
            library=tag,
            health=False,
            options=ListenerOptions(),
            trigger_factory=marks[tag].trigger_factory,
        )
        listeners.append((listener, asyncio.create_task(listener.run())))
    for listener, _ in listeners:
        await asyncio.wait_for(listener.ready.wait(), 20)

    results: dict[str, list[float]] = {name: [] for name in approaches}
    gen_restart: list[float] = []
    if gen:
        results[gen_name] = []
    detect: dict[str, list[float]] = {tag: [] for tag, _ in tags}
    signal_lat: dict[str, list[float]] = {tag: [] for tag, _ in tags}
    to_ladder: dict[str, list[float]] = {tag: [] for tag, _ in tags}
    for trial in range(trials):
        if gen:
            got = await giveup_trial(sb, gen, fifos[gen], marks[tags[0][0]], trial)
            if got is not None:
                results[gen_name].append(got.running)
                gen_restart.append(got.restart)
            await asyncio.sleep(0.3)
        for name, unit in approaches.items():
            fifo = fifos[unit]
            try:
                pid = await asyncio.to_thread(main_pid_host, sb, unit)
            except Exception as exc:
                # A trial that left the unit down (reported above): bring it back, go on.
                print(f"trial {trial}: {name}: {exc}; restarting it", file=sys.stderr)
                sb.systemctl("reset-failed", unit)
                sb.systemctl("start", unit)
                continue
            fifo.drain()
            tag = by_unit.get(unit, "")
            if tag:
                marks[tag].clear(unit)
            t_kill = time.monotonic_ns()
            os.kill(pid, 9)
            ts = await asyncio.to_thread(fifo.next_stamp, 10.0)
            if ts is None:
                print(f"trial {trial}: {name}: no restart within 10 s", file=sys.stderr)
                continue
            results[name].append((ts - t_kill) / 1e6)
            if tag:
                m = marks[tag]
                restart, failed, handed = (
                    m.get(unit, "restart"),
                    m.get(unit, "failed"),
                    m.get(tag, "ladder"),
                )
                if restart:
                    detect[tag].append((restart[0] - t_kill) / 1e6)
                if handed:
                    to_ladder[tag].append((handed[0] - t_kill) / 1e6)
                if failed:
                    signal_lat[tag].append((failed[0] - t_kill) / 1e6)
            await asyncio.sleep(0.3)
            if unit == "b-onf.service":
                # Let the oneshot finish before the next kill of this unit.
                await asyncio.to_thread(
                    sb.wait_for,
                    unit,
                    lambda p: p.get("ActiveState") == "active",
                    10,
                )
    steps: dict[str, dict[str, list[float]]] = {}
    for tag, unit in tags:
        for incident in engines[tag].history(unit, trials + 5):
            for attempt in incident["attempts"]:
                by = steps.setdefault(tag, {})
                by.setdefault(str(attempt["action"]), []).append(1000 * float(attempt["duration"]))
    for listener, task in listeners:
        listener.stop()
        await task
    base = statistics.median(results["systemd RestartSec=0"] or [1.0])
    print(f"\nkill -9 -> new process running (ms), {trials} trials, alternating, one run\n")
    print(table_head("path", "vs RestartSec=0"))
    for name in results:
        print(line(name, results[name], base))
    print("\nlistener detection (ms): kill -> failed signal received; kill -> RestartUnit issued\n")
    print(table_head("step"))
    if gen:
        print(line("generated unit: give-up -> RestartUnit issued", gen_restart))
    for tag, _ in tags:
        print(line(f"dbus-{tag}: kill -> failed signal", signal_lat[tag]))
        print(line(f"dbus-{tag}: kill -> ladder called (gave-up confirmed)", to_ladder[tag]))
        print(line(f"dbus-{tag}: kill -> RestartUnit issued", detect[tag]))
    print("\nthe ladder's own steps per incident (ms, from its history)\n")
    print(table_head("step"))
    for tag, by in steps.items():
        for action, values in by.items():
            print(line(f"dbus-{tag}: {action}", values))
