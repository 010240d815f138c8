"""Chaos soak: generated units, the real `unitgen watch` daemon, a seeded schedule of faults.

    /opt/unitgen/bin/python bench/soak.py --seed 1 --faults 200
    /opt/unitgen/bin/python bench/soak.py --seed 7 --minutes 10 --faults 1000

A disposable user manager (unitgen/sandbox) runs units rendered by ``unitgen
render`` from one spec (a mix of Restart= policies, a template, a dependency,
a health probe, cleanup and disk directories on a small tmpfs, a validate
command, a webhook alert), the daemon as its rendered unit, and the
``OnFailure=`` path. Faults (bench/soak_faults.py) are drawn with the seed;
after each one the soak waits, with deadlines, for the step to settle and
checks the invariants; at the end it waits for every unit to be up and then a
quiet period long enough to see an extra restart if one came.

Invariants (any violation: exit 1; the same seed reproduces the schedule):

* every unit is active at the end, except those the ladder gave up on or parked (counted);
* no unit started more often than systemd's restarts (journal), the ladder's
  restarts (history and ledger: its own, and a dependent's restart of what it
  requires) and the soak's own starts account for (bench/soak_accounting.py);
* no unit restarted more often within its window than the worst case
  ``unitgen check`` prints;
* every incident has an end;
* nothing outside the declared directories changed (a canary tree, symlinked
  into the declared ones);
* the daemon's RSS and descriptor count do not grow over its lifetime;
* every alert that fired was resolved, or the incident says why not
  (a give-up, or a recorded delivery failure);
* the alert URL's token appears nowhere in the journal.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "tests"))

import soak_accounting as acc  # noqa: E402
import soak_faults as sf  # noqa: E402
from daemon_sandbox import install_daemon  # noqa: E402

from unitgen.paths import Scope, paths_for  # noqa: E402
from unitgen.sandbox import Sandbox  # noqa: E402

UNITGEN = Path(sys.executable).with_name("unitgen")
DAEMON = sf.DAEMON
MARKER = "/run/user/0/unitgen-watch/listening"
SECRET = "s3cr3t-soak-token-7f1c"
WATCHDOG = 3.0
STEP_DEADLINE = 60.0
QUIET = 6.0  # > back-off max + min_uptime + RestartSec: room for a late extra restart

RECOVERY = (
    'recovery = { max_attempts = 6, window = "10min", min_uptime = "1s", stable_after = "10min",'
    ' start_timeout = "10s", backoff = { base = "200ms", factor = 1.5, max = "2s" } }'
)


@dataclass(frozen=True)
class Role:
    name: str  # [service.NAME]
    instances: tuple[str, ...] = ()  # a template's instances
    restart: str = "on-failure"
    extra: str = ""

    def units(self) -> list[str]:
        if self.instances:
            return [f"{self.name}{i}.service" for i in self.instances]
        return [f"{self.name}.service"]


def roles(extra_units: int) -> list[Role]:
    base = [
        Role("on1"),
        Role("on2"),
        Role("abn", restart="on-abnormal"),
        Role("no1", restart="no"),
        Role("no2", restart="no"),
        Role("no3", restart="no"),
        Role("worker@", instances=("a", "b")),
        Role("back", restart="no"),
        Role("front", extra='requires = ["back.service"]\nafter = ["back.service"]\n'),
        Role("probed", extra="HEALTH"),
        Role("hog", extra='limits = { memory_max = "48M" }\n'),
        Role("disky", restart="no", extra="DISK"),
    ]
    return base + [Role(f"x{i}") for i in range(extra_units)]


def spec_text(rs: list[Role], work: Path, disk: Path, url_file: Path) -> str:
    chaos = work / "chaos.sh"
    control = work / "control"
    out = [
        '[defaults]\nhardening = "off"\nalerts = ["hook"]\n',
        f'[alert.hook]\ntype = "webhook"\nurl_file = "{url_file}"\ntimeout = "2s"\nretries = 1\n',
    ]
    for r in rs:
        policy = (
            '{ policy = "no" }'
            if r.restart == "no"
            else f'{{ policy = "{r.restart}", delay = "200ms", burst = 3, interval = "30s" }}'
        )
        extra = r.extra
        if extra == "HEALTH":
            sick = control / "probed.service" / "sick"
            extra = (
                # start_period well inside the soak's 60 s wait for a health restart:
                # the 2 min default would hold a unit failing from its start for longer.
                f'health = {{ command = ["/bin/sh", "-c", "test ! -e {sick}"],'
                ' interval = "1s", failures = 2, timeout = "2s", start_period = "5s" }\n'
            )
        elif extra == "DISK":
            extra = (
                f'disk = {{ paths = ["{disk}"], min_free = "50%", cleanup = ["{disk}/cache"] }}\n'
                f'cleanup = {{ temp = ["{work}/disky-tmp"], older_than = "1h" }}\n'
                'validate = ["/bin/true"]\n'
            )
        out.append(
            f'[service."{r.name}"]\n'
            f'exec = ["/bin/sh", "{chaos}", "run", "{control}"]\n'
            f'exec_start_pre = [["/bin/sh", "{chaos}", "pre", "{control}"]]\n'
            'timeout_start = "2s"\n'
            f"restart = {policy}\n{RECOVERY}\n{extra}"
        )
    return "\n".join(out)


# -- the fault table ---------------------------------------------------------------

Injector = Callable[[sf.World, str], sf.Expect]


@dataclass(frozen=True)
class Fault:
    name: str
    inject: Injector
    targets: Callable[[dict[str, Role]], list[str]]
    replaces_daemon: bool = False


def _by(pred: Callable[[Role], bool]) -> Callable[[dict[str, Role]], list[str]]:
    return lambda units: sorted(u for u, r in units.items() if pred(r))


def _named(*names: str) -> Callable[[dict[str, Role]], list[str]]:
    return lambda units: sorted(u for u, r in units.items() if r.name in names)


_ANY = _by(lambda r: True)
_ON = _by(lambda r: r.restart == "on-failure" and r.name not in ("front",))
_UNCOVERED = _by(lambda r: r.restart in ("no", "on-abnormal") and r.name not in ("back", "disky"))
_LADDER = _named("no1", "no2", "no3")

FAULTS: list[Fault] = [
    Fault("kill-9", sf.kill9, _ANY),
    Fault("exit-covered", sf.exit_code, _ON),
    Fault("exit-uncovered", sf.exit_code, _UNCOVERED),
    Fault("start-hang", sf.hang_start, _by(lambda r: r.name != "back")),
    Fault("memory-max", sf.memory_max, _named("hog")),
    Fault("full-disk", sf.full_disk, _named("disky")),
    Fault("dependency-death", sf.dependency_death, _named("back")),
    Fault("health-fails", sf.health_fail, _named("probed")),
    Fault("daemon-kill-9", sf.daemon_kill9_mid_incident, _LADDER, replaces_daemon=True),
    Fault("bus-restart", sf.bus_restart_mid_incident, _LADDER),
    Fault("daemon-reload", sf.daemon_reload_mid_incident, _LADDER),
    Fault("daemon-reexec", sf.daemon_reexec_mid_incident, _LADDER),
    Fault("daemon-sigstop", sf.daemon_sigstop, _LADDER, replaces_daemon=True),
    # Counted with the daemon's restarts: the daemon dies of SIGBUS (docs/reliability.md).
    Fault("db-readonly", sf.readonly_db, _LADDER, replaces_daemon=True),
    Fault("webhook-hang", sf.webhook_hang, _LADDER),
    Fault("webhook-500", sf.webhook_500, _LADDER),
    Fault("webhook-redirect", sf.webhook_redirect, _LADDER),
]


def _order(rng: random.Random, faults: list[Fault], count: int) -> list[Fault]:
    first = list(faults)
    rng.shuffle(first)
    out = first[:count]
    while len(out) < count:
        out.append(rng.choice(faults))
    return out


# -- the run -----------------------------------------------------------------------


@dataclass
class Report:
    seed: int
    faults: Counter[str] = field(default_factory=Counter)
    incidents: int = 0
    recovered: int = 0
    gave_up: int = 0
    open_at_end: int = 0
    violations: list[str] = field(default_factory=list)
    give_ups: list[str] = field(default_factory=list)  # seen by the soak, re-armed by reset
    daemon_samples: list[tuple[int, int, int]] = field(default_factory=list)  # pid, rss kB, fds
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def table(self) -> str:
        rows = [f"seed {self.seed}: {sum(self.faults.values())} faults in {self.seconds:.0f} s"]
        rows += [f"  {name:<18} {n}" for name, n in sorted(self.faults.items())]
        rows.append(
            f"  incidents {self.incidents}, recovered {self.recovered}, gave up {self.gave_up},"
            f" open at end {self.open_at_end}"
        )
        rows.append(f"  give-ups re-armed with `unitgen reset`: {len(self.give_ups)}")
        rows += [f"    - {g}" for g in self.give_ups]
        rows.append(f"  violations {len(self.violations)}")
        rows += [f"    - {v}" for v in self.violations]
        rows += [f"  note: {n}" for n in self.notes]
        return "\n".join(rows)


class Soak:
    def __init__(
        self,
        work: Path,
        seed: int,
        *,
        extra_units: int = 0,
        log: Callable[[str], None] = print,
        sb: Sandbox | None = None,
    ) -> None:
        self.given = sb  # a sandbox of the caller's (which must share ``work``), kept open
        self.saved_env: dict[str, str | None] = {}
        self.work = work
        self.seed = seed
        self.rng = random.Random(seed)
        self.log = log
        self.report = Report(seed)
        self.roles = roles(extra_units)
        self.units: dict[str, Role] = {u: r for r in self.roles for u in r.units()}
        self.manual: dict[str, list[float]] = {u: [] for u in self.units}
        self.resets: dict[str, float] = {}
        self.daemon_kills: list[float] = []
        self.sb: Sandbox | None = None
        self.webhook: sf.Webhook | None = None
        self.budget: dict[str, int] = {}
        self.ladder_seen: dict[str, set[float]] = {}
        self.dependency_seen: dict[str, set[float]] = {}  # restarted unit -> walls

    # set-up ------------------------------------------------------------------------

    def start(self) -> None:
        work = self.work
        (work / "control").mkdir(parents=True, exist_ok=True)
        sf.chaos_script(work / "chaos.sh")
        self.disk = work / "disk"
        self.disk.mkdir(exist_ok=True)
        (work / "disky-tmp").mkdir(exist_ok=True)
        self.webhook = sf.Webhook()
        url_file = work / "alert.url"
        url_file.write_text(self.webhook.url(SECRET) + "\n")
        url_file.chmod(0o600)
        self.sb = sb = self.given or Sandbox.start(Scope.USER, share=[work])
        # The tmpfs is mounted before the daemon starts, so its mount namespace has it.
        sb.run(["mount", "-t", "tmpfs", "-o", "size=2M", "soak-disk", str(self.disk)], check=True)
        sb.run(["mkdir", "-p", f"{self.disk}/cache"], check=True)
        spec = spec_text(self.roles, work, self.disk, url_file)
        (work / "soak.toml").write_text(spec)
        install_daemon(
            sb, work, specs={"soak.toml": spec}, verbose=False, watchdog=f"{WATCHDOG:g}s"
        )
        sb.install_units({f"{DAEMON}.d/soak.conf": "[Service]\nTimeoutAbortSec=1s\n"})
        self.budget = self._budgets(work / "soak.toml")
        # paths_for() reads the environment; the caller's is put back by close().
        self.saved_env = {key: os.environ.get(key) for key in sb.env}
        os.environ.update(sb.env)
        self.paths = paths_for(Scope.USER)
        self._canary_plant()
        sb.systemctl("start", DAEMON, check=True)
        sf.poll(self._listening, 20, "the daemon's listening marker")
        sb.systemctl("start", *self.units, check=True, timeout=60)
        for u in self.units:
            sb.wait_for(u, lambda p: p.get("SubState") == "running", 30)
        self.world = sf.World(
            sb=sb,
            control=work / "control",
            database=self.paths.database,
            disk=self.disk,
            disk_cleanup=self.disk / "cache",
            webhook=self.webhook,
            log=self.log,
        )
        self.unavailable: dict[str, str] = {}
        if not sf.memory_max_enforced(sb, "hog.service"):
            self.unavailable["memory-max"] = (
                "MemoryMax= is not enforced here: the memory controller is on cgroup v1,"
                " which a user manager cannot use"
            )
        for name, why in self.unavailable.items():
            self.report.notes.append(f"{name} not injected: {why}")
        self._sample_daemon()

    def _budgets(self, spec: Path) -> dict[str, int]:
        """The worst case `unitgen check` prints, per unit (restarts per window)."""
        sys.path.insert(0, str(REPO))
        from unitgen.commands.check import worst_case_of
        from unitgen.specfile import load_spec

        loaded = load_spec(spec)
        out: dict[str, int] = {}
        for svc in loaded.services.values():
            total = worst_case_of(svc).total
            for u, r in self.units.items():
                if f"{r.name}.service" == svc.unit or (
                    r.instances and svc.unit == f"{r.name}.service"
                ):
                    out[u] = total
        return out

    def _listening(self) -> bool:
        assert self.sb is not None
        return self.sb.run(["test", "-e", MARKER]).returncode == 0

    def save(self, artifacts: Path) -> None:
        """The history database, the ledger and the whole journal, for a post-mortem."""
        import shutil

        assert self.sb is not None
        artifacts.mkdir(parents=True, exist_ok=True)
        for p in self.paths.database.parent.glob(self.paths.database.name + "*"):
            shutil.copy2(p, artifacts / p.name)
        ledger = self.paths.run_dir / "ledger"
        if ledger.is_dir():
            shutil.copytree(ledger, artifacts / "ledger", dirs_exist_ok=True)
        journal = self.sb.run(["journalctl", "--no-pager", "-o", "short-precise"], timeout=60)
        (artifacts / "journal.txt").write_text(journal.stdout)
        shutil.copytree(self.work / "control", artifacts / "control", dirs_exist_ok=True)

    def close(self) -> None:
        if self.sb is not None:
            directory = self.paths.database.parent if hasattr(self, "paths") else None
            if directory is not None:
                sf._chattr("-i", [directory, *directory.glob("*")])
            if self.given is None:
                self.sb.close()
            else:
                self.sb.systemctl("stop", DAEMON, *self.units, timeout=60)
            self.sb = None
        for key, value in self.saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self.saved_env = {}
        if self.webhook is not None:
            self.webhook.close()
            self.webhook = None

    # canary --------------------------------------------------------------------------

    def _canary_plant(self) -> None:
        canary = self.work / "canary"
        (canary / "deep").mkdir(parents=True, exist_ok=True)
        for i in range(5):
            f = canary / f"old{i}.bin"
            f.write_bytes(os.urandom(256))
            (canary / "deep" / f"f{i}").write_text(str(i))
            os.utime(f, (time.time() - 86400 * 3, time.time() - 86400 * 3))
        old = time.time() - 86400 * 3
        temp = self.work / "disky-tmp"
        (temp / "link-to-canary").symlink_to(canary)
        (temp / "file-link").symlink_to(canary / "old0.bin")
        for target, name in ((canary, "dir-link"), (canary / "old1.bin", "file-link")):
            assert self.sb is not None
            self.sb.run(["ln", "-sfn", str(target), f"{self.disk}/cache/{name}"], check=True)
        junk = temp / "stale.tmp"
        junk.write_text("old")
        os.utime(junk, (old, old))
        self.canary = self._canary_state()

    def _canary_state(self) -> dict[str, str]:
        out: dict[str, str] = {}
        root = self.work / "canary"
        for p in sorted(root.rglob("*")):
            st = p.lstat()
            digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            out[str(p.relative_to(root))] = f"{st.st_mode:o} {st.st_mtime_ns} {digest}"
        return out

    # reading the state ----------------------------------------------------------------

    def _show(self, unit: str) -> dict[str, str]:
        assert self.sb is not None
        return self.sb.show(unit, "ActiveState", "SubState", "InvocationID", "MainPID", "Result")

    def _store(self) -> Any:
        from handlers.store import Store

        return Store.reader(self.paths.database)

    def _incidents(self, unit: str) -> list[Any]:
        store = self._store()
        if store is None:
            return []
        try:
            return list(store.incidents(unit, limit=100000))
        finally:
            store.close()

    def _all_incidents(self) -> list[tuple[Any, list[Any], list[tuple[str, str, Any, str]]]]:
        store = self._store()
        if store is None:
            return []
        try:
            out = []
            for unit in self.units:
                for inc in store.incidents(unit, limit=100000):
                    rows = store._query(
                        "SELECT level, status, delivered, detail FROM alerts WHERE incident_id = ?",
                        (inc.id,),
                    )
                    out.append((inc, list(store.attempts(inc.id)), [tuple(r) for r in rows]))
            return out
        finally:
            store.close()

    def _starts(self, unit: str) -> list[float]:
        f = self.work / "control" / unit / "starts"
        if not f.exists():
            return []
        return [float(x) for x in f.read_text().split()]

    def _scheduled(self, unit: str) -> int:
        assert self.sb is not None
        res = self.sb.run(
            [
                "journalctl",
                "--no-pager",
                "-o",
                "cat",
                f"UNIT={unit}",
                "+",
                f"USER_UNIT={unit}",
            ],
            timeout=60,
        )
        return sum("Scheduled restart job" in line for line in res.stdout.splitlines())

    def _ladder_restarts(self, unit: str) -> list[float]:
        """Wall times of the ladder's restarts: history rows and ledger entries, once each,
        remembered across checks (`unitgen reset` empties the ledger's list)."""
        walls = self.ladder_seen.setdefault(unit, set())
        store = self._store()
        if store is not None:
            try:
                rows = store._query(
                    "SELECT wall FROM attempts WHERE unit = ? AND action IN ('restart', 'resume')",
                    (unit,),
                )
                walls.update(round(float(r[0]), 3) for r in rows)
            finally:
                store.close()
        ledger = self.paths.run_dir / "ledger" / f"{unit}.json"
        try:
            data = json.loads(ledger.read_text())
            for a in data.get("attempts", []):
                # [monotonic, wall, boot id]
                if isinstance(a, list) and len(a) >= 2 and isinstance(a[1], (int, float)):
                    walls.add(round(float(a[1]), 3))
        except (OSError, ValueError):
            pass
        return sorted(walls)

    def _dependency_restarts(self) -> dict[str, list[float]]:
        """Wall times of the restarts a dependent's ladder made of the units it requires
        (level restart-with-dependencies), by restarted unit: the ``restart-dependency``
        rows, which name it. Remembered across checks, like the ladder's own."""
        store = self._store()
        if store is not None:
            try:
                rows = store._query(
                    "SELECT reason, wall FROM attempts WHERE action = 'restart-dependency'", ()
                )
                for dep, wall in rows:
                    self.dependency_seen.setdefault(str(dep), set()).add(round(float(wall), 3))
            finally:
                store.close()
        return {dep: sorted(walls) for dep, walls in self.dependency_seen.items()}

    def _given_up(self, unit: str) -> str | None:
        """The give-up's reason if the ladder left ``unit`` given up or parked (its
        budget spent: the operator's turn either way): the history's last incident, or
        the run-dir ledger when the history could not be kept."""
        incs = self._incidents(unit)
        last = incs[0] if incs else None
        if (
            last is not None
            and last.state in ("gave-up", "parked")
            and last.closed is not None
            and last.closed.wall > self.resets.get(unit, 0.0)
        ):
            return str(last.reason) if last.state == "gave-up" else f"parked: {last.reason}"
        ledger = self.paths.run_dir / "ledger" / f"{unit}.json"
        try:
            data = json.loads(ledger.read_text())
        except (OSError, ValueError):
            return None
        mark, reset = data.get("gave_up"), data.get("reset")
        if not isinstance(mark, dict):
            return None
        at = mark.get("at")
        if isinstance(reset, list) and isinstance(at, list) and reset[1] >= at[1]:
            return None
        return f"{mark.get('reason')} (ledger only)"

    def _daemon_pid(self) -> int:
        assert self.sb is not None
        return self.sb.main_pid(DAEMON)

    def _sample_daemon(self) -> None:
        assert self.sb is not None
        try:
            pid = self.sb.host_pid(self._daemon_pid())
            rss = int(Path(f"/proc/{pid}/status").read_text().split("VmRSS:")[1].split()[0])
            fds = len(os.listdir(f"/proc/{pid}/fd"))
        except Exception as exc:
            self.log(f"  (no daemon sample: {exc})")
            return
        self.report.daemon_samples.append((pid, rss, fds))

    # a step ---------------------------------------------------------------------------

    def pick(self, fault: Fault) -> str | None:
        candidates = fault.targets(self.units)
        if not candidates:
            return None
        return self.rng.choice(candidates)

    def step(self, fault: Fault, unit: str | None = None) -> None:
        """One fault, on ``unit`` or on one the seed picks; settled, then checked."""
        unit = unit or self.pick(fault)
        if unit is None:
            return
        assert self.sb is not None
        if fault.replaces_daemon:
            # The daemon's own unit allows 10 starts per 2 min; the soak stays below it.
            now = time.monotonic()
            self.daemon_kills = [t for t in self.daemon_kills if now - t < 120]
            if len(self.daemon_kills) >= 6:
                fault = FAULTS[0]
            else:
                self.daemon_kills.append(now)
        before = {u: self._show(u).get("InvocationID", "") for u in self.units}
        daemon_before = self._daemon_pid()
        self.log(f"{sum(self.report.faults.values()) + 1:4d} {fault.name} -> {unit}")
        self.report.faults[fault.name] += 1
        expect = fault.inject(self.world, unit)
        try:
            self._settle(expect, before, daemon_before, f"{fault.name} on {unit}")
        finally:
            if expect.undo is not None:
                expect.undo()
        self._check_continuous(f"after {fault.name} on {unit}")

    def _settle(
        self, expect: sf.Expect, before: dict[str, str], daemon_before: int, what: str
    ) -> None:
        assert self.sb is not None
        deadline = time.monotonic() + STEP_DEADLINE
        if expect.daemon_replaced:
            self._until(
                lambda: self._daemon_pid() not in (0, daemon_before),
                deadline,
                f"{what}: the daemon replaced",
            )
        for u in expect.restarted:
            self._until(
                lambda u=u: self._recovered_or_given_up(u, before[u]),
                deadline,
                f"{what}: {u} restarted",
            )
        self._until(
            lambda: self._show(DAEMON).get("ActiveState") == "active",
            deadline,
            f"{what}: the daemon active",
        )
        self._settle_all(deadline, what)

    def _until(self, predicate: Callable[[], bool], deadline: float, what: str) -> bool:
        try:
            sf.poll(predicate, max(0.0, deadline - time.monotonic()), what, step=0.1)
            return True
        except TimeoutError as exc:
            self.violation(str(exc))
            return False

    def _recovered_or_given_up(self, unit: str, invocation: str) -> bool:
        p = self._show(unit)
        if p.get("SubState") == "running" and p.get("InvocationID") not in ("", invocation):
            return True
        # A give-up on a failing health probe leaves the unit running, unhealthy.
        return self._given_up(unit) is not None

    def _settle_all(self, deadline: float, what: str) -> None:
        """Every unit running or given up (then re-armed), no incident open."""

        def settled() -> bool:
            ok = True
            for u in self.units:
                p = self._show(u)
                why = self._given_up(u)
                if why is not None and p.get("ActiveState") in ("failed", "active"):
                    self._rearm(u, why)
                    ok = False
                    continue
                if p.get("SubState") != "running":
                    ok = False
            if not ok:
                return False
            store = self._store()
            if store is None:
                return True
            try:
                return not [i for i in store.open_incidents() if i.unit in self.units]
            finally:
                store.close()

        self._until(settled, deadline, f"{what}: all units up, no incident open")

    def _rearm(self, unit: str, why: str) -> None:
        """An operator's answer to a give-up: `unitgen reset`, then start it."""
        assert self.sb is not None
        self.log(f"       {unit} gave up ({why}); unitgen reset + start")
        self.report.give_ups.append(f"{unit}: {why}")
        res = subprocess.run(
            [str(UNITGEN), "reset", "--user", unit],
            capture_output=True,
            text=True,
            env={**self.sb.env, "PATH": "/usr/bin:/bin"},
            check=False,
            timeout=60,
        )
        if res.returncode != 0:
            self.violation(f"unitgen reset {unit}: exit {res.returncode}: {res.stderr.strip()}")
        self.resets[unit] = time.time()
        self.manual[unit].append(time.time())
        # restart, not start: a health give-up left it running, unhealthy.
        self.sb.systemctl("restart", unit, timeout=60)

    def violation(self, text: str) -> None:
        self.log(f"  VIOLATION: {text}")
        self.report.violations.append(text)

    # invariants -------------------------------------------------------------------------

    def _check_continuous(self, when: str) -> None:
        self._check_restart_accounting(when)
        self._sample_daemon()

    def _check_restart_accounting(self, when: str) -> None:
        ladder = {u: self._ladder_restarts(u) for u in self.units}
        as_dependency = self._dependency_restarts()
        for u, role in self.units.items():
            ev = acc.StartEvidence(
                unit=u,
                starts=self._starts(u),
                by_soak=list(self.manual[u]),
                by_systemd=self._scheduled(u),
                by_ladder=ladder[u],
                as_dependency=as_dependency.get(u, []),
            )
            if role.name == "front":
                # Requires=back.service: a restart of back restarts front too. (Not the
                # restarts of back by front's own ladder: front is failed then, and a
                # propagated try-restart leaves a failed unit as it is.)
                back = "back.service"
                ev.via_required = len(ladder[back]) + len(self.manual[back])
            excess = ev.unaccounted()
            if excess:
                self.violation(f"{when}: {ev.describe()}")
                # Report each excess once: count it as accounted from now on.
                self.manual[u].extend([time.time()] * excess)
            worst = self.budget.get(u)
            if worst is None:
                continue
            window = 600.0
            n = acc.over_budget(acc.restarts_to_budget(ev, self.resets.get(u, 0.0)), worst, window)
            if n is not None:
                self.violation(
                    f"{when}: {u} restarted {n} times in {window:g} s, over its worst case {worst}"
                )
                self.resets[u] = time.time()

    def finish(self) -> None:
        assert self.sb is not None
        deadline = time.monotonic() + STEP_DEADLINE
        self._settle_all(deadline, "at the end")
        # Quiet period: long enough to see a late extra restart (back-off max, min_uptime,
        # RestartSec all fit in it); then nothing may have started.
        counts = {u: len(self._starts(u)) for u in self.units}
        quiet_end = time.monotonic() + QUIET
        sf.poll(lambda: time.monotonic() >= quiet_end, QUIET + 1, "the quiet period", step=0.2)
        for u in self.units:
            if len(self._starts(u)) != counts[u]:
                self.violation(f"{u} started again in the quiet period after the end")
        self._check_restart_accounting("at the end")
        by_dependents = sorted((u, len(w)) for u, w in self.dependency_seen.items() if w)
        if by_dependents:
            self.report.notes.append(
                "starts by a dependent's ladder (restart-dependency rows), accounted for: "
                + ", ".join(f"{u} {n}" for u, n in by_dependents)
            )
        for u in self.units:
            p = self._show(u)
            if p.get("SubState") != "running" and self._given_up(u) is None:
                self.violation(f"{u} is {p.get('ActiveState')}/{p.get('SubState')} at the end")
        for inc, _attempts, alerts in self._all_incidents():
            self.report.incidents += 1
            if inc.state == "recovered":
                self.report.recovered += 1
            elif inc.state in ("gave-up", "parked"):
                self.report.gave_up += 1
            if inc.closed is None or inc.state == "open":
                self.report.open_at_end += 1
                self.violation(f"incident {inc.id} of {inc.unit} has no end ({inc.state})")
            fired = [a for a in alerts if a[1] == "firing"]
            resolved = any(a[1] == "resolved" for a in alerts)
            failed = [a for a in alerts if a[2] == 0]
            if fired and not resolved and inc.state not in ("gave-up", "parked") and not failed:
                self.violation(
                    f"incident {inc.id} of {inc.unit} ({inc.state}): alert fired, never resolved,"
                    f" and no reason recorded: {alerts}"
                )
        if self._canary_state() != self.canary:
            now = self._canary_state()
            changed = sorted(
                k for k in set(now) | set(self.canary) if now.get(k) != self.canary.get(k)
            )
            self.violation(f"canary tree changed outside the declared roots: {changed}")
        self._check_daemon_growth()
        journal = self.sb.run(["journalctl", "--no-pager", "-o", "cat"], timeout=60).stdout
        if SECRET in journal:
            self.violation("the alert URL's token appears in the journal")

    def _check_daemon_growth(self) -> None:
        self._sample_daemon()
        by_pid: dict[int, list[tuple[int, int]]] = {}
        for pid, rss, fds in self.report.daemon_samples:
            by_pid.setdefault(pid, []).append((rss, fds))
        longest = max(by_pid.values(), key=len, default=[])
        if len(longest) < 6:
            self.report.notes.append(
                f"daemon growth: longest life had {len(longest)} samples; not judged"
            )
            return
        first, last = longest[: len(longest) // 3], longest[-(len(longest) // 3) :]
        rss0, rss1 = statistics.median(r for r, _ in first), statistics.median(r for r, _ in last)
        fd0, fd1 = max(f for _, f in first), max(f for _, f in last)
        self.report.notes.append(
            f"daemon over {len(longest)} samples: RSS {rss0:.0f} -> {rss1:.0f} kB,"
            f" fds {fd0} -> {fd1}"
        )
        if fd1 > fd0 + 4:
            self.violation(f"daemon descriptors grew: {fd0} -> {fd1}")
        if rss1 > rss0 * 1.25 + 8192:
            self.violation(f"daemon RSS grew: {rss0:.0f} -> {rss1:.0f} kB")


def run(
    seed: int,
    faults: int,
    *,
    minutes: float | None = None,
    extra_units: int = 0,
    names: list[str] | None = None,
    log: Callable[[str], None] = print,
    work: Path | None = None,
    sb: Sandbox | None = None,
    artifacts: Path | None = None,
) -> Report:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="unitgen-soak-", dir=work) as tmp:
        soak = Soak(Path(tmp), seed, extra_units=extra_units, log=log, sb=sb)
        try:
            soak.start()
            chosen = [
                f
                for f in FAULTS
                if (names is None or f.name in names) and f.name not in soak.unavailable
            ]
            for fault in _order(soak.rng, chosen, faults):
                if minutes is not None and time.monotonic() - started > minutes * 60:
                    soak.report.notes.append(f"stopped at the {minutes:g}-minute limit")
                    break
                soak.step(fault)
            soak.finish()
            if artifacts is not None and soak.report.violations:
                soak.save(artifacts)
        finally:
            soak.report.seconds = time.monotonic() - started
            soak.close()
        return soak.report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--faults", type=int, default=len(FAULTS))
    parser.add_argument("--minutes", type=float, default=None, help="stop drawing faults after")
    parser.add_argument("--units", type=int, default=0, help="extra plain units beyond the mix")
    parser.add_argument("--only", action="append", help="a fault class (repeatable)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--artifacts", type=Path, help="on a violation, save history+journal here")
    args = parser.parse_args(argv)
    report = run(
        args.seed,
        args.faults,
        minutes=args.minutes,
        extra_units=args.units,
        names=args.only,
        artifacts=args.artifacts,
    )
    if args.json:
        print(
            json.dumps(
                {
                    "seed": report.seed,
                    "faults": dict(report.faults),
                    "incidents": report.incidents,
                    "recovered": report.recovered,
                    "gave_up": report.gave_up,
                    "give_ups": report.give_ups,
                    "violations": report.violations,
                    "seconds": round(report.seconds, 1),
                    "notes": report.notes,
                }
            )
        )
    else:
        print(report.table())
    return 1 if report.violations else 0


if __name__ == "__main__":
    sys.exit(main())
