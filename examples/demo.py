"""The main job, end to end, against a real systemd: ``./install.sh --demo`` runs this.

1. boots a disposable systemd (a ``systemd-nspawn -b`` container over the host's /usr;
   see docs/sandbox.md), because this machine need not run systemd as PID 1;
2. renders ``examples/demo.toml`` with unitgen *inside* it, straight into
   /etc/systemd/system and /etc/unitgen/policy.d, as on a real host;
3. enables and starts the units, checks that they serve (HTTP 200, Redis PONG);
4. shows them running with their ``systemd-analyze security --offline`` exposure;
5. kills the web server's main process and shows systemd bring it back;
6. starts unitgen's own listener (``unitgen-watch.service``, rendered from
   units/unitgen-watch.toml as install.sh does), kills the web server until systemd's
   start limit gives up, and shows the ladder bring it back, as unitgen saw it
   (``unitgen events --json``, ``status``, ``history``);
7. renders ``examples/demo-broken.toml``, a service that can never start, and shows the
   ladder give up with reason ``config`` and nothing restart it afterwards;
8. tears the container down (``--keep`` leaves it running until Ctrl-C).

Run by hand: ``/opt/unitgen/bin/python examples/demo.py [--user] [--keep]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from unitgen.paths import Scope
from unitgen.sandbox import Sandbox

REPO = Path(__file__).resolve().parent.parent
UNITS = ["demo-web.service", "demo-cache.service"]
WATCH = "unitgen-watch.service"
FETCH = "import urllib.request as u; print(u.urlopen('http://127.0.0.1:8080/', timeout=5).status)"


def step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def show(text: str) -> None:
    for line in text.rstrip().splitlines():
        print(f"   {line}")
    sys.stdout.flush()


def exposure(sb: Sandbox, unit: str) -> str:
    path = sb.show(unit, "FragmentPath")["FragmentPath"]
    res = sb.run(["systemd-analyze", "security", "--no-pager", "--offline=yes", path])
    found = re.search(r"Overall exposure level for \S+: ([0-9.]+) (\S+)", res.stdout)
    return f"{found.group(1)} {found.group(2)}" if found else "?"


def serves(sb: Sandbox, timeout: float = 10.0) -> tuple[str, str]:
    """Ask both daemons, retrying until they answer or the deadline passes.

    Type=exec units are "active" once exec'd, a moment before they listen.
    """
    deadline = time.monotonic() + timeout
    while True:
        web = sb.run(["/usr/bin/python3", "-c", FETCH]).stdout.strip() or "no answer"
        cache = sb.run(["/usr/bin/redis-cli", "-p", "6390", "ping"]).stdout.strip() or "no answer"
        if (web, cache) == ("200", "PONG") or time.monotonic() > deadline:
            return web, cache
        time.sleep(0.1)


class EventTap:
    """``unitgen events --json`` running inside the sandbox, its lines collected.

    Started through ``sh -c 'echo $$; exec ...'`` so the first line is its PID as
    the sandbox sees it: stopping it by that PID ends the process itself, not just
    the nsenter in front of it.
    """

    def __init__(self, sb: Sandbox, argv: list[str]) -> None:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **sb.inside_env()}
        self.sb = sb
        self.proc = subprocess.Popen(
            sb.command(["sh", "-c", 'echo "$$"; exec "$@"', "sh", *argv]),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.pid = ""
        self.events: list[dict[str, object]] = []
        self.stderr: list[str] = []
        self.following = threading.Event()
        self._lock = threading.Lock()
        # Strong references: the readers live as long as the tap.
        self._readers = [
            threading.Thread(target=self._read_out, daemon=True),
            threading.Thread(target=self._read_err, daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read_out(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if not self.pid:
                self.pid = line.strip()
                continue
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                with self._lock:
                    self.events.append(event)

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line.rstrip())
            if "following" in line:
                self.following.set()

    def seen(self) -> list[dict[str, object]]:
        with self._lock:
            return list(self.events)

    def wait_for(self, name: str, unit: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(e.get("event") == name and e.get("unit") == unit for e in self.seen()):
                return True
            if self.proc.poll() is not None:
                return False
            time.sleep(0.02)
        return False

    def stop(self) -> None:
        if self.pid.isdigit() and self.proc.poll() is None:
            self.sb.run(["kill", self.pid])
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        for reader in self._readers:
            reader.join(timeout=5)


def event_line(event: dict[str, object], t0: float) -> str:
    details = event.get("details")
    keys = ("step", "level", "action", "result", "reason", "classification", "source")
    extra = ""
    if isinstance(details, dict):
        extra = " ".join(f"{k}={details[k]}" for k in keys if details.get(k) not in (None, ""))
    stamp = event.get("timestamp")
    when = f"+{float(stamp) - t0:6.3f}s" if isinstance(stamp, int | float) else "?"
    return f"{when} {event.get('event')!s:15} {event.get('unit')} {extra}".rstrip()


def start_listener(sb: Sandbox, unitgen: str, user: list[str], unit_dir: str) -> bool:
    """Render units/unitgen-watch.toml the way install.sh does and start it."""
    spec = (REPO / "units" / "unitgen-watch.toml").read_text(encoding="utf-8")
    # install.sh points the companion spec at the installed unitgen (sed on the path).
    spec = spec.replace('"/usr/local/bin/unitgen"', f'"{unitgen}"')
    note = ""
    python = Path(sys.executable).resolve()
    if sb.scope is Scope.SYSTEM and any(python.is_relative_to(p) for p in ("/root", "/home")):
        # Only for a venv whose interpreter lives under /root or /home (pyenv):
        # ProtectHome=yes would hide it. A Debian install's python3 is in /usr.
        spec = spec.replace('"DynamicUser",', '"DynamicUser",\n    "ProtectHome",', 1)
        note = f"   (ProtectHome disabled: this venv's Python is {python})"
    copy = sb.root / "unitgen-watch.toml"
    copy.write_text(spec, encoding="utf-8")
    policy = "/etc/unitgen/policy.d" if sb.scope is Scope.SYSTEM else sb.env["UNITGEN_POLICY_DIR"]
    step(f"unitgen render units/unitgen-watch.toml into {unit_dir} (as install.sh does)")
    res = sb.run(
        [
            unitgen,
            "render",
            *user,
            str(copy),
            "--out",
            unit_dir,
            "--policy-dir",
            policy,
            "--unitgen-bin",
            unitgen,
        ]
    )
    show(res.stdout + res.stderr)
    if note:
        print(note)
    if res.returncode != 0:
        return False
    if sb.scope is Scope.SYSTEM:
        # The bus policy install.sh installs, so the daemon may own org.unitgen.Recovery1.
        conf = (REPO / "units" / "org.unitgen.Recovery1.conf").read_text(encoding="utf-8")
        sb.install_bus_policy("org.unitgen.Recovery1.conf", conf)
    sb.daemon_reload()
    started = time.monotonic()
    # Type=notify: `systemctl start` returns only once the daemon sent READY=1.
    res = sb.systemctl("start", WATCH)
    took = time.monotonic() - started
    props = sb.show(
        WATCH, "Type", "ActiveState", "SubState", "MainPID", "StatusText", "WatchdogUSec"
    )
    show(
        f"{WATCH}: Type={props['Type']} {props['ActiveState']}/{props['SubState']} "
        f"PID {props['MainPID']}, ready {took:.2f} s after systemctl start\n"
        f"StatusText: {props['StatusText']}"
    )
    if res.returncode != 0 or props["ActiveState"] != "active":
        show(res.stderr + sb.journal(WATCH, lines=20))
        return False
    return True


def show_events(events: list[dict[str, object]], t0: float, steps: set[str]) -> None:
    """The events but the routine steps (those not in ``steps``), and a count of all."""
    for event in events:
        details = event.get("details")
        name = details.get("step") if isinstance(details, dict) else None
        if event.get("event") not in ("StepStarted", "StepFinished") or (
            event.get("event") == "StepFinished" and name in steps
        ):
            show(event_line(event, t0))
    counts: dict[str, int] = {}
    for event in events:
        counts[str(event.get("event"))] = counts.get(str(event.get("event")), 0) + 1
    show(f"{len(events)} events in all: " + ", ".join(f"{v} {k}" for k, v in counts.items()))


def of(events: list[dict[str, object]], unit: str) -> list[dict[str, object]]:
    return [e for e in events if e.get("unit") == unit]


def recovery(sb: Sandbox, unitgen: str, user: list[str], unit_dir: str, policy: str) -> bool:
    """unitgen's own recovery, with ``unitgen events --json`` following it throughout."""
    if not start_listener(sb, unitgen, user, unit_dir):
        return False
    tap = EventTap(sb, [unitgen, "events", *user, "--json", "--unit", "demo-*"])
    try:
        if not tap.following.wait(15):
            show("unitgen events did not subscribe: " + " | ".join(tap.stderr[-3:]))
            return False
        ok = ladder(sb, unitgen, user, tap)
        return never_starts(sb, unitgen, user, unit_dir, policy, tap) and ok
    finally:
        tap.stop()


def starts(sb: Sandbox, unit: str) -> int:
    """How many times systemd began starting ``unit`` (its journal's "Starting" lines)."""
    return sum(" Starting " in ln for ln in sb.journal(unit, lines=200).splitlines())


def never_starts(
    sb: Sandbox, unitgen: str, user: list[str], unit_dir: str, policy: str, tap: EventTap
) -> bool:
    """A unit whose config is missing: the ladder validates, refuses and stays quiet."""
    spec = REPO / "examples" / "demo-broken.toml"
    unit = "demo-broken.service"
    step(f"unitgen render {spec.name}: a service that can never start (its config is missing)")
    res = sb.run([unitgen, "render", *user, str(spec), "--out", unit_dir, "--policy-dir", policy])
    show("\n".join(ln for ln in (res.stdout + res.stderr).splitlines() if unit in ln))
    if res.returncode != 0:
        return False
    sb.daemon_reload()
    t0 = time.time()
    sb.systemctl("start", unit)
    if not tap.wait_for("GaveUp", unit, timeout=30):
        show(f"no GaveUp for {unit}: " + sb.journal(unit, lines=10))
        return False
    gave_up = sb.show(unit, "ActiveState", "SubState", "Result", "NRestarts")
    events = of(tap.seen(), unit)
    before = (starts(sb, unit), len(events))
    # Nothing should happen now: watch for a while (a fixed observation window, not a
    # wait for a state) and count every start and event that still comes.
    window = 3.0
    deadline = time.monotonic() + window
    states: set[str] = set()
    while time.monotonic() < deadline:
        p = sb.show(unit, "ActiveState", "SubState")
        states.add(f"{p['ActiveState']}/{p['SubState']}")
        time.sleep(0.1)
    after = (starts(sb, unit), len(of(tap.seen(), unit)))
    limit = "repeated too quickly" in sb.journal(unit, lines=200)
    show(
        f"systemd: {before[0]} starts, "
        + ("start request repeated too quickly, " if limit else "")
        + f"{gave_up['ActiveState']} (Result={gave_up['Result']}); "
        "the ladder, as unitgen events --json saw it:"
    )
    show_events(events, t0, {"validating-config"})
    step(f"unitgen status {unit}")
    show(sb.run([unitgen, "status", *user, unit]).stdout)
    print()
    show(
        f"in the {window:.0f} s after GaveUp: {after[0] - before[0]} starts, "
        f"{after[1] - before[1]} events, states seen: {', '.join(sorted(states))}"
    )
    names = [e.get("event") for e in events]
    return (
        "GaveUp" in names
        and "Recovered" not in names
        and after == before
        and states == {"failed/failed"}
    )


def ladder(sb: Sandbox, unitgen: str, user: list[str], tap: EventTap) -> bool:
    """Kill demo-web until systemd gives up; the listener's ladder brings it back."""
    unit = "demo-web.service"
    step(f"kill -9 {unit} again and again, until systemd's start limit gives up")
    props = sb.show(
        unit,
        "StartLimitBurst",
        "StartLimitIntervalUSec",
        "RestartUSec",
        "NRestarts",
        "ExecMainStartTimestampMonotonic",
    )
    show(
        f"Restart=on-failure RestartSec={props['RestartUSec']} "
        f"StartLimitBurst={props['StartLimitBurst']} per {props['StartLimitIntervalUSec']}"
        " (counted from the daemon-reload above, which resets it)"
    )
    before_start = props["ExecMainStartTimestampMonotonic"]
    restarts = int(props["NRestarts"])
    last_kill = 0.0
    by_ladder: dict[str, str] = {}
    t0 = 0.0
    for n in range(1, 2 * int(props["StartLimitBurst"]) + 2):
        last_kill, t0 = time.monotonic(), time.time()
        pid = sb.kill_main(unit, signal.SIGKILL)

        def replaced(p: dict[str, str], pid: int = pid) -> bool:
            return p["ActiveState"] == "active" and p["MainPID"] not in ("0", str(pid))

        after = sb.wait_for(unit, replaced, timeout=30)
        now = int(after["NRestarts"])
        if now == restarts + 1:
            show(
                f"kill {n}: PID {pid} -> {after['MainPID']}  systemd restarted it (NRestarts={now})"
            )
            restarts = now
            continue
        by_ladder = sb.show(
            unit,
            "MainPID",
            "NRestarts",
            "ActiveEnterTimestampMonotonic",
            "InactiveEnterTimestampMonotonic",
            "InactiveExitTimestampMonotonic",
            "ExecMainStartTimestampMonotonic",
            "Result",
        )
        show(
            f"kill {n}: PID {pid} -> {by_ladder['MainPID']}  not systemd: NRestarts={now} "
            "(systemd gave up; restarted by the ladder, below)"
        )
        break
    if not by_ladder:
        show("systemd kept restarting it; its start limit was never hit")
        return False
    # CLOCK_MONOTONIC is the same inside the container: systemd's own timestamps
    # split the time since the kill into who spent it.
    gone, begun, active = (
        int(by_ladder[f"{k}TimestampMonotonic"]) / 1e6
        for k in ("InactiveEnter", "InactiveExit", "ActiveEnter")
    )
    back = active - last_kill
    web = serves(sb)[0]
    recovered = tap.wait_for("Recovered", unit, timeout=15)
    step("journal: systemd gives up; the listener took over, OnFailure= skipped (trimmed)")
    # systemd queued the OnFailure= unit with the give-up and skipped it by its
    # condition (the daemon's listening marker): no process ran. Wait (bounded)
    # for that job to be done rather than show an empty journal.
    reporter = f"unitgen-recover@{unit}.service"
    deadline = time.monotonic() + 20
    while "unmet condition" not in sb.journal(reporter, lines=60):
        if time.monotonic() > deadline:
            break
        time.sleep(0.1)
    for name, pattern in (
        (unit, r"repeated too quickly|start-limit-hit|OnFailure"),
        (reporter, r"skipped because of an unmet condition|unitgen\[\d+\]: "),
        (WATCH, re.escape(unit)),
    ):
        lines = [ln for ln in sb.journal(name, lines=60).splitlines() if re.search(pattern, ln)]
        show("\n".join(ln[:150] for ln in lines[-3:]) or f"({name}: nothing logged)")
    step("what unitgen saw: unitgen events --json, in the background (time since last kill)")
    events = of(tap.seen(), unit)
    show_events(events, t0, {"restarting", "verifying"})
    step(f"unitgen status {unit}")
    show(sb.run([unitgen, "status", *user, unit]).stdout)
    step(f"unitgen history {unit} (newest incident)")
    show(
        "\n".join(sb.run([unitgen, "history", *user, unit, "--limit", "1"]).stdout.splitlines()[:8])
    )
    print()
    opened = [e for e in events if e.get("event") == "IncidentOpened"]
    details = opened[-1].get("details") if opened else None
    source = details.get("source") if isinstance(details, dict) else None
    show(
        f"incident opened by: {source or '-'} (the listener, at systemd's give-up; "
        "the OnFailure= unit was skipped: the daemon listens)\n"
        f"where the time went: last kill -> active again {back:.2f} s = "
        f"systemd {gone - last_kill:.2f} s (RestartSec, then its refused start) "
        f"+ ladder {(begun - gone) * 1000:.1f} ms (decision, diagnosis, RestartUnit) "
        f"+ start {(active - begun) * 1000:.1f} ms\n"
        f"ExecMainStartTimestampMonotonic {before_start} -> "
        f"{by_ladder['ExecMainStartTimestampMonotonic']}; serving: {web}"
    )
    names = [e.get("event") for e in events]
    return recovered and "IncidentOpened" in names and source == "listener" and web == "200"


def demo(sb: Sandbox, spec: Path) -> int:
    unitgen = str(Path(sys.executable).parent / "unitgen")
    user = ["--user"] if sb.scope is Scope.USER else []
    inside_units = "/etc/systemd/system" if sb.scope is Scope.SYSTEM else str(sb.unit_dir)
    policy = "/etc/unitgen/policy.d" if sb.scope is Scope.SYSTEM else sb.env["UNITGEN_POLICY_DIR"]

    step(f"unitgen check {spec.name}: validate, systemd-analyze verify, exposure gate")
    show(sb.run([unitgen, "check", *user, str(spec)]).stdout)

    step(f"unitgen render {spec.name} into {inside_units}")
    res = sb.run(
        [unitgen, "render", *user, str(spec), "--out", inside_units, "--policy-dir", policy]
    )
    show(res.stdout + res.stderr)
    if res.returncode != 0:
        return res.returncode

    step("systemctl daemon-reload && systemctl enable --now " + " ".join(UNITS))
    sb.daemon_reload()
    res = sb.systemctl("enable", "--now", *UNITS)
    show(res.stdout + res.stderr)
    for unit in UNITS:
        sb.wait_for(unit, {"active", "failed"}, timeout=30)

    step("running units, with their exposure (systemd-analyze security --offline=yes)")
    print(f"   {'UNIT':22} {'STATE':16} {'MAIN PID':>8}  {'USER':10} EXPOSURE")
    ok = True
    for unit in UNITS:
        props = sb.show(unit, "ActiveState", "SubState", "MainPID")
        pid = props["MainPID"]
        owner = "-"
        if pid != "0":
            owner = sb.run(["stat", "-c", "%U", f"/proc/{pid}"]).stdout.strip() or "-"
        state = f"{props['ActiveState']}/{props['SubState']}"
        ok = ok and props["ActiveState"] == "active"
        print(f"   {unit:22} {state:16} {pid:>8}  {owner:10} {exposure(sb, unit)}")
    web, cache = serves(sb)
    print(f"   GET http://127.0.0.1:8080/ -> {web};  redis-cli -p 6390 ping -> {cache}")
    ok = ok and (web, cache) == ("200", "PONG")

    step("kill -9 the web server's main process: systemd restarts it (Restart=on-failure)")
    before = sb.kill_main("demo-web.service", signal.SIGKILL)
    props = sb.wait_for(
        "demo-web.service",
        lambda p: p["ActiveState"] == "active" and p["MainPID"] not in ("0", str(before)),
        timeout=30,
    )
    show(
        f"main PID {before} killed; now {props['MainPID']}, "
        f"NRestarts={props['NRestarts']}, serving: {serves(sb)[0]}"
    )
    step("journal of demo-web.service")
    show(sb.journal("demo-web.service", lines=8))
    ok = recovery(sb, unitgen, user, inside_units, policy) and ok
    print()
    print("demo: OK" if ok else "demo: FAILED (see above)")
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--user", action="store_true", help="use a user manager instead")
    parser.add_argument("--keep", action="store_true", help="keep the sandbox until Ctrl-C")
    parser.add_argument("--spec", type=Path, default=REPO / "examples" / "demo.toml")
    parser.add_argument("--prefix", help=argparse.SUPPRESS)  # passed by install.sh
    parser.add_argument("--repo", help=argparse.SUPPRESS)
    args = parser.parse_args()
    scope = Scope.USER if args.user else Scope.SYSTEM
    spec = args.spec.resolve()
    kind = "user manager" if args.user else "booted systemd-nspawn container"
    step(f"starting a disposable systemd: {kind}")
    started = time.monotonic()
    with Sandbox.start(scope, share=[REPO, spec.parent]) as sb:
        show(
            f"{sb.systemctl('is-system-running').stdout.strip()} after "
            f"{time.monotonic() - started:.2f} s (root {sb.root})"
        )
        code = demo(sb, spec)
        if args.keep:
            print(f"\nkept; enter it with: {' '.join(sb.command(['bash']))}")
            print("Ctrl-C tears it down")
            with contextlib.suppress(KeyboardInterrupt):
                threading.Event().wait()
    step("sandbox torn down: no processes, mounts, cgroups or files left")
    return code


if __name__ == "__main__":
    from unitgen.errors import UnitgenError

    try:
        sys.exit(main())
    except UnitgenError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
