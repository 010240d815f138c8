"""Listener benchmarks (issue 5, item 9). Not a test: prints a table for docs/listener.md.

Run (root; a disposable user manager is started for each mode):

    /opt/unitgen/bin/python bench/bench_listener.py latency [--trials 100]
    /opt/unitgen/bin/python bench/bench_listener.py giveup [--trials 120]
    /opt/unitgen/bin/python bench/bench_listener.py onfailure [--trials 60]
    /opt/unitgen/bin/python bench/bench_listener.py scale --generated
    /opt/unitgen/bin/python bench/bench_listener.py scale [--units 1000 --fail 200]
    /opt/unitgen/bin/python bench/bench_listener.py idle [--seconds 60]
    /opt/unitgen/bin/python bench/bench_listener.py flood [--seconds 5]
    /opt/unitgen/bin/python bench/bench_listener.py bare [--units 1000 --fail 200 --what read]
    /opt/unitgen/bin/python bench/bench_listener.py floor [--rounds 3]

Method (/work/shared/bench-method.md): the service is bench/stamp.c, a static C
program that writes its CLOCK_MONOTONIC start time to a FIFO first thing in
main(). A trial reads MainPID, records CLOCK_MONOTONIC, sends SIGKILL and waits
for the new program's timestamp; 0.3 s pause. All approaches run in the same
run, in alternation, each on its own unit and FIFO:

* ``systemd RestartSec=0``      Restart=always, RestartSec=0
* ``systemd RestartSec=100ms``  Restart=always and systemd's default RestartSec
* ``listener (dbus-fast)``      Restart=no; the in-process listener + full ladder
* ``listener (dbus-next)``      the same, a second listener on dbus-next
* ``OnFailure= unitgen recover`` Restart=no; OnFailure= runs `unitgen recover`
* ``generated unit``            rendered by the generator (Restart=on-failure, start
                                limit), killed until systemd gives up; from the give-up

``latency`` measures Restart=no units, which generated units are not: ``giveup``
is the path they take (a unit rendered by the generator, Restart=on-failure with
its start limit, killed until systemd gives up; timed from systemd's give-up, its
InactiveEnterTimestamp at the refused start), beside systemd's RestartSec=0.
``onfailure`` is the fallback when the daemon is down, against the anchor of an
OnFailure= oneshot running ``systemctl restart`` and a bare Python floor.

For the listeners, "detection" is kill -> RestartUnit issued (the ladder's
bus.restart() call, timestamped in-process), and "signal" is kill -> the
``failed`` PropertiesChanged received. monit and supervisord are not installed
on these machines and are not measured.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from handlers.bus import UNIT, SystemdBus, unit_path, unwrap  # noqa: E402
from handlers.listener import Listener, ListenerOptions  # noqa: E402
from unitgen.paths import Scope, paths_for  # noqa: E402
from unitgen.sandbox import Sandbox  # noqa: E402

UNITGEN = str(Path(sys.executable).with_name("unitgen"))

# A budget large enough for every trial, and no backoff: the benchmark measures
# the path to RestartUnit, not the ladder's pacing (which is its own feature).
BENCH_RECOVERY = {
    "max_attempts": 100000,
    "window": 60.0,
    "min_uptime": 0.05,
    "stable_after": 0.1,
    "backoff": {"base": 0.001, "factor": 1.0, "max": 0.001, "jitter": 0.0},
}


def summary(values: list[float]) -> dict[str, float]:
    v = sorted(values)

    def pct(p: float) -> float:
        return v[min(len(v) - 1, round(p * (len(v) - 1)))]

    return {
        "n": len(v),
        "min": v[0],
        "median": statistics.median(v),
        "p95": pct(0.95),
        "p99": pct(0.99),
        "max": v[-1],
    }


def line(name: str, values: list[float], base: float | None = None) -> str:
    if not values:
        return f"| {name} | no samples |"
    s = summary(values)
    ratio = f"{s['median'] / base:.2f}x" if base else ""
    return (
        f"| {name} | {s['min']:.1f} | {s['median']:.1f} | {s['p95']:.1f} | {s['p99']:.1f} "
        f"| {s['max']:.1f} | {int(s['n'])} | {ratio} |"
    )


def build_stamp(work: Path) -> Path:
    out = work / "stamp"
    subprocess.run(
        ["cc", "-O2", "-static", "-o", str(out), str(REPO / "bench" / "stamp.c")], check=True
    )
    return out


def policy(dir_: Path, unit: str) -> None:
    dir_.mkdir(parents=True, exist_ok=True)
    body = {"unit": unit, "version": 1, "recovery": BENCH_RECOVERY}
    (dir_ / f"{unit}.json").write_text(json.dumps(body))


class Fifo:
    """A FIFO we keep open for reading, so the service's open() never blocks or fails."""

    def __init__(self, path: Path) -> None:
        os.mkfifo(path, 0o666)
        self.fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
        self.buf = b""

    def drain(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self.fd, 65536):
                pass
        self.buf = b""

    def next_stamp(self, timeout: float) -> int | None:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready:
                with contextlib.suppress(BlockingIOError):
                    self.buf += os.read(self.fd, 4096)
        raw, self.buf = self.buf.split(b"\n", 1)
        return int(raw)


def start_many(sb: Sandbox, units: list[str]) -> None:
    """Start ``units``, 200 per systemctl call (one call per unit would take minutes)."""
    for i in range(0, len(units), 200):
        sb.systemctl("start", *units[i : i + 200], check=True, timeout=300)


def main_pid_host(sb: Sandbox, unit: str) -> int:
    return sb.host_pid(sb.main_pid(unit))


# -- latency ---------------------------------------------------------------------------


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
    for k, v in sb.env.items():
        os.environ[k] = v
    base_paths = paths_for(Scope.USER)
    approaches = {
        "systemd RestartSec=0": "b-sd0.service",
        "systemd RestartSec=100ms (default)": "b-sd100.service",
        "listener dbus-fast (full ladder)": "b-lfast.service",
        "listener dbus-next (full ladder)": "b-lnext.service",
        "OnFailure= unitgen recover": "b-onf.service",
    }
    # Each listener parses every unit's signals, the other trials' too: an idle
    # dbus-next listener (~600 us per signal) competes with systemd for the two
    # cores during every other path's restart. --libs measures one at a time.
    for lib in ("fast", "next"):
        if lib not in libs:
            del approaches[f"listener dbus-{lib} (full ladder)"]
    tags = tuple((lib, f"b-l{lib}.service") for lib in ("fast", "next") if lib in libs)
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
    for unit in approaches.values():
        head = "[Unit]\nStartLimitIntervalSec=0\n"
        svc = f"[Service]\nExecStart={stamp} {work}/{unit}.fifo\n"
        if unit == "b-sd0.service":
            svc += "Restart=always\nRestartSec=0\n"
        elif unit == "b-sd100.service":
            svc += "Restart=always\n"
        elif unit == "b-onf.service":
            head += "OnFailure=b-recover@%n.service\n"
        units[unit] = head + svc
    onf_policy = work / "onf-policy"
    policy(onf_policy, "b-onf.service")
    env = "".join(f'Environment="{k}={v}"\n' for k, v in sb.env.items())
    # What any Python OnFailure= handler pays before its first RestartUnit: this venv's
    # interpreter and site, asyncio and dbus-fast, one connection, the reset and restart.
    floor = work / "pyfloor.py"
    floor.write_text(PYFLOOR)
    units["b-pyfloor-restart@.service"] = (
        "[Unit]\nStartLimitIntervalSec=0\n[Service]\nType=oneshot\n"
        f"{env}ExecStart={sys.executable} {floor} %i\n"
    )
    units["b-recover@.service"] = (
        "[Unit]\nStartLimitIntervalSec=0\n[Service]\nType=oneshot\n"
        f"{env}Environment=UNITGEN_POLICY_DIR={onf_policy}\n"
        f"ExecStart={UNITGEN} recover %i\n"
    )
    sb.install_units(units)
    for unit in [*approaches.values(), *([gen] if gen else [])]:
        sb.systemctl("start", unit, check=True)

    marks: dict[str, list[tuple[str, int]]] = {}
    engines: dict[str, Any] = {}

    def engine_factory(tag: str) -> Any:
        from handlers.recovery import RecoveryEngine

        def make(bus: SystemdBus) -> Any:
            original = bus.restart

            async def timed_restart(name: str, mode: str = "replace") -> str:
                marks.setdefault(name, []).append(("restart", time.monotonic_ns()))
                return await original(name, mode)

            bus.restart = timed_restart  # type: ignore[method-assign]

            def on_signal(msg: Any) -> None:
                if msg.member == "PropertiesChanged" and msg.body[0] == UNIT:
                    state = msg.body[1].get("ActiveState")
                    if state is not None and unwrap(state) == "failed":
                        name = msg.path.rsplit("/", 1)[-1]
                        marks.setdefault(name, []).append(("failed", time.monotonic_ns()))

            bus.add_signal_callback(on_signal)
            paths = dataclasses.replace(base_paths, policy_dir=work / f"policy-{tag}")
            engine = RecoveryEngine(bus, paths, read_journal_lines=False)
            engines[tag] = engine
            recover = engine.recover

            async def timed_recover(unit: str, trigger: Any) -> Any:
                marks.setdefault(unit, []).append(("recover", time.monotonic_ns()))
                return await recover(unit, trigger)

            engine.recover = timed_recover  # type: ignore[method-assign]
            return engine

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
            got = await giveup_trial(
                sb, gen, fifos[gen], marks, unit_path(gen).rsplit("/", 1)[-1], trial
            )
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
            marks.pop(unit_path(unit).rsplit("/", 1)[-1], None)
            marks.pop(unit, None)
            t_kill = time.monotonic_ns()
            os.kill(pid, 9)
            ts = await asyncio.to_thread(fifo.next_stamp, 10.0)
            if ts is None:
                print(f"trial {trial}: {name}: no restart within 10 s", file=sys.stderr)
                continue
            results[name].append((ts - t_kill) / 1e6)
            tag = (
                "fast" if unit == "b-lfast.service" else "next" if unit == "b-lnext.service" else ""
            )
            if tag:
                restart = [t for k, t in marks.get(unit, []) if k == "restart"]
                failed = [
                    t for k, t in marks.get(unit_path(unit).rsplit("/", 1)[-1], []) if k == "failed"
                ]
                handed = [t for k, t in marks.get(unit, []) if k == "recover"]
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
    print("| path | min | median | p95 | p99 | max | n | vs RestartSec=0 |")
    print("|---|---|---|---|---|---|---|---|")
    for name in results:
        print(line(name, results[name], base))
    print("\nlistener detection (ms): kill -> failed signal received; kill -> RestartUnit issued\n")
    print("| step | min | median | p95 | p99 | max | n | |")
    print("|---|---|---|---|---|---|---|---|")
    if gen:
        print(line("generated unit: give-up -> RestartUnit issued", gen_restart))
    for tag, _ in tags:
        print(line(f"dbus-{tag}: kill -> failed signal", signal_lat[tag]))
        print(line(f"dbus-{tag}: kill -> ladder called (gave-up confirmed)", to_ladder[tag]))
        print(line(f"dbus-{tag}: kill -> RestartUnit issued", detect[tag]))
    print("\nthe ladder's own steps per incident (ms, from its history)\n")
    print("| step | min | median | p95 | p99 | max | n | |")
    print("|---|---|---|---|---|---|---|---|")
    for tag, by in steps.items():
        for action, values in by.items():
            print(line(f"dbus-{tag}: {action}", values))


# -- giveup: the path generated units take ----------------------------------------------

# What a user writes (the reproduction in docs/listener.md): systemd's own restarts
# first, then the ladder, with no backoff and no minimum uptime. A budget large enough
# for every trial. hardening is off only because the stamp writes to a FIFO in the
# harness's /tmp; the restart path does not depend on it.
GENERATED_SPEC = """
[service.{name}]
exec = ["{stamp}", "{fifo}"]
hardening = "off"
restart = {{ policy = "on-failure", delay = "{delay}", burst = {burst}, interval = "1min" }}
recovery = {{ max_attempts = 1000, window = "1min", min_uptime = "0s", backoff.base = "0s" }}
"""


def render_generated(
    work: Path,
    name: str,
    stamp: Path,
    fifo: Path,
    policy_dir: Path,
    delay: str = "100ms",
    burst: int = 3,
) -> str:
    """Render ``name``.service with the project's generator; return the unit's text.

    Its policy lands in ``policy_dir``. OnFailure= is dropped: with the daemon up,
    the oneshot only reports what the listener did (docs/listener.md), and its
    Python start-up on these two cores would land in the next trials.
    """
    spec = work / f"{name}.toml"
    spec.write_text(
        GENERATED_SPEC.format(name=name, stamp=stamp, fifo=fifo, delay=delay, burst=burst)
    )
    out = work / f"rendered-{name}"
    subprocess.run(
        [
            UNITGEN,
            "render",
            "--user",
            str(spec),
            "--out",
            str(out),
            "--policy-dir",
            str(policy_dir),
            "--unitgen-bin",
            UNITGEN,
        ],
        check=True,
        capture_output=True,
    )
    text = (out / f"{name}.service").read_text()
    if os.environ.get("BENCH_ONFAILURE"):
        # As a user installs it: OnFailure= and the recovery unit it starts kept.
        return text
    return "".join(ln for ln in text.splitlines(keepends=True) if not ln.startswith("OnFailure"))


async def giveup(trials: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="unitgen-giveup-"))
    try:
        stamp = build_stamp(work)
        with Sandbox.start(Scope.USER, share=[work]) as sb:
            await _giveup(sb, work, stamp, trials)
    finally:
        shutil.rmtree(work, ignore_errors=True)


@dataclasses.dataclass
class GiveUp:
    """One trial of a generated unit, in ms from systemd's give-up (the refused start)."""

    signal: list[float]  # -> the failed signal received (empty if not marked)
    restart: float  # -> RestartUnit issued
    running: float  # -> the new process's stamp
    last_kill: float  # the last kill -> the stamp
    systemd_restarts: int


async def giveup_trial(
    sb: Sandbox,
    unit: str,
    fifo: Fifo,
    marks: dict[str, list[tuple[str, int]]],
    path_key: str,
    trial: int,
) -> GiveUp | None:
    """Kill ``unit`` until a restart is the listener's (``marks[unit]`` gets a
    "restart"), not systemd's; ``marks[path_key]`` collects "failed" signals."""
    kills = 0
    while True:
        pid = await asyncio.to_thread(main_pid_host, sb, unit)
        fifo.drain()
        marks.pop(unit, None)
        marks.pop(path_key, None)
        t_kill = time.monotonic_ns()
        os.kill(pid, 9)
        kills += 1
        ts = await asyncio.to_thread(fifo.next_stamp, 10.0)
        if ts is None:
            print(f"trial {trial}: {unit}: no restart within 10 s", file=sys.stderr)
            return None
        restart = [t for k, t in marks.get(unit, []) if k == "restart"]
        if not restart:
            if kills > 10:
                print(f"trial {trial}: {unit}: systemd never gave up", file=sys.stderr)
                return None
            continue  # systemd's own restart
        props = await asyncio.to_thread(sb.show, unit, "InactiveEnterTimestampMonotonic")
        gave_up = int(props["InactiveEnterTimestampMonotonic"]) * 1000  # us -> ns
        failed = [t for k, t in marks.get(path_key, []) if k == "failed"]
        return GiveUp(
            signal=[(failed[-1] - gave_up) / 1e6] if failed else [],
            restart=(restart[0] - gave_up) / 1e6,
            running=(ts - gave_up) / 1e6,
            last_kill=(ts - t_kill) / 1e6,
            systemd_restarts=kills - 1,
        )


async def _giveup(sb: Sandbox, work: Path, stamp: Path, trials: int) -> None:
    """Per trial: the generated unit killed until systemd's start limit gives up (the
    listener restarts it), then systemd's own RestartSec=0 path killed once."""
    from handlers.recovery import RecoveryEngine

    for k, v in sb.env.items():
        os.environ[k] = v
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
    marks: dict[str, list[tuple[str, int]]] = {}

    def make(bus: SystemdBus) -> Any:
        original = bus.restart

        async def timed_restart(name: str, mode: str = "replace") -> str:
            marks.setdefault(name, []).append(("restart", time.monotonic_ns()))
            return await original(name, mode)

        bus.restart = timed_restart  # type: ignore[method-assign]

        def on_signal(msg: Any) -> None:
            if msg.member == "PropertiesChanged" and msg.body[0] == UNIT:
                state = msg.body[1].get("ActiveState")
                if state is not None and unwrap(state) == "failed":
                    marks.setdefault(msg.path, []).append(("failed", time.monotonic_ns()))

        bus.add_signal_callback(on_signal)
        return RecoveryEngine(bus, paths, read_journal_lines=False)

    listener = Listener(paths, make, address=sb.bus_address, library="fast", health=False)
    task = asyncio.create_task(listener.run())
    await asyncio.wait_for(listener.ready.wait(), 20)
    gen_path = unit_path(gen)
    to_restart: list[float] = []
    to_signal: list[float] = []
    to_running: list[float] = []
    last_kill_running: list[float] = []
    systemd_kills: list[int] = []
    base: list[float] = []
    try:
        for trial in range(trials):
            got = await giveup_trial(sb, gen, fifos[gen], marks, gen_path, trial)
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
    print("| path | min | median | p95 | p99 | max | n | vs RestartSec=0 |")
    print("|---|---|---|---|---|---|---|---|")
    print(line("systemd RestartSec=0: kill -> running", base, sd_median))
    print(line("generated: give-up -> failed signal received", to_signal))
    print(line("generated: give-up -> RestartUnit issued", to_restart))
    print(line("generated: give-up -> running again", to_running, sd_median))
    print(line("generated: last kill -> running (incl. RestartSec)", last_kill_running))
    print(
        f"\nsystemd's own restarts before each give-up: {sorted(set(systemd_kills))}; "
        f"listener stats: {dataclasses.asdict(listener.stats)}"
    )


# -- onfailure: the fallback when the daemon is down ------------------------------------


PYFLOOR = """
import asyncio, sys
from dbus_fast import Message
from dbus_fast.aio import MessageBus
from dbus_fast.constants import BusType

async def main(unit):
    bus = await MessageBus(bus_type=BusType.SESSION).connect()
    def call(member, sig, body):
        return bus.call(Message(destination="org.freedesktop.systemd1",
            path="/org/freedesktop/systemd1", interface="org.freedesktop.systemd1.Manager",
            member=member, signature=sig, body=body))
    await asyncio.gather(call("ResetFailedUnit", "s", [unit]),
                         call("RestartUnit", "ss", [unit, "replace"]))
    bus.disconnect()

asyncio.run(main(sys.argv[1]))
"""


async def onfailure(trials: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="unitgen-onfailure-"))
    try:
        stamp = build_stamp(work)
        with Sandbox.start(Scope.USER, share=[work]) as sb:
            await _onfailure(sb, work, stamp, trials)
    finally:
        shutil.rmtree(work, ignore_errors=True)


async def _onfailure(sb: Sandbox, work: Path, stamp: Path, trials: int) -> None:
    """OnFailure= running `unitgen recover` (no daemon) against the anchor of
    /work/shared/bench-method.md, an OnFailure= oneshot running `systemctl restart`,
    both on Restart=no units, alternating; systemd's RestartSec=0 alongside."""
    pol = work / "onf-policy"
    policy(pol, "b-onf.service")
    env = "".join(f'Environment="{k}={v}"\n' for k, v in sb.env.items())
    approaches = {
        "systemd RestartSec=0": "b-sd0.service",
        "anchor: OnFailure= systemctl restart": "b-anchor.service",
        "OnFailure= unitgen recover (no daemon)": "b-onf.service",
        "floor: OnFailure= python, bare RestartUnit": "b-pyfloor.service",
    }
    units: dict[str, str] = {}
    for unit in approaches.values():
        head = "[Unit]\nStartLimitIntervalSec=0\n"
        svc = f"[Service]\nExecStart={stamp} {work}/{unit}.fifo\n"
        if unit == "b-sd0.service":
            svc += "Restart=always\nRestartSec=0\n"
        elif unit == "b-anchor.service":
            head += "OnFailure=b-anchor-restart@%n.service\n"
        elif unit == "b-pyfloor.service":
            head += "OnFailure=b-pyfloor-restart@%n.service\n"
        else:
            head += "OnFailure=b-recover@%n.service\n"
        units[unit] = head + svc
    systemctl = shutil.which("systemctl") or "/usr/bin/systemctl"
    units["b-anchor-restart@.service"] = (
        "[Unit]\nStartLimitIntervalSec=0\n[Service]\nType=oneshot\n"
        f"{env}ExecStart={systemctl} --user restart %i\n"
    )
    # What any Python OnFailure= handler pays before its first RestartUnit: this venv's
    # interpreter and site, asyncio and dbus-fast, one connection, the reset and restart.
    floor = work / "pyfloor.py"
    floor.write_text(PYFLOOR)
    units["b-pyfloor-restart@.service"] = (
        "[Unit]\nStartLimitIntervalSec=0\n[Service]\nType=oneshot\n"
        f"{env}ExecStart={sys.executable} {floor} %i\n"
    )
    units["b-recover@.service"] = (
        "[Unit]\nStartLimitIntervalSec=0\n[Service]\nType=oneshot\n"
        f"{env}Environment=UNITGEN_POLICY_DIR={pol}\n"
        f"ExecStart={UNITGEN} recover --user %i\n"
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
    print("| path | min | median | p95 | p99 | max | n | vs anchor |")
    print("|---|---|---|---|---|---|---|---|")
    for name in approaches:
        print(line(f"{name}: kill -> running", results[name], anchor))
    for name in approaches:
        print(line(f"{name}: kill -> start begun (InactiveExit)", begun[name]))


# -- flood: parse + route throughput, dbus-next vs dbus-fast -------------------------

EMITTER = r"""
import asyncio, struct, sys, time
from dbus_fast.aio import MessageBus
from dbus_fast import Message, MessageType, Variant

def pair(i, inv):
    # What systemd 252 sends when a service changes state: the Service interface's
    # PropertiesChanged (17 values, 14 invalidated names), then the Unit's (22, 2).
    path = "/org/freedesktop/systemd1/unit/f" + str(i) + "_2eservice"
    t = Variant("t", 1700000000000000)
    service = {k: Variant("u", 0) for k in ("MainPID", "ControlPID", "NRestarts",
               "ExecMainPID", "UID", "GID")}
    service.update({k: Variant("s", "success") for k in ("Result", "ReloadResult",
                    "CleanResult", "StatusText")})
    service.update({k: Variant("i", 0) for k in ("ExecMainCode", "ExecMainStatus",
                    "StatusErrno")})
    service.update({k: t for k in ("ExecMainStartTimestamp",
                    "ExecMainStartTimestampMonotonic", "ExecMainExitTimestamp",
                    "ExecMainExitTimestampMonotonic")})
    invalid = ["Exec" + n + x for n in ("Condition", "StartPre", "Start", "StartPost",
               "Reload", "Stop", "StopPost") for x in ("", "Ex")]
    unit = {k: t for k in ("StateChangeTimestamp", "StateChangeTimestampMonotonic",
            "InactiveExitTimestamp", "InactiveExitTimestampMonotonic",
            "ActiveEnterTimestamp", "ActiveEnterTimestampMonotonic", "ActiveExitTimestamp",
            "ActiveExitTimestampMonotonic", "InactiveEnterTimestamp",
            "InactiveEnterTimestampMonotonic", "ConditionTimestamp",
            "ConditionTimestampMonotonic", "AssertTimestamp", "AssertTimestampMonotonic")}
    unit.update(ActiveState=Variant("s", "active"), SubState=Variant("s", "running"),
                FreezerState=Variant("s", "running"), InvocationID=inv,
                Job=Variant("(uo)", [0, "/"]), ConditionResult=Variant("b", True),
                AssertResult=Variant("b", True),
                ActivationDetails=Variant("a(ss)", []))
    out = []
    for iface, changed, names in (("org.freedesktop.systemd1.Service", service, invalid),
                                  ("org.freedesktop.systemd1.Unit", unit,
                                   ["Conditions", "Asserts"])):
        m = Message(message_type=MessageType.SIGNAL, path=path,
                    interface="org.freedesktop.DBus.Properties", member="PropertiesChanged",
                    signature="sa{sv}as", body=[iface, changed, names], serial=1)
        out.append(bytes(m._marshall(False)))
    return out

async def main(address, count, units, rate):
    bus = await MessageBus(bus_address=address).connect()
    sock = bus._sock
    # The messages are marshalled once and written as raw bytes, many per
    # sendall, on a blocking socket: a Python sender that marshals each message
    # (the first version of this benchmark) tops out at 6-8 k signals/s here and
    # measured itself, not the listener. dbus-daemon fills in the sender.
    sock.setblocking(True)
    print(bus.unique_name, flush=True)
    sys.stdin.readline()  # go
    inv = Variant("ay", bytes(range(16)))
    wire = [m for i in range(units) for m in pair(i, inv)]
    batch = 200
    start = time.monotonic()
    sent = 0
    serial = 1
    while sent < count:
        n = min(batch, count - sent)
        chunk = bytearray()
        for k in range(n):
            m = bytearray(wire[(sent + k) % len(wire)])
            struct.pack_into("<I", m, 8, serial)
            serial = serial % 0xFFFFFFF0 + 1
            chunk += m
        sock.sendall(chunk)
        sent += n
        if rate:
            ahead = sent / rate - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)
    took = time.monotonic() - start
    time.sleep(0.5)
    print(took, flush=True)
    bus.disconnect()

asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])))
"""


async def _flood_one(sb: Sandbox, lib: str, count: int, rate: float) -> dict[str, Any]:
    from handlers import bus as busmod
    from unitgen.paths import Paths

    work = Path(tempfile.mkdtemp(prefix="unitgen-flood-"))
    paths = Paths(Scope.USER, work / "p", work / "s", work / "r", work / "u")
    listener = Listener(paths, lambda bus: None, globs=["f*.service"], health=False)  # type: ignore[arg-type,return-value]
    listener.watch.rescan()
    bus = await SystemdBus.connect(Scope.USER, sb.bus_address, library=lib)
    got = 0
    first = last = 0.0

    def on_signal(msg: Any) -> None:
        nonlocal got, first, last
        listener._on_signal(msg)
        if msg.member != "PropertiesChanged":
            return  # NameAcquired and the like reach every connection unasked
        got += 1
        if got == 1:
            first = time.monotonic()
        last = time.monotonic()

    emitter = subprocess.Popen(  # noqa: ASYNC220 - harness set-up, before timing
        [sys.executable, "-c", EMITTER, sb.bus_address, str(count), "1000", str(rate)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert emitter.stdout is not None and emitter.stdin is not None
    name = emitter.stdout.readline().strip()
    bus.add_signal_callback(on_signal)
    for interface in (busmod.UNIT, busmod.SERVICE):
        # The listener's two rules, with the emitter standing in for systemd.
        await bus.add_match(
            busmod.match_rule(
                type="signal",
                sender=name,
                interface=busmod.PROPERTIES,
                member="PropertiesChanged",
                path_namespace=busmod.UNIT_PATH_PREFIX,
                arg0=interface,
            )
        )
    cpu0 = time.process_time()
    emitter.stdin.write("go\n")
    emitter.stdin.flush()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 120
    while got < count and loop.time() < deadline and bus.connected:
        await asyncio.sleep(0.05)
        if emitter.poll() is not None and got < count:
            await asyncio.sleep(1.0)
            break
    cpu = time.process_time() - cpu0
    emitter.wait(30)
    connected = bus.connected
    await bus.close()
    await listener._teardown()
    shutil.rmtree(work, ignore_errors=True)
    span = max(last - first, 1e-9)
    return {
        "lib": lib,
        "rate": int(rate),
        "sent": count,
        "received": got,
        "lost": count - got,
        "still_connected": connected,
        "per_second": got / span,
        "cpu_per_signal_us": 1e6 * cpu / max(got, 1),
        "routed": listener.stats.signals,
    }


async def flood(count: int, rate: float) -> None:
    with Sandbox.start(Scope.USER) as sb:
        results = []
        for cap in (rate, 0.0) if rate else (0.0,):
            for lib in ("fast", "next"):
                results.append(await _flood_one(sb, lib, count, cap))
    print(f"\nflood: {count} PropertiesChanged signals shaped like systemd 252's (Service and")
    print(
        f"Unit pairs for 1000 units), pre-marshalled, offered at {rate or 'no cap'}/s and "
        "uncapped; receiver = SystemdBus + listener routing\n"
    )
    print(
        "| library | offered/s | sent | received | lost | connected | handled/s | CPU/signal (us) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| dbus-{r['lib']} | {r['rate'] or 'max'} | {r['sent']} | {r['received']} | "
            f"{r['lost']} | "
            f"{r['still_connected']} | {r['per_second']:.0f} | {r['cpu_per_signal_us']:.1f} |"
        )


# -- scale + idle: a separate `unitgen watch` process ----------------------------------


def _proc_cpu(pid: int) -> float:
    return sum(_proc_cpu_split(pid))


def _proc_cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of ``pid`` so far, all threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def _proc_status(pid: int, key: str) -> int:
    for row in Path(f"/proc/{pid}/status").read_text().splitlines():
        if row.startswith(key + ":"):
            return int(row.split()[1])
    return -1


def _ns_pid_map(sb: Sandbox) -> dict[int, int]:
    """namespace PID -> host PID for every process in the sandbox, one /proc scan."""
    out: dict[int, int] = {}
    for host in sb.processes():
        with contextlib.suppress(OSError, ValueError):
            for row in Path(f"/proc/{host}/status").read_text().splitlines():
                if row.startswith("NSpid:"):
                    out[int(row.split()[-1])] = host
    return out


def _others_cpu(sb: Sandbox) -> dict[str, float]:
    """CPU seconds so far of the sandbox's systemd manager and dbus-daemon."""
    out: dict[str, float] = {}
    for host in sb.processes():
        with contextlib.suppress(OSError, ValueError):
            comm = Path(f"/proc/{host}/comm").read_text().strip()
            if comm in ("systemd", "dbus-daemon"):
                out[comm] = out.get(comm, 0.0) + _proc_cpu(host)
    return out


def _cpu_delta(before: dict[str, float], after: dict[str, float]) -> str:
    return ", ".join(f"{k} {after.get(k, 0.0) - v:.2f} s" for k, v in sorted(before.items()))


async def scale(
    units: int, fail: int, idle: float, lib: str, concurrency: int = 0, generated: bool = False
) -> None:
    work = Path(tempfile.mkdtemp(prefix="unitgen-scale-"))
    try:
        stamp = build_stamp(work)
        with Sandbox.start(Scope.USER, share=[work]) as sb:
            await _scale(sb, work, stamp, units, fail, idle, lib, concurrency, generated)
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
) -> None:
    import socket

    for k, v in sb.env.items():
        os.environ[k] = v
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
            env = "".join(f'Environment="{k}={v}"\n' for k, v in sb.env.items())
            extra["unitgen-recover@.service"] = recover.replace("[Service]\n", f"[Service]\n{env}")
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
    # this VM's ext4, where creating a lock file costs ~350 us of CPU against 7 us
    # on tmpfs (a thousand creations each). BENCH_RUN_ON_DISK=1 keeps it there.
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
        rss_ready = _proc_status(daemon.pid, "VmRSS")
        # Idle: no events, no health probes.
        cpu0 = _proc_cpu(daemon.pid)
        ctx0 = _proc_status(daemon.pid, "voluntary_ctxt_switches")
        nctx0 = _proc_status(daemon.pid, "nonvoluntary_ctxt_switches")
        await asyncio.sleep(idle)
        idle_cpu = _proc_cpu(daemon.pid) - cpu0
        idle_ctx = _proc_status(daemon.pid, "voluntary_ctxt_switches") - ctx0
        idle_nctx = _proc_status(daemon.pid, "nonvoluntary_ctxt_switches") - nctx0
        # Scale: `fail` units killed at once.
        victims = names[:: max(1, units // fail)][:fail]
        systemd_rounds = 0
        if generated:
            # Their first start counted once against StartLimitBurst=3: two rounds of
            # kills systemd restarts itself, and the third reaches the limit in all
            # `fail` at once. Only that round is measured.
            for _ in range(2):
                pids = await _host_main_pids(sb, victims)
                fifo.drain()
                for pid in pids:
                    os.kill(pid, 9)
                for _ in range(fail):
                    if await asyncio.to_thread(fifo.next_stamp, 30.0) is None:
                        break
                systemd_rounds += 1
                await asyncio.sleep(1.0)
            fifo.drain()
        host_pids = await _host_main_pids(sb, victims)
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
        split0 = _proc_cpu_split(daemon.pid)
        others0 = _others_cpu(sb)
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
        user, system = (b - a for a, b in zip(split0, _proc_cpu_split(daemon.pid), strict=True))
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
        others = _cpu_delta(others0, _others_cpu(sb))
        rss = _proc_status(daemon.pid, "VmRSS")
        hwm = _proc_status(daemon.pid, "VmHWM")
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


async def _host_main_pids(sb: Sandbox, units: list[str]) -> list[int]:
    bus = await SystemdBus.connect(Scope.USER, sb.bus_address)
    try:
        ns_pids = [
            int(await bus.get_property(u, "MainPID", "org.freedesktop.systemd1.Service"))
            for u in units
        ]
    finally:
        await bus.close()
    pid_map = await asyncio.to_thread(_ns_pid_map, sb)
    return [pid_map[p] for p in ns_pids]


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
    pid_map = await asyncio.to_thread(_ns_pid_map, sb)
    host_pids = [pid_map[p] for p in ns_pids]
    others0 = _others_cpu(sb)
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
    return out, _cpu_delta(others0, _others_cpu(sb))


async def bare(units: int, fail: int, mode: str) -> None:
    """systemd's side of a burst without the ladder: what any D-Bus listener costs it."""
    with Sandbox.start(Scope.USER) as sb:
        for k, v in sb.env.items():
            os.environ[k] = v
        await _bare(sb, units, fail, mode)


async def _bare(sb: Sandbox, units: int, fail: int, mode: str) -> None:
    from handlers.bus import SERVICE, unit_from_path, unit_properties_rule
    from handlers.listener import _SERVICE_STATIC

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
            await bus.unit_properties(unit, service_keys=_SERVICE_STATIC, path=unit_path(unit))
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
    pid_map = await asyncio.to_thread(_ns_pid_map, sb)
    host_pids = [pid_map[p] for p in ns_pids]
    bus.add_signal_callback(on_signal)
    others0 = _others_cpu(sb)
    me0 = os.times()
    t_kill = time.monotonic()
    for pid in host_pids:
        os.kill(pid, 9)
    await asyncio.wait_for(done.wait(), 120)
    took = time.monotonic() - t_kill
    await asyncio.sleep(1.0)
    me1 = os.times()
    others = _cpu_delta(others0, _others_cpu(sb))
    await bus.close()
    ours = me1.user + me1.system - me0.user - me0.system
    print(
        f"| bare listener ({mode}), {units} loaded, {len(victims)} killed | "
        f"last active {took * 1000:.0f} ms | this process {ours:.2f} s, {others} |"
    )


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("latency")
    p.add_argument(
        "--libs", default="fast,next", help="listeners to run side by side (fast, next or both)"
    )
    p.add_argument("--trials", type=int, default=100)
    p = sub.add_parser("giveup", help="a generated unit killed until systemd gives up")
    p.add_argument("--trials", type=int, default=100)
    p = sub.add_parser("onfailure", help="unitgen recover from OnFailure= vs the anchor")
    p.add_argument("--trials", type=int, default=60)
    p = sub.add_parser("flood")
    p.add_argument("--count", type=int, default=100000)
    p.add_argument("--rate", type=float, default=0.0, help="cap signals/s (0: as fast as possible)")
    p = sub.add_parser("scale")
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
    p = sub.add_parser("bare")
    p.add_argument("--units", type=int, default=1000)
    p.add_argument("--fail", type=int, default=200)
    p.add_argument("--what", choices=("restart", "read"), default="restart")
    p = sub.add_parser(
        "floor", help="bare restart, bare read+restart and unitgen watch, alternating"
    )
    p.add_argument("--units", type=int, default=1000)
    p.add_argument("--fail", type=int, default=200)
    p.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.mode == "latency":
        asyncio.run(latency(args.trials, tuple(args.libs.split(","))))
    elif args.mode == "giveup":
        asyncio.run(giveup(args.trials))
    elif args.mode == "onfailure":
        asyncio.run(onfailure(args.trials))
    elif args.mode == "bare":
        asyncio.run(bare(args.units, args.fail, args.what))
    elif args.mode == "floor":
        # What the burst costs a listener that does nothing but restart, one that
        # also makes unitgen's first read, and unitgen's whole ladder: in turn, so
        # the machine's drift hits all three alike.
        for _ in range(args.rounds):
            asyncio.run(bare(args.units, args.fail, "restart"))
            asyncio.run(bare(args.units, args.fail, "read"))
            asyncio.run(scale(args.units, args.fail, 1.0, "fast"))
    elif args.mode == "flood":
        asyncio.run(flood(args.count, args.rate))
    else:
        asyncio.run(
            scale(args.units, args.fail, args.idle, args.lib, args.concurrency, args.generated)
        )


if __name__ == "__main__":
    cli()
