"""The restart budget when the history database cannot be kept, on a real user manager.

A rendered unit that always exits 1 (Restart=on-failure, a start limit of 3,
OnFailure= the recovery unit; max_attempts 3, min_uptime 2s) is left alone
while its state database is on a full tmpfs, read-only, corrupted after a
give-up, or while the listener daemon is restarted in the middle. In each the
process starts are counted (the service appends a line per start) and must
stay within the worst case ``unitgen check`` prints for the unit
(:func:`unitgen.commands.check.worst_case_of`): restarts = starts - 1.

Observation: not a fixed 60 s. The ladder window and the start-limit interval
are 2 min, so the whole run lies in one window and the bound applies to all of
it; the test watches until the ladder has given up (the run-dir ledger says
so) and then for a grace period long enough for one more systemd burst and
the longest back-off, stopping early once the bound is exceeded (which is how
the old code fails: without a count it restarted for ever, ~2 starts per s).
That keeps each test to ~10-20 s instead of 60.

The mounts (tmpfs, read-only bind) are made inside the sandbox's mount
namespace, so only the manager and its units see them.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from receivers import Receiver

from unitgen.paths import Scope
from unitgen.sandbox import Sandbox

UNITGEN = str(Path(sys.executable).with_name("unitgen"))
GRACE = 5.0  # > one burst at RestartSec=100ms + a recovery unit start + the 1 s back-off cap
DEADLINE = 90.0


def _spec(count: Path, hook_url: Path) -> str:
    return f"""
[defaults]
alerts = ["hook"]

[alert.hook]
type = "webhook"
url_file = "{hook_url}"
timeout = "2s"
retries = 0

[service.flaky]
description = "always fails"
exec = ["/bin/sh", "-c", "echo x >> {count}; exit 1"]
hardening = "off"
restart = {{ policy = "on-failure", burst = 3, interval = "2min" }}

[service.flaky.recovery]
max_attempts = 3
min_uptime = "2s"
window = "2min"
start_timeout = "10s"
backoff = {{ base = "200ms", max = "1s", jitter = 0.0 }}
"""


@dataclasses.dataclass
class Setup:
    sb: Sandbox
    tmp: Path
    unit: str
    units: dict[str, str]
    bound: int  # worst-case restarts per window, as `unitgen check` computes it
    window: float
    count: Path
    env: dict[str, str]

    @property
    def state(self) -> Path:
        return self.tmp / "state"

    @property
    def ledger(self) -> Path:
        return self.tmp / "run" / "ledger" / f"{self.unit}.json"

    def starts(self) -> int:
        try:
            return len(self.count.read_text().splitlines())
        except FileNotFoundError:
            return 0

    def gave_up(self) -> bool:
        try:
            return json.loads(self.ledger.read_text()).get("gave_up") is not None
        except (FileNotFoundError, ValueError):
            return False

    def inside(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return self.sb.run(list(argv), env=self.env, check=True)

    def status(self) -> tuple[dict[str, object], str]:
        res = self.sb.run([UNITGEN, "status", "--user", "--json", self.unit], env=self.env)
        assert res.returncode == 0, res.stderr
        text = self.sb.run([UNITGEN, "status", "--user", self.unit], env=self.env)
        return json.loads(res.stdout)[0], text.stdout


def _setup(sb: Sandbox, tmp: Path, hook_url: Path) -> Setup:
    from unitgen.commands.check import worst_case_of
    from unitgen.render import RenderOptions, render, render_policies
    from unitgen.specfile import parse_spec

    count = tmp / "starts"
    spec = parse_spec(_spec(count, hook_url), str(tmp / "spec.toml"))
    service = spec.services["flaky"]
    budget = worst_case_of(service)
    env = {
        "UNITGEN_STATE_DIR": str(tmp / "state"),
        "UNITGEN_RUN_DIR": str(tmp / "run"),
        "UNITGEN_POLICY_DIR": str(tmp / "policy"),
        "DBUS_SESSION_BUS_ADDRESS": sb.env["DBUS_SESSION_BUS_ADDRESS"],
    }
    options = RenderOptions.for_scope(
        Scope.USER, 252, unitgen_bin=UNITGEN, policy_dir=tmp / "policy"
    )
    options = dataclasses.replace(
        options, recover_env=tuple((k, v) for k, v in env.items() if k != "UNITGEN_POLICY_DIR")
    )
    units = render(spec, options)
    (tmp / "policy").mkdir(parents=True, exist_ok=True)
    for name, text in render_policies(spec, options).items():
        (tmp / "policy" / name).write_text(text)
    (tmp / "state").mkdir()
    return Setup(sb, tmp, service.unit, units, budget.total, budget.window, count, env)


def _hook(tmp: Path, receiver: Receiver) -> Path:
    url = tmp / "hook.url"
    url.write_text(receiver.url("/alert") + "\n")
    url.chmod(0o600)
    return url


def _observe(
    s: Setup, started: float, until: Callable[[], bool] | None = None, limit: int | None = None
) -> int:
    """Starts once ``until`` (the ladder gave up) held and nothing moved for GRACE, or
    as soon as they are over ``limit`` (the worst case: restarts = starts - 1)."""
    deadline = time.monotonic() + DEADLINE
    stop = until if until is not None else s.gave_up
    most = limit if limit is not None else s.bound + 1
    while time.monotonic() < deadline and s.starts() <= most:
        if stop():
            n = s.starts()
            quiet_until = time.monotonic() + GRACE
            while time.monotonic() < quiet_until and s.starts() == n:
                time.sleep(0.05)
            if s.starts() == n:
                break
        time.sleep(0.05)
    n = s.starts()
    # The bound is per ladder window: the observation must fit in one.
    assert time.monotonic() - started < s.window, "observation outlived the ladder window"
    return n


def _assert_within(s: Setup, starts: int, gave_up: Callable[[], bool] | None = None) -> None:
    assert starts - 1 <= s.bound, (
        f"{starts} starts: {starts - 1} restarts, worst case per window is {s.bound}"
    )
    assert (gave_up or s.gave_up)(), "the ladder never recorded a give-up"


def _gap_reported(s: Setup, receiver: Receiver, fragment: str) -> None:
    row, text = s.status()
    assert str(row["state"]).startswith("gave-up"), row
    assert isinstance(row["history_degraded_since"], float), row
    assert fragment in str(row["history_degraded_reason"]), row
    assert "history degraded since" in text, text
    journal = s.sb.journal(f"unitgen-recover@{s.unit}.service", lines=400)
    assert journal.count("recovery history degraded:") == 1, journal
    bodies = [json.loads(r.body) for r in receiver.requests]
    gap_alerts = [b for b in bodies if "recovery history not kept" in b["summary"]]
    assert len(gap_alerts) == 1, bodies
    assert sum(b["level"] == "alert-and-stop" for b in bodies) == 1, bodies


def _run_degraded(sb: Sandbox, tmp: Path, prepare: list[list[str]], fragment: str) -> None:
    with Receiver() as receiver:
        s = _setup(sb, tmp, _hook(tmp, receiver))
        for argv in prepare:
            s.inside(*argv)
        sb.install_units(s.units)
        started = time.monotonic()
        sb.systemctl("start", "--no-block", s.unit)
        starts = _observe(s, started)
        _assert_within(s, starts)
        assert json.loads(s.ledger.read_text())["gave_up"]["reason"] == "budget"
        receiver.wait_for(1, timeout=20)
        _gap_reported(s, receiver, fragment)


def test_full_state_filesystem_keeps_the_budget(
    fresh_user_sandbox: Sandbox, tmp_path: Path
) -> None:
    state = str(tmp_path / "state")
    _run_degraded(
        fresh_user_sandbox,
        tmp_path,
        [
            ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", state],
            ["sh", "-c", f"head -c 1000000 /dev/zero > {state}/fill || true"],
        ],
        "",
    )


def test_read_only_state_directory_keeps_the_budget(
    fresh_user_sandbox: Sandbox, tmp_path: Path
) -> None:
    state = str(tmp_path / "state")
    _run_degraded(
        fresh_user_sandbox,
        tmp_path,
        [
            ["mount", "--bind", state, state],
            ["mount", "-o", "remount,bind,ro", state],
        ],
        "",
    )


def test_corrupted_database_after_a_give_up_stays_given_up(
    fresh_user_sandbox: Sandbox, tmp_path: Path
) -> None:
    sb = fresh_user_sandbox
    with Receiver() as receiver:
        s = _setup(sb, tmp_path, _hook(tmp_path, receiver))
        sb.install_units(s.units)
        started = time.monotonic()
        sb.systemctl("start", "--no-block", s.unit)
        # The database is healthy here: its give-up is the one to wait for.
        first = _observe(s, started, until=lambda: _db_gave_up(s))
        _assert_within(s, first, lambda: _db_gave_up(s))
        assert s.gave_up(), "the ledger did not record the give-up"
        # The database goes bad while the unit is given up ...
        db = s.state / "history.sqlite3"
        assert db.exists()
        for suffix in ("-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
        db.write_bytes(b"this is not a database\0" * 512)
        # ... and the unit fails again (an operator starts it): OnFailure= runs the ladder.
        before = s.starts()
        sb.systemctl("reset-failed", s.unit)
        sb.systemctl("start", "--no-block", s.unit)
        _wait(lambda: s.starts() > before, 20, "the operator's start")
        second = _observe(s, started, until=lambda: _recover_ran_after(s, before), limit=before + 3)
        # Only systemd's own burst after the operator's reset-failed and start (3 starts,
        # which the worst case does not model): the ladder restarted nothing.
        assert second - before == 3, (before, second)
        assert (second - 3) - 1 <= s.bound, (second, s.bound)
        assert list(s.state.glob("history.sqlite3.corrupt-*")), "the corrupt file was kept"


def _db_gave_up(s: Setup) -> bool:
    from handlers.store import Store

    store = Store.open(s.state / "history.sqlite3")
    try:
        last = store.last_incident(s.unit)
        return last is not None and last.state == "gave-up"
    finally:
        store.close()


def _recover_ran_after(s: Setup, before: int) -> bool:
    # systemd's burst after the operator's start is over and the OnFailure= run it
    # triggered has finished.
    props = s.sb.show(f"unitgen-recover@{s.unit}.service", "ActiveState")
    return s.starts() >= before + 3 and props.get("ActiveState") in ("inactive", "failed")


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _daemon_unit(s: Setup) -> str:
    env = "".join(f"Environment={k}={v}\n" for k, v in s.env.items())
    return f"[Service]\n{env}ExecStart={UNITGEN} watch --user --no-health\n"


def test_daemon_restarted_in_the_middle_keeps_the_budget(
    fresh_user_sandbox: Sandbox, tmp_path: Path
) -> None:
    sb = fresh_user_sandbox
    with Receiver() as receiver:
        s = _setup(sb, tmp_path, _hook(tmp_path, receiver))
        state = str(s.state)
        s.inside("mount", "--bind", state, state)
        s.inside("mount", "-o", "remount,bind,ro", state)
        daemon = "ugwatch.service"
        sb.install_units({**s.units, daemon: _daemon_unit(s)})
        sb.systemctl("start", daemon, check=True)
        _wait(lambda: _daemon_ready(sb), 30, "the daemon to own org.unitgen.Recovery1")
        started = time.monotonic()
        sb.systemctl("start", "--no-block", s.unit)
        # Two ladder restarts: systemd's first burst of 3, then 3 starts per ladder restart.
        _wait(lambda: s.starts() >= 3 + 2 * 3, 60, "two ladder attempts")
        # Its memory of the count goes with it; the ledger's stays.
        sb.systemctl("restart", daemon, check=True)
        starts = _observe(s, started)
        _assert_within(s, starts)
        sb.systemctl("stop", daemon)


def _daemon_ready(sb: Sandbox) -> bool:
    res = subprocess.run(
        ["busctl", f"--address={sb.bus_address}", "call", "org.unitgen.Recovery1",
         "/org/unitgen/Recovery1", "org.unitgen.Recovery1", "Status"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    return res.returncode == 0


def test_no_count_anywhere_fails_safe(fresh_user_sandbox: Sandbox, tmp_path: Path) -> None:
    """State and run directories both on full filesystems: no ladder restart at all.

    (The run directory still takes the empty lock files: a full tmpfs has inodes left.)
    """
    sb = fresh_user_sandbox
    with Receiver() as receiver:
        s = _setup(sb, tmp_path, _hook(tmp_path, receiver))
        run = tmp_path / "run"
        run.mkdir()
        for d in (str(s.state), str(run)):
            s.inside("mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", d)
            s.inside("sh", "-c", f"head -c 1000000 /dev/zero > {d}/fill || true")
        sb.install_units(s.units)
        sb.systemctl("start", "--no-block", s.unit)
        recover = f"unitgen-recover@{s.unit}.service"
        _wait(
            lambda: "uncounted" in sb.journal(recover, lines=200),
            60,
            "the recovery unit to give up",
        )
        n = s.starts()
        assert n == 3, n  # systemd's own burst; the ladder restarted nothing
        quiet_until = time.monotonic() + GRACE
        while time.monotonic() < quiet_until:
            assert s.starts() == n
            time.sleep(0.05)
        journal = sb.journal(recover, lines=200)
        assert "no restart count can be kept" in journal, journal
        bodies = [json.loads(r.body) for r in receiver.wait_for(1, timeout=20)]
        assert len(bodies) == 1 and bodies[0]["level"] == "alert-and-stop", bodies
        assert "uncounted" in bodies[0]["summary"], bodies
