"""What every listener benchmark shares: the stamp, its FIFO, the tables, the hooks.

Method: the service is bench/stamp.c, a static C program that writes its
CLOCK_MONOTONIC start time to a FIFO first thing in main(). A trial reads
MainPID, records CLOCK_MONOTONIC, sends SIGKILL and waits for the new program's
timestamp. All approaches of a mode run in the same run, in alternation, each
on its own unit and FIFO.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import select
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

REPO = Path(__file__).resolve().parent.parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from handlers.bus import UNIT, SystemdBus, unit_from_path, unwrap  # noqa: E402
from handlers.recovery import Trigger  # noqa: E402
from unitgen.paths import Scope  # noqa: E402

if TYPE_CHECKING:
    from unitgen.sandbox import Sandbox

HERE = Path(__file__).resolve().parent
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

_RULE = "|---|---|---|---|---|---|---|---|"


def table_head(first: str = "path", ratio: str = "") -> str:
    """The header of a :func:`line` table."""
    return f"| {first} | min | median | p95 | p99 | max | n | {ratio} |\n{_RULE}".replace("  ", " ")


# -- tables ------------------------------------------------------------------------------


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


# -- the stamp and its FIFO ----------------------------------------------------------------


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


def env_lines(sb: Sandbox) -> str:
    """The sandbox's environment as Environment= lines, for the oneshots it runs."""
    return "".join(f'Environment="{k}={v}"\n' for k, v in sb.env.items())


def stamped_unit(
    work: Path, stamp: Path, unit: str, *, unit_extra: str = "", service_extra: str = ""
) -> str:
    """A unit whose process writes its start stamp to ``WORK/UNIT.fifo``, with no start limit."""
    return (
        f"[Unit]\nStartLimitIntervalSec=0\n{unit_extra}"
        f"[Service]\nExecStart={stamp} {work}/{unit}.fifo\n{service_extra}"
    )


def oneshot_unit(env: str, *lines: str) -> str:
    """A oneshot (an OnFailure= target) that runs with the sandbox's environment ``env``."""
    body = "".join(f"{ln}\n" for ln in lines)
    return f"[Unit]\nStartLimitIntervalSec=0\n[Service]\nType=oneshot\n{env}{body}"


def use_sandbox_env(sb: Sandbox) -> None:
    for k, v in sb.env.items():
        os.environ[k] = v


# -- timestamps from the listener's and the engine's hooks ------------------------------


class Marks:
    """CLOCK_MONOTONIC timestamps (ns) of what a listener and its engine did, per unit.

    Taken at the seams the listener and the engine already have, nothing patched:
    :meth:`on_signal` is a bus signal callback (``SystemdBus.add_signal_callback``),
    :meth:`trigger_factory` the listener's (``Listener(trigger_factory=...)``), and
    :class:`StampingClient` the engine's systemd client (``RecoveryEngine(bus)``).
    Kinds:

    * ``failed``: the unit's ``ActiveState=failed`` PropertiesChanged received;
    * ``ladder``: the listener handing a failure to the ladder (its trigger made,
      just before ``engine.recover``); kept under the listener's ``tag``, because a
      trigger does not name its unit (one unit is killed at a time per listener);
    * ``restart``: the ladder's restart call (RefUnit, ResetFailedUnit and
      RestartUnit sent at once) issued.

    The engine's own events are no clock for the last: its restart step's
    StepStarted is made before the attempt is counted durably, which comes first,
    and all its events are held until the restart call has returned.
    """

    def __init__(self, tag: str = "") -> None:
        self.tag = tag
        self._at: dict[tuple[str, str], list[int]] = {}

    def clear(self, *units: str) -> None:
        """Forget the units' marks (and the listener's ``ladder``) before a kill."""
        for unit in (*units, self.tag):
            for kind in ("failed", "ladder", "restart"):
                self._at.pop((unit, kind), None)

    def get(self, unit: str, kind: str) -> list[int]:
        return self._at.get((unit, kind), [])

    def add(self, unit: str, kind: str, at: int) -> None:
        self._at.setdefault((unit, kind), []).append(at)

    def on_signal(self, msg: Any) -> None:
        if msg.member == "PropertiesChanged" and msg.body[0] == UNIT:
            state = msg.body[1].get("ActiveState")
            if state is not None and unwrap(state) == "failed":
                unit = unit_from_path(msg.path)
                if unit is not None:
                    self.add(unit, "failed", time.monotonic_ns())

    def trigger_factory(self, **fields: Any) -> Any:
        self.add(self.tag, "ladder", time.monotonic_ns())
        return Trigger(**fields)


class StampingClient:
    """The engine's systemd client: the listener's bus, with its restart calls stamped.

    Everything but the two restart calls is the bus's own attribute, looked up on
    each use; the engine gets this object as its ``bus`` and the listener keeps the
    bus itself (a reconnect would hand the engine the new bus, unstamped: the
    benchmarks never reconnect).
    """

    def __init__(self, bus: SystemdBus, marks: Marks) -> None:
        self._bus = bus
        self._marks = marks

    def __getattr__(self, name: str) -> Any:
        return getattr(self._bus, name)

    async def reset_and_restart(
        self, name: str, mode: str = "replace"
    ) -> tuple[str, Exception | None]:
        self._marks.add(name, "restart", time.monotonic_ns())
        return await self._bus.reset_and_restart(name, mode)

    async def restart(self, name: str, mode: str = "replace") -> str:
        self._marks.add(name, "restart", time.monotonic_ns())
        return await self._bus.restart(name, mode)


def bench_engine(bus: SystemdBus, paths: Any, marks: Marks) -> Any:
    """A benchmark listener's recovery engine: full ladder, no event sinks, no journal
    reads, its failed signals and restart calls timestamped in ``marks``."""
    from handlers.recovery import RecoveryEngine

    bus.add_signal_callback(marks.on_signal)
    return RecoveryEngine(StampingClient(bus, marks), paths, read_journal_lines=False)


# -- the generated unit --------------------------------------------------------------------

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
    keep_onfailure: bool = False,
) -> str:
    """Render ``name``.service with the project's generator; return the unit's text.

    Its policy lands in ``policy_dir``, the other rendered units (the recovery
    unit) in ``work``/rendered-``name``. OnFailure= is dropped unless
    ``keep_onfailure``: with the daemon up, the oneshot only reports what the
    listener did (docs/listener.md), and its Python start-up on these two cores
    would land in the next trials. BENCH_ONFAILURE=1 keeps it, as a user installs it.
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
    if keep_onfailure or os.environ.get("BENCH_ONFAILURE"):
        return text
    return "".join(ln for ln in text.splitlines(keepends=True) if not ln.startswith("OnFailure"))


@dataclasses.dataclass
class GiveUp:
    """One trial of a generated unit, in ms from systemd's give-up (the refused start)."""

    signal: list[float]  # -> the failed signal received (empty if not marked)
    restart: float  # -> RestartUnit issued
    running: float  # -> the new process's stamp
    last_kill: float  # the last kill -> the stamp
    systemd_restarts: int


async def giveup_trial(
    sb: Sandbox, unit: str, fifo: Fifo, marks: Marks, trial: int
) -> GiveUp | None:
    """Kill ``unit`` until a restart is the ladder's (``marks`` gets a "restart"), not
    systemd's; the give-up is systemd's InactiveEnterTimestamp of the refused start."""
    kills = 0
    while True:
        pid = await asyncio.to_thread(main_pid_host, sb, unit)
        fifo.drain()
        marks.clear(unit)
        t_kill = time.monotonic_ns()
        os.kill(pid, 9)
        kills += 1
        ts = await asyncio.to_thread(fifo.next_stamp, 10.0)
        if ts is None:
            print(f"trial {trial}: {unit}: no restart within 10 s", file=sys.stderr)
            return None
        restart = marks.get(unit, "restart")
        if not restart:
            if kills > 10:
                print(f"trial {trial}: {unit}: systemd never gave up", file=sys.stderr)
                return None
            continue  # systemd's own restart
        props = await asyncio.to_thread(sb.show, unit, "InactiveEnterTimestampMonotonic")
        gave_up = int(props["InactiveEnterTimestampMonotonic"]) * 1000  # us -> ns
        failed = marks.get(unit, "failed")
        return GiveUp(
            signal=[(failed[-1] - gave_up) / 1e6] if failed else [],
            restart=(restart[0] - gave_up) / 1e6,
            running=(ts - gave_up) / 1e6,
            last_kill=(ts - t_kill) / 1e6,
            systemd_restarts=kills - 1,
        )


# -- /proc readings and bursts ---------------------------------------------------------------


def proc_cpu(pid: int) -> float:
    return sum(proc_cpu_split(pid))


def proc_cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of ``pid`` so far, all threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def proc_status(pid: int, key: str) -> int:
    for row in Path(f"/proc/{pid}/status").read_text().splitlines():
        if row.startswith(key + ":"):
            return int(row.split()[1])
    return -1


def ns_pid_map(sb: Sandbox) -> dict[int, int]:
    """namespace PID -> host PID for every process in the sandbox, one /proc scan."""
    out: dict[int, int] = {}
    for host in sb.processes():
        with contextlib.suppress(OSError, ValueError):
            for row in Path(f"/proc/{host}/status").read_text().splitlines():
                if row.startswith("NSpid:"):
                    out[int(row.split()[-1])] = host
    return out


def others_cpu(sb: Sandbox) -> dict[str, float]:
    """CPU seconds so far of the sandbox's systemd manager and dbus-daemon."""
    out: dict[str, float] = {}
    for host in sb.processes():
        with contextlib.suppress(OSError, ValueError):
            comm = Path(f"/proc/{host}/comm").read_text().strip()
            if comm in ("systemd", "dbus-daemon"):
                out[comm] = out.get(comm, 0.0) + proc_cpu(host)
    return out


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> str:
    return ", ".join(f"{k} {after.get(k, 0.0) - v:.2f} s" for k, v in sorted(before.items()))


async def host_main_pids(sb: Sandbox, units: list[str]) -> list[int]:
    bus = await SystemdBus.connect(Scope.USER, sb.bus_address)
    try:
        ns_pids = [
            int(await bus.get_property(u, "MainPID", "org.freedesktop.systemd1.Service"))
            for u in units
        ]
    finally:
        await bus.close()
    pid_map = await asyncio.to_thread(ns_pid_map, sb)
    return [pid_map[p] for p in ns_pids]
