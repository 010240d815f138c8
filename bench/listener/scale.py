"""scale: a separate `unitgen watch` process, many units, a burst of failures at once.

Idle CPU and context switches first, then ``--fail`` of ``--units`` instances
killed at once; the floor is systemd restarting as many itself (Restart=always,
RestartSec=0) in the same sandbox. ``--generated`` uses the generator's template
and measures the round in which all of them reach their start limit.

Environment: BENCH_ONFAILURE=1 keeps the generated OnFailure=; BENCH_EXPORT=1 runs
the daemon with its D-Bus event stream; BENCH_RUN_ON_DISK=1 keeps its run directory
on the sandbox's disk; BENCH_PROFILE=FILE (cProfile), BENCH_PYSPY=FILE (py-spy, the
burst only), BENCH_KEEP_LOG=FILE (the daemon's stderr).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from handlers.bus import SystemdBus
from listener.common import (
    UNITGEN,
    Fifo,
    build_stamp,
    cpu_delta,
    env_lines,
    host_main_pids,
    ns_pid_map,
    others_cpu,
    policy,
    proc_cpu,
    proc_cpu_split,
    proc_status,
    render_generated,
    start_many,
    use_sandbox_env,
)
from unitgen.paths import Scope, paths_for
from unitgen.sandbox import Sandbox


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--units", type=int, default=1000)
    p.add_argument("--fail", type=int, default=200)
    p.add_argument("--idle", type=float, default=60.0, help="idle seconds measured first")
    p.add_argument("--lib", choices=("fast", "next"), default="fast")
    p.add_argument("--concurrency", type=int, default=0, help="unitgen watch --max-concurrency")
    p.add_argument(
        "--generated",
        action="store_true",
        help="the generator's template; measure the round that hits the start limit",
    )


def main(args: argparse.Namespace) -> None:
    asyncio.run(scale(args.units, args.fail, args.idle, args.lib, args.concurrency, args.generated))


async def scale(
    units: int, fail: int, idle: float, lib: str, concurrency: int = 0, generated: bool = False
) -> tuple[float, float]:
    """Print the table; return the daemon's CPU seconds for the burst and kill -> last
    of ``fail`` running again in ms (NaN if none came back)."""
    work = Path(tempfile.mkdtemp(prefix="unitgen-scale-"))
    try:
        stamp = build_stamp(work)
        with Sandbox.start(Scope.USER, share=[work]) as sb:
            return await _scale(sb, work, stamp, units, fail, idle, lib, concurrency, generated)
    finally:
        shutil.rmtree(work, ignore_errors=True)


async def _scale(
    sb: Sandbox,
    work: Path,
    stamp: Path,
    units: int,
    fail: int,
    idle: float,
    lib: str,
    concurrency: int,
    generated: bool = False,
) -> tuple[float, float]:
    use_sandbox_env(sb)
    paths = paths_for(Scope.USER)
    fifo = Fifo(work / "scale.fifo")
    if generated:
        # The template is the generator's output for a service "s" (Restart=on-failure,
        # RestartSec=100ms, StartLimitBurst=3), its policy the generator's too.
        text = render_generated(work, "s", stamp, work / "scale.fifo", work / "gen-policy")
        body = json.loads((work / "gen-policy" / "s.service.json").read_text())
        body["unit"] = "s@.service"
        paths.policy_dir.mkdir(parents=True, exist_ok=True)
        (paths.policy_dir / "s@.service.json").write_text(json.dumps(body))
        extra = {}
        if os.environ.get("BENCH_ONFAILURE"):
            recover = (work / "rendered-s" / "unitgen-recover@.service").read_text()
            # The user manager runs it with the sandbox's policy and state directories.
            extra["unitgen-recover@.service"] = recover.replace(
                "[Service]\n", f"[Service]\n{env_lines(sb)}"
            )
        sb.install_units({"s@.service": text, **extra})
    else:
        policy(paths.policy_dir, "s@.service")
        sb.install_units(
            {
                "s@.service": "[Unit]\nStartLimitIntervalSec=0\n[Service]\n"
                f"ExecStart={stamp} {work}/scale.fifo\n"
            }
        )
    names = [f"s@{i}.service" for i in range(units)]
    start_many(sb, names)
    fifo.drain()
    notify_path = work / "notify"
    ready_sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    ready_sock.bind(str(notify_path))
    ready_sock.settimeout(60)
    env = {**os.environ, **sb.env, "NOTIFY_SOCKET": str(notify_path), "UNITGEN_DBUS": lib}
    # The daemon's run directory (its lock files) on tmpfs, where /run and
    # $XDG_RUNTIME_DIR are on a real host; the sandbox's own lives under /tmp, on
    # this VM's ext4, where a lock file costs far more CPU to create (docs/listener.md).
    # BENCH_RUN_ON_DISK=1 keeps it there.
    run_tmpfs = None
    if not os.environ.get("BENCH_RUN_ON_DISK"):
        run_tmpfs = Path(tempfile.mkdtemp(prefix="unitgen-scale-run-", dir="/dev/shm"))
        env["UNITGEN_RUN_DIR"] = str(run_tmpfs / "unitgen")
    argv = [UNITGEN, "watch", "--user", "--no-health"]
    if not os.environ.get("BENCH_EXPORT"):
        # The default run leaves out the D-Bus event stream (its signals to any
        # consumer); BENCH_EXPORT=1 measures the daemon with it.
        argv.append("--no-export")
    if concurrency:
        argv += ["--max-concurrency", str(concurrency)]
    if os.environ.get("BENCH_PROFILE"):
        # cProfile the daemon (SIGTERM ends it cleanly, so the profile is written).
        argv = [
            sys.executable,
            "-m",
            "cProfile",
            "-o",
            os.environ["BENCH_PROFILE"],
            "-m",
            "unitgen",
            *argv[1:],
        ]
    daemon = subprocess.Popen(  # noqa: ASYNC220 - harness set-up, before timing
        argv,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(work / "watch.log", "wb"),  # noqa: SIM115, ASYNC230
    )
    try:
        t_start = time.monotonic()
        while b"READY=1" not in ready_sock.recv(4096):
            pass
        ready_after = time.monotonic() - t_start
        rss_ready = proc_status(daemon.pid, "VmRSS")
        # Idle: no events, no health probes.
        cpu0 = proc_cpu(daemon.pid)
        ctx0 = proc_status(daemon.pid, "voluntary_ctxt_switches")
        nctx0 = proc_status(daemon.pid, "nonvoluntary_ctxt_switches")
        await asyncio.sleep(idle)
        idle_cpu = proc_cpu(daemon.pid) - cpu0
        idle_ctx = proc_status(daemon.pid, "voluntary_ctxt_switches") - ctx0
        idle_nctx = proc_status(daemon.pid, "nonvoluntary_ctxt_switches") - nctx0
        # Scale: `fail` units killed at once.
        victims = names[:: max(1, units // fail)][:fail]
        systemd_rounds = 0
        if generated:
            # Their first start counted once against StartLimitBurst=3: two rounds of
            # kills systemd restarts itself, and the third reaches the limit in all
            # `fail` at once. Only that round is measured.
            for _ in range(2):
                pids = await host_main_pids(sb, victims)
                fifo.drain()
                for pid in pids:
                    os.kill(pid, 9)
                for _ in range(fail):
                    if await asyncio.to_thread(fifo.next_stamp, 30.0) is None:
                        break
                systemd_rounds += 1
                await asyncio.sleep(1.0)
        # A late first start's stamp must not count as a recovery (it did, as a
        # negative kill -> median, in a 20-unit run).
        fifo.drain()
        host_pids = await host_main_pids(sb, victims)
        spy = None
        if os.environ.get("BENCH_PYSPY"):
            # A sampling profile of the burst only (py-spy, a dev tool, not a dependency):
            # cProfile's own overhead distorts a loop this busy.
            spy = subprocess.Popen(  # noqa: ASYNC220 - harness set-up, before timing
                [
                    "py-spy",
                    "record",
                    "--rate",
                    "2000",
                    "--format",
                    "raw",
                    "--threads",
                    "--output",
                    os.environ["BENCH_PYSPY"],
                    "--pid",
                    str(daemon.pid),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            await asyncio.sleep(1.0)
        split0 = proc_cpu_split(daemon.pid)
        others0 = others_cpu(sb)
        t_kill = time.monotonic_ns()
        for pid in host_pids:
            os.kill(pid, 9)
        stamps = []
        for _ in range(fail):
            ts = await asyncio.to_thread(fifo.next_stamp, 30.0)
            if ts is None:
                break
            stamps.append(ts)
        await asyncio.sleep(1.0)  # let the ladder finish verifying before reading CPU
        user, system = (b - a for a, b in zip(split0, proc_cpu_split(daemon.pid), strict=True))
        gave_up: list[int] = []
        manual = 0
        if generated:
            # systemd's give-up of each (InactiveEnter: the refused start) and who
            # started it again (NRestarts 0: a manual start, the ladder's).
            bus = await SystemdBus.connect(Scope.USER, sb.bus_address)
            for u in victims:
                gave_up.append(
                    1000 * int(await bus.get_property(u, "InactiveEnterTimestampMonotonic"))
                )
                nrestarts = await bus.get_property(
                    u, "NRestarts", "org.freedesktop.systemd1.Service"
                )
                manual += int(nrestarts) == 0
            await bus.close()
        cpu = user + system
        others = cpu_delta(others0, others_cpu(sb))
        rss = proc_status(daemon.pid, "VmRSS")
        hwm = proc_status(daemon.pid, "VmHWM")
        if spy is not None:
            spy.send_signal(2)
            spy.wait(30)
    finally:
        daemon.terminate()
        daemon.wait(30)
        ready_sock.close()
        if run_tmpfs is not None:
            shutil.rmtree(run_tmpfs, ignore_errors=True)
        if os.environ.get("BENCH_KEEP_LOG"):
            # The daemon's stderr (its log, and the events' fallback lines without a journal).
            shutil.copy(work / "watch.log", os.environ["BENCH_KEEP_LOG"])
    # The floor, same sandbox, same 1000 units loaded: systemd restarting as many
    # itself (Restart=always, RestartSec=0), with no listener running.
    base, base_others = await _systemd_burst(sb, work, stamp, fail)
    workers = concurrency or "default"
    print(
        f"\nscale: {units} watched instances of s@.service, {fail} killed at once, dbus-{lib}, "
        f"max-concurrency {workers}\n"
    )
    print("| measure | value |")
    print("|---|---|")
    print(
        f"| READY=1 after start (subscribe + reconcile of {units}) | {ready_after * 1000:.0f} ms |"
    )
    print(f"| RSS when ready | {rss_ready / 1024:.1f} MB |")
    where = "the sandbox's, on disk" if run_tmpfs is None else "tmpfs, as /run is"
    print(f"| the daemon's run directory (lock files) | {where} |")
    print(f"| idle {idle:.0f} s: CPU | {idle_cpu:.2f} s |")
    print(
        f"| idle {idle:.0f} s: voluntary / involuntary context switches "
        f"| {idle_ctx} / {idle_nctx} |"
    )
    print(f"| recovered (new process started) | {len(stamps)} / {fail} |")
    if generated:
        print(
            f"| generated template (Restart=on-failure, RestartSec=100ms, StartLimitBurst=3): "
            f"rounds restarted by systemd before / started by the ladder in the measured round "
            f"| {systemd_rounds} / {manual} of {fail} |"
        )
        if stamps and gave_up:
            print(
                f"| first give-up -> last of {fail} running again "
                f"| {(max(stamps) - min(gave_up)) / 1e6:.0f} ms |"
            )
            print(
                f"| kill -> first / last give-up (RestartSec, the refused start) "
                f"| {(min(gave_up) - t_kill) / 1e6:.0f} / {(max(gave_up) - t_kill) / 1e6:.0f} ms |"
            )
    if stamps:
        print(f"| kill -> last of {fail} running again | {(max(stamps) - t_kill) / 1e6:.0f} ms |")
        print(
            "| kill -> median running again "
            f"| {(statistics.median(stamps) - t_kill) / 1e6:.0f} ms |"
        )
    if base:
        print(
            f"| baseline, systemd Restart=always RestartSec=0, {fail} killed at once: "
            f"last / median running again | {(max(base)) / 1e6:.0f} ms / "
            f"{statistics.median(base) / 1e6:.0f} ms |"
        )
    print(
        f"| listener CPU for the {fail} recoveries | {cpu:.2f} s "
        f"(user {user:.2f} s, system {system:.2f} s) |"
    )
    print(f"| the same period: {others} |  |")
    print(f"| baseline period: {base_others} |  |")
    print(f"| RSS after / peak (VmHWM) | {rss / 1024:.1f} MB / {hwm / 1024:.1f} MB |")
    return cpu, (max(stamps) - t_kill) / 1e6 if stamps else float("nan")


async def _systemd_burst(sb: Sandbox, work: Path, stamp: Path, count: int) -> tuple[list[int], str]:
    """Kill ``count`` Restart=always units at once; kill -> each new start (ns)."""
    fifo = Fifo(work / "base.fifo")
    sb.install_units(
        {
            "r@.service": "[Unit]\nStartLimitIntervalSec=0\n[Service]\n"
            f"ExecStart={stamp} {work}/base.fifo\nRestart=always\nRestartSec=0\n"
        }
    )
    names = [f"r@{i}.service" for i in range(count)]
    start_many(sb, names)
    await asyncio.sleep(1.0)
    fifo.drain()
    bus = await SystemdBus.connect(Scope.USER, sb.bus_address)
    ns_pids = [
        int(await bus.get_property(u, "MainPID", "org.freedesktop.systemd1.Service")) for u in names
    ]
    await bus.close()
    pid_map = await asyncio.to_thread(ns_pid_map, sb)
    host_pids = [pid_map[p] for p in ns_pids]
    others0 = others_cpu(sb)
    t_kill = time.monotonic_ns()
    for pid in host_pids:
        os.kill(pid, 9)
    out = []
    for _ in range(count):
        ts = await asyncio.to_thread(fifo.next_stamp, 30.0)
        if ts is None:
            break
        out.append(ts - t_kill)
    await asyncio.sleep(1.0)  # as for the listener: the same settling before reading CPU
    return out, cpu_delta(others0, others_cpu(sb))
