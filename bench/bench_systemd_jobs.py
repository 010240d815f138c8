"""What systemd 252 itself costs when a D-Bus client restarts a burst of failed units.

Not a test: prints markdown rows for docs/listener.md. Run (root; one disposable
user manager for the whole run):

    /opt/unitgen/bin/python bench/bench_systemd_jobs.py \
        [--units 1000 --fail 200 --repeat 3] [--template default|nodeps] \
        [--slice shared|grouped] [--variants systemd,reset+restart,restart,...] \
        [--perf DIR]

``--units`` instances of one template are loaded and running; ``--fail`` of them
(every units/fail-th) are killed with SIGKILL at once. A bare in-process
listener (no ladder) reacts to each victim's ``ActiveState=failed``
PropertiesChanged with the variant's calls. Variants, ``CALLS[:MODE]``:

* ``systemd``         the template gets ``Restart=always``, ``RestartSec=0`` (a
                      drop-in) and the listener does nothing; it stays subscribed,
                      so systemd still emits its signals
* ``systemd-fresh``   as bench_listener.py's baseline: ``--fail`` instances of a
                      second template r@ (Restart=always, RestartSec=0) are started
                      just before, killed, and stopped afterwards; the listener
                      stays subscribed and does nothing
* ``systemd-nosub``   the same, with the listener unsubscribed (no signals at all)
* ``reset+restart``   ResetFailedUnit and RestartUnit sent together (the ladder's)
* ``reset;restart``   ResetFailedUnit, its reply awaited, then RestartUnit
* ``restart+reset``   RestartUnit and ResetFailedUnit together, RestartUnit first
* ``restart;reset``   RestartUnit, its reply awaited, then ResetFailedUnit
* ``ref+reset+restart`` as reset+restart, with every victim held by Unit.Ref()
                      from a second connection for the burst (no garbage collection)
* ``pin+reset+restart`` Unit.Ref, ResetFailedUnit and RestartUnit sent together on
                      the listener's own connection, Unit.Unref once they are answered
                      (the pending job keeps the unit loaded from then on)
* ``restart``         RestartUnit only
* ``start``           StartUnit only
* ``reset+start``     ResetFailedUnit and StartUnit together
* ``enqueue``         Manager.EnqueueUnitJob(name, "restart", mode)
* ``unit-restart``    org.freedesktop.systemd1.Unit.Restart(mode) on the unit's path
* ``noop``            the listener calls nothing: the victims stay failed (only
                      the kill and the failure cost systemd)

MODE is a job mode (``replace`` unless given: ``fail``, ``ignore-dependencies``
...). Every round runs every variant once, back to back, in the given order,
after a daemon-reload (so each variant starts from the same manager state;
``--reload needed``: only when the Restart= drop-in changes).

"Active again" is the stamp program's CLOCK_MONOTONIC (bench/stamp.c), as in
bench_listener.py. CPU: this process (os.times), and the sandbox's systemd
manager and dbus-daemon (/proc/PID/stat), from just before the kill to 1 s
after the last stamp.

``--start-limit TRIALS``: instead of timing, bring six units to their start
limit (StartLimitBurst=2) and show which call paths still start them (active)
and which leave them failed/inactive.

``--perf DIR``: also record ``perf record -e cpu-clock --call-graph dwarf`` of
the sandbox's systemd manager during each burst (DIR/VARIANT-ROUND.data); the
CPU figures of such a run include perf's overhead.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from listener.common import build_stamp, ns_pid_map, others_cpu, start_many  # noqa: E402

from handlers.bus import (  # noqa: E402
    SERVICE,
    UNIT,
    SystemdBus,
    unit_from_path,
    unit_path,
    unit_properties_rule,
    unwrap,
)
from unitgen.paths import Scope  # noqa: E402
from unitgen.sandbox import Sandbox  # noqa: E402

CALLS = (
    "systemd",
    "systemd-fresh",
    "systemd-nosub",
    "noop",
    "reset+restart",
    "reset;restart",
    "restart+reset",
    "restart;reset",
    "ref+reset+restart",
    "pin+reset+restart",
    "restart",
    "start",
    "reset+start",
    "enqueue",
    "unit-restart",
)
DROPIN = "n@.service.d/restart.conf"
PERF_FILES: list[Path] = []  # written by this run, in order


def template(stamp: Path, fifo: Path, kind: str, slice_: str) -> str:
    unit = "[Unit]\nStartLimitIntervalSec=0\n"
    if kind == "nodeps":
        unit += "DefaultDependencies=no\n"
    service = f"[Service]\nExecStart={stamp} {fifo}\n"
    if slice_ == "grouped":
        # Instance "G-K" runs in n-G-K.slice, under n-G.slice, under n.slice: each
        # slice has ~sqrt(units) children instead of one app.slice with all of them.
        service += "Slice=n-%i.slice\n"
    return unit + service


def systemd_pid(sb: Sandbox) -> int:
    for host in sb.processes():
        try:
            comm = Path(f"/proc/{host}/comm").read_text().strip()
            cmd = Path(f"/proc/{host}/cmdline").read_bytes()
        except OSError:
            continue
        if comm == "systemd" and b"--user" in cmd:
            return host
    raise RuntimeError("no systemd --user in the sandbox")


class Stamps:
    """Reads the FIFO on the event loop (add_reader): no thread's CPU in our figure."""

    def __init__(self, path: Path) -> None:
        os.mkfifo(path, 0o666)
        self.fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
        self.buf = b""
        self.got: list[int] = []
        self.want = 0
        self.done = asyncio.Event()

    def drain(self) -> None:
        try:
            while os.read(self.fd, 65536):
                pass
        except BlockingIOError:
            pass
        self.buf = b""
        self.got = []

    def expect(self, count: int) -> None:
        self.drain()
        self.want = count
        self.done.clear()
        asyncio.get_running_loop().add_reader(self.fd, self._readable)

    def _readable(self) -> None:
        try:
            self.buf += os.read(self.fd, 65536)
        except BlockingIOError:
            return
        *lines, self.buf = self.buf.split(b"\n")
        self.got.extend(int(x) for x in lines if x)
        if len(self.got) >= self.want:
            asyncio.get_running_loop().remove_reader(self.fd)
            self.done.set()


def parse_variant(text: str) -> tuple[str, str]:
    calls, _, mode = text.partition(":")
    if calls not in CALLS:
        raise SystemExit(f"unknown variant {calls!r}; expected one of {', '.join(CALLS)}")
    return calls, mode or "replace"


def make_action(bus: SystemdBus, calls: str, mode: str) -> Callable[[str], Awaitable[Any]] | None:
    if calls in ("systemd", "systemd-nosub", "noop"):
        return None

    async def act(unit: str) -> None:
        if calls in ("reset+restart", "ref+reset+restart"):
            await asyncio.gather(bus.reset_failed(unit), bus.restart(unit, mode))
        elif calls == "reset;restart":
            await bus.reset_failed(unit)
            await bus.restart(unit, mode)
        elif calls == "pin+reset+restart":
            path = unit_path(unit)
            await asyncio.gather(
                bus.call("Ref", interface=UNIT, path=path, what=unit),
                bus.reset_failed(unit),
                bus.restart(unit, mode),
            )
            await bus.call("Unref", interface=UNIT, path=path, what=unit)
        elif calls == "restart+reset":
            await asyncio.gather(bus.restart(unit, mode), bus.reset_failed(unit))
        elif calls == "restart;reset":
            await bus.restart(unit, mode)
            await bus.reset_failed(unit)
        elif calls == "restart":
            await bus.restart(unit, mode)
        elif calls == "start":
            await bus.start(unit, mode)
        elif calls == "reset+start":
            await asyncio.gather(bus.reset_failed(unit), bus.start(unit, mode))
        elif calls == "enqueue":
            await bus.call("EnqueueUnitJob", "sss", [unit, "restart", mode], what=unit)
        elif calls == "unit-restart":
            await bus.call("Restart", "s", [mode], interface=UNIT, path=unit_path(unit), what=unit)

    return act


async def run(args: argparse.Namespace) -> None:
    variants = [parse_variant(v) for v in args.variants.split(",")]
    work = Path(tempfile.mkdtemp(prefix="unitgen-jobs-"))
    perf_dir: Path | None = args.perf
    try:
        stamp = build_stamp(work)
        with Sandbox.start(Scope.USER, share=[work]) as sb:
            await _run(sb, work, stamp, args, variants, perf_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)


async def _run(
    sb: Sandbox,
    work: Path,
    stamp: Path,
    args: argparse.Namespace,
    variants: list[tuple[str, str]],
    perf_dir: Path | None,
) -> None:
    fifo = work / "n.fifo"
    stamps = Stamps(fifo)
    n_text = template(stamp, fifo, args.template, args.slice)
    r_text = n_text.replace("[Service]\n", "[Service]\nRestart=always\nRestartSec=0\n")
    sb.install_units({"n@.service": n_text, "r@.service": r_text})
    if args.slice == "grouped":
        width = max(1, round(args.units**0.5))
        every = [f"n@{i % width}-{i}.service" for i in range(args.units)]
    else:
        every = [f"n@{i}.service" for i in range(args.units)]
    victims = every[:: max(1, args.units // args.fail)][: args.fail]
    victim_set = set(victims)
    bus = await SystemdBus.connect(Scope.USER, sb.bus_address)
    await bus.add_match(unit_properties_rule())
    await bus.subscribe()
    tasks: set[asyncio.Task[Any]] = set()
    errors: list[str] = []
    action: list[Callable[[str], Awaitable[Any]] | None] = [None]
    handled: set[str] = set()

    def on_signal(msg: Any) -> None:
        if msg.member != "PropertiesChanged" or msg.body[0] != UNIT:
            return
        state = msg.body[1].get("ActiveState")
        unit = unit_from_path(msg.path)
        act = action[0]
        if act is None or state is None or unit not in victim_set:
            return
        if unwrap(state) == "failed" and unit not in handled:
            # Once per unit and burst, as the real listener's InvocationID dedup does:
            # a pending job's PropertiesChanged repeats ActiveState=failed.
            handled.add(unit)
            task = asyncio.ensure_future(act(unit))
            tasks.add(task)
            task.add_done_callback(finished)

    def finished(task: asyncio.Task[Any]) -> None:
        tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            errors.append(f"{type(task.exception()).__name__}: {task.exception()}")

    bus.add_signal_callback(on_signal)
    sd_pid = systemd_pid(sb)
    print(
        f"<!-- {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"load {os.getloadavg()[0]:.2f}; {args.units} loaded ({args.template}, "
        f"slice {args.slice}), {len(victims)} killed at once -->"
    )
    header = "| variant | last active | median active | listener CPU | systemd CPU | dbus CPU |"
    print(header)
    print("|---|---|---|---|---|---|")
    results: dict[str, list[tuple[float, float, float, float, float]]] = {}
    for rnd in range(args.repeat):
        for calls, mode in variants:
            name = calls if calls.startswith("systemd") or calls == "noop" else f"{calls}:{mode}"
            handled.clear()
            row = await burst(
                sb,
                bus,
                stamps,
                every,
                victims,
                calls,
                mode,
                action,
                tasks,
                perf_dir,
                rnd,
                sd_pid,
                args.reload,
            )
            if errors:
                print(f"<!-- {name}: {len(errors)} call errors, first: {errors[0]} -->")
                errors.clear()
            results.setdefault(name, []).append(row)
            last, med, ours, sd, dbus = row
            print(
                f"| {name} (round {rnd + 1}) | {last:.0f} ms | {med:.0f} ms | {ours:.2f} s "
                f"| {sd:.2f} s | {dbus:.2f} s |",
                flush=True,
            )
    print()
    print(f"Medians over {args.repeat} rounds:")
    print()
    print(header)
    print("|---|---|---|---|---|---|")
    for name, rows in results.items():
        cols = [statistics.median(r[i] for r in rows) for i in range(5)]
        print(
            f"| {name} | {cols[0]:.0f} ms | {cols[1]:.0f} ms | {cols[2]:.2f} s "
            f"| {cols[3]:.2f} s | {cols[4]:.2f} s |"
        )
    await bus.close()
    if perf_dir is not None:
        print()
        print("Where systemd's CPU went (perf samples, first matching bucket):")
        print()
        for data in PERF_FILES:
            print(f"* {data.stem}: {await asyncio.to_thread(perf_buckets, data)}")


# Ordered: a sample counts in the first bucket whose function is on its stack. The
# names are exported by libsystemd-core/-shared 252, so no debug symbols are needed.
BUCKETS = (
    ("GC unit_free", ("unit_free",)),
    ("unit load", ("manager_load_unit", "unit_load", "manager_dispatch_load_queue")),
    ("cgroup family walk", ("unit_add_family_to_cgroup_realize_queue",)),
    ("fork+exec", ("exec_spawn",)),
    ("rest of job run", ("job_run_and_invalidate",)),
    ("PropertiesChanged", ("bus_unit_send_change_signal", "bus_job_send_change_signal")),
    ("method calls", ("bus_process_object",)),
    (
        "SIGCHLD/cgroup empty",
        ("unit_notify", "unit_prune_cgroup", "unit_add_to_cgroup_empty_queue", "unit_kill_context"),
    ),
)


def perf_buckets(data: Path) -> str:
    text = subprocess.run(
        ["perf", "script", "-i", str(data), "-F", "period,ip,sym"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    spent: dict[str, int] = {}
    total = 0
    for block in text.split("\n\n"):
        lines = block.strip().splitlines()
        if not lines or not lines[0].strip().isdigit():
            continue
        period = int(lines[0])
        stack = {row.split(None, 1)[-1] for row in lines[1:]}
        name = next((n for n, keys in BUCKETS if stack.intersection(keys)), "other")
        spent[name] = spent.get(name, 0) + period
        total += period
    if not total:
        return "no samples"
    parts = [
        f"{n} {spent.get(n, 0) / 1e6:.0f} ms ({100 * spent.get(n, 0) / total:.0f}%)"
        for n in [b[0] for b in BUCKETS] + ["other"]
    ]
    return f"{total / 1e6:.0f} ms sampled: " + ", ".join(parts)


async def burst(
    sb: Sandbox,
    bus: SystemdBus,
    stamps: Stamps,
    every: list[str],
    victims: list[str],
    calls: str,
    mode: str,
    action: list[Callable[[str], Awaitable[Any]] | None],
    tasks: set[asyncio.Task[Any]],
    perf_dir: Path | None,
    rnd: int,
    sd_pid: int,
    reload: str,
) -> tuple[float, float, float, float, float]:
    action[0] = None
    dropin = sb.unit_dir / DROPIN
    had = dropin.exists()
    if calls.startswith("systemd"):
        dropin.parent.mkdir(parents=True, exist_ok=True)
        dropin.write_text("[Service]\nRestart=always\nRestartSec=0\n")
    else:
        dropin.unlink(missing_ok=True)
    await asyncio.to_thread(sb.systemctl, "reset-failed", check=False)
    if reload == "always" or had != dropin.exists():
        await asyncio.to_thread(sb.daemon_reload)
    await asyncio.to_thread(start_many, sb, every)
    await asyncio.sleep(1.5)
    if calls == "systemd-fresh":
        victims = [f"r@{i}.service" for i in range(len(victims))]
        await asyncio.to_thread(sb.systemctl, "start", *victims, check=True, timeout=300)
        await asyncio.sleep(1.0)
    ns_pids = [int(await bus.get_property(u, "MainPID", SERVICE)) for u in victims]
    pid_map = await asyncio.to_thread(ns_pid_map, sb)
    host_pids = [pid_map[p] for p in ns_pids]
    if calls == "systemd-nosub":
        await bus.call("Unsubscribe")
    holder = None
    if calls == "ref+reset+restart":
        holder = await SystemdBus.connect(Scope.USER, sb.bus_address)
        for u in victims:
            await holder.call("Ref", interface=UNIT, path=unit_path(u), what=u)
    action[0] = make_action(bus, calls, mode)
    want = 0 if calls == "noop" else len(victims)
    perf = None
    if perf_dir is not None:
        out = perf_dir / f"{calls.replace(';', '-')}-{mode}-{rnd + 1}.data"
        PERF_FILES.append(out)
        argv = ["perf", "record", "-q", "-e", "cpu-clock", "--call-graph", "dwarf"]
        perf = await asyncio.create_subprocess_exec(
            *argv,
            *("-p", str(sd_pid), "-o", str(out)),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        await asyncio.sleep(1.0)
    await asyncio.sleep(0.5)
    stamps.expect(want)
    others0 = others_cpu(sb)
    me0 = os.times()
    t_kill = time.monotonic_ns()
    for pid in host_pids:
        os.kill(pid, signal.SIGKILL)
    if want:
        try:
            await asyncio.wait_for(stamps.done.wait(), 120)
        except TimeoutError:
            print(f"<!-- {calls}:{mode}: only {len(stamps.got)} of {want} came back -->")
    else:
        stamps.done.set()
    t_last = time.monotonic_ns()
    if tasks:
        await asyncio.gather(*list(tasks), return_exceptions=True)
    await asyncio.sleep(1.0)
    me1 = os.times()
    others1 = others_cpu(sb)
    if perf is not None:
        perf.send_signal(signal.SIGINT)
        await asyncio.wait_for(perf.wait(), 60)
    action[0] = None
    if holder is not None:
        await holder.close()
    if calls == "systemd-fresh":
        await asyncio.to_thread(sb.systemctl, "stop", *victims, check=True, timeout=300)
    if calls == "systemd-nosub":
        await bus.subscribe(force=True)
    with_stamps = sorted(t - t_kill for t in stamps.got) or [t_last - t_kill]
    ours = me1.user + me1.system - me0.user - me0.system
    return (
        with_stamps[-1] / 1e6,
        statistics.median(with_stamps) / 1e6,
        ours,
        others1.get("systemd", 0.0) - others0.get("systemd", 0.0),
        others1.get("dbus-daemon", 0.0) - others0.get("dbus-daemon", 0.0),
    )


ORDERS = (
    "reset+restart",
    "pin+reset+restart",
    "restart+reset",
    "restart;reset",
    "restart",
    "start",
)


async def start_limit(trials: int) -> None:
    """Which call paths still recover a unit that is at its start limit?"""
    work = Path(tempfile.mkdtemp(prefix="unitgen-sl-"))
    flag = work / "ok"
    unit = (
        "[Unit]\nStartLimitIntervalSec=600\nStartLimitBurst=2\n[Service]\n"
        f"ExecStart=/bin/sh -c 'test -e {flag} && exec sleep infinity; exit 1'\n"
    )
    names = {order: f"sl{i}.service" for i, order in enumerate(ORDERS)}
    try:
        with Sandbox.start(Scope.USER, share=[work]) as sb:
            sb.install_units({name: unit for name in names.values()})
            bus = await SystemdBus.connect(Scope.USER, sb.bus_address)
            print("| trial | " + " | ".join(ORDERS) + " |")
            print("|---" * (len(ORDERS) + 1) + "|")
            for trial in range(trials):
                await asyncio.to_thread(flag.unlink, missing_ok=True)
                for name in names.values():
                    await asyncio.to_thread(sb.systemctl, "reset-failed", name)
                    for _ in range(4):
                        await asyncio.to_thread(sb.systemctl, "start", name)
                await asyncio.to_thread(flag.touch)
                for name in names.values():
                    # The program would now run: a refusal is the start limit.
                    refused = await asyncio.to_thread(sb.systemctl, "start", name)
                    if refused.returncode == 0:
                        raise SystemExit(f"{name} is not at its start limit")
                for order, name in names.items():
                    act = make_action(bus, order, "replace")
                    assert act is not None
                    await act(name)
                await asyncio.sleep(1.0)
                states = []
                for name in names.values():
                    shown = await asyncio.to_thread(sb.show, name, "ActiveState")
                    states.append(shown["ActiveState"])
                    await asyncio.to_thread(sb.systemctl, "stop", name)
                print(f"| {trial + 1} | " + " | ".join(states) + " |", flush=True)
            await bus.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--units", type=int, default=1000)
    parser.add_argument("--fail", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--template", choices=("default", "nodeps"), default="default")
    parser.add_argument("--slice", choices=("shared", "grouped"), default="shared")
    parser.add_argument(
        "--variants",
        default="systemd,reset+restart,restart,start,reset+start",
        help="comma-separated CALLS[:MODE]; see the module docstring",
    )
    parser.add_argument(
        "--reload",
        choices=("always", "needed"),
        default="always",
        help="daemon-reload before every variant, or only when Restart= changes",
    )
    parser.add_argument(
        "--start-limit",
        type=int,
        default=0,
        metavar="TRIALS",
        help="instead: check which call paths recover a unit at its start limit",
    )
    parser.add_argument("--perf", help="directory for perf record data of systemd's bursts")
    args = parser.parse_args()
    if args.start_limit:
        asyncio.run(start_limit(args.start_limit))
        return
    if args.perf:
        args.perf = Path(args.perf).resolve()
        args.perf.mkdir(parents=True, exist_ok=True)
    asyncio.run(run(args))


if __name__ == "__main__":
    cli()
