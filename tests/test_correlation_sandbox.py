"""Incident groups on a real user manager: 200 units that need one failing service.

The database-like service holds the write end of a FIFO; each dependent blocks
reading it, so when the service is killed every dependent fails at the same
moment (EOF, exit 3), as clients of a dead database do. The listener runs
in-process with the real ladder; alerts go to a real HTTP receiver and to a
real Alertmanager (skipped without it, failed under CI=true).
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from receivers import Receiver
from test_alerts_alertmanager import alertmanager  # noqa: F401 -- the fixture

from handlers.alerts import Alerter, AlertTarget
from handlers.bus import SystemdBus
from handlers.events import Event, EventKind
from handlers.listener import Listener
from handlers.recovery import RecoveryEngine
from unitgen.paths import Paths, Scope, paths_for
from unitgen.sandbox import Sandbox

pytestmark = [pytest.mark.sandbox, pytest.mark.timeout(240)]

DB = "db.service"


class Sink:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def emit(self, event: Event) -> None:
        self.events.append(event)

    def of(self, kind: EventKind) -> list[Event]:
        return [e for e in self.events if e.kind is kind]


def _units(fifo: Path) -> dict[str, str]:
    return {
        # exec keeps fd 3 (the FIFO's write end) in the main process: killing it is
        # the database dying.
        DB: f"[Service]\nExecStart=/bin/sh -c 'exec 3<>{fifo}; exec /bin/sleep infinity'\n",
        "app@.service": (
            f"[Unit]\nRequires={DB}\nAfter={DB}\nStartLimitBurst=1000\n"
            f"[Service]\nExecStart=/bin/sh -c 'read x < {fifo}; exit 3'\n"
        ),
        "other@.service": "[Service]\nExecStart=/bin/sleep infinity\n",
    }


def _policies(paths: Paths) -> None:
    paths.policy_dir.mkdir(parents=True, exist_ok=True)
    for unit in (DB, "app@.service", "other@.service"):
        (paths.policy_dir / f"{unit}.json").write_text(
            json.dumps({"unit": unit, "version": 1, "recovery": {"min_uptime": 0.0}})
        )


async def _until(predicate: Callable[[], bool], timeout: float) -> None:  # noqa: ASYNC109
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


def _active_count(sb: Sandbox, pattern: str) -> int:
    res = sb.systemctl("list-units", "--no-legend", "--plain", "--state=active", pattern)
    return len([line for line in res.stdout.splitlines() if line.strip()])


def _restarts(engine: RecoveryEngine, unit: str) -> list[float]:
    """Monotonic times of the ladder's restarts of ``unit`` (recorded before RestartUnit)."""
    return [
        a.at.mono
        for inc in engine.store.incidents(unit, 20)
        for a in engine.store.attempts(inc.id)
        if a.action == "restart"
    ]


Check = Callable[[RecoveryEngine, Sink, Receiver, "AlertmanagerWatch", dict[str, float]], None]


class AlertmanagerWatch:
    """Polls a real Alertmanager in a thread: the distinct unitgen alerts it ever held."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.seen: dict[str, dict[str, str]] = {}  # fingerprint -> labels
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(0.05):
            try:
                with urllib.request.urlopen(f"{self.base}/api/v2/alerts", timeout=2) as r:
                    alerts: list[dict[str, Any]] = json.load(r)
            except OSError:
                continue
            for a in alerts:
                if a["labels"].get("alertname") == "UnitgenRecovery":
                    self.seen[a["fingerprint"]] = a["labels"]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


async def _run(
    sb: Sandbox,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    alertmanager_url: str,
    dependents: int,
    unrelated: int,
    check: Check,
) -> None:
    """Kill the service and the unrelated units at once; ``check`` what followed."""
    for key, value in sb.env.items():
        monkeypatch.setenv(key, value)
    paths = paths_for(Scope.USER)
    _policies(paths)
    fifo = tmp_path / "db.fifo"
    os.mkfifo(fifo)
    sb.install_units(_units(fifo))
    apps = [f"app@{i}.service" for i in range(dependents)]
    others = [f"other@{i}.service" for i in range(unrelated)]
    sb.systemctl("start", DB, check=True)
    sb.systemctl("start", *apps, *others, check=True, timeout=120)
    assert _active_count(sb, "app@*") == dependents

    receiver = Receiver()
    targets = [
        AlertTarget.from_mapping({"name": "hook", "type": "webhook", "url_env": "HOOK"}),
        AlertTarget.from_mapping({"name": "am", "type": "alertmanager", "url_env": "AM"}),
    ]
    alerter = Alerter(targets, env={"HOOK": receiver.url("/hook"), "AM": alertmanager_url})
    watch = AlertmanagerWatch(alertmanager_url)
    sink = Sink()
    engines: list[RecoveryEngine] = []

    def factory(bus: SystemdBus) -> RecoveryEngine:
        engines.append(
            RecoveryEngine(
                bus,
                paths,
                events=sink,
                alerter_factory=lambda policy: alerter,
                read_journal_lines=False,
                correlate=True,
            )
        )
        return engines[0]

    listener = Listener(paths, factory, address=sb.bus_address, library="fast", health=False)
    task = asyncio.create_task(listener.run())
    failed_at: dict[str, float] = {}
    try:
        await asyncio.wait_for(listener.ready.wait(), 30)
        engine = engines[0]
        sb.kill_main(DB)
        for unit in others:
            sb.kill_main(unit)
        total = 1 + dependents + unrelated
        await _until(lambda: len(sink.of(EventKind.RECOVERED)) >= total, 150)
        await _until(lambda: bool(sink.of(EventKind.GROUP_CLOSED)), 30)
        await _until(lambda: len(receiver.requests) >= 2, 15)
        for unit in [DB, *others]:
            mono = sb.show(unit, "InactiveEnterTimestampMonotonic")
            failed_at[unit] = int(mono["InactiveEnterTimestampMonotonic"]) / 1e6
        failed_at["db-active"] = (
            int(sb.show(DB, "ActiveEnterTimestampMonotonic")["ActiveEnterTimestampMonotonic"]) / 1e6
        )
        watch.stop()
        # Before the listener closes the engine (and its history) on stop.
        check(engine, sink, receiver, watch, failed_at)
    finally:
        listener.stop()
        await asyncio.wait_for(task, 30)
        watch.stop()
        receiver.close()


@pytest.mark.asyncio
async def test_200_dependents_of_one_failed_service_are_one_incident(
    fresh_user_sandbox: Sandbox,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    alertmanager: str,  # noqa: F811
) -> None:
    sb = fresh_user_sandbox

    def check(
        engine: RecoveryEngine,
        sink: Sink,
        receiver: Receiver,
        watch: AlertmanagerWatch,
        at: dict[str, float],
    ) -> None:
        apps = [f"app@{i}.service" for i in range(200)]
        # exactly one group, naming the service and every dependent
        (opened,) = sink.of(EventKind.GROUP_OPENED)
        (closed,) = sink.of(EventKind.GROUP_CLOSED)
        assert opened.unit == DB and opened.fields["cause"] == f"dependency {DB}"
        assert closed.fields["member_count"] == 201 and closed.fields["state"] == "recovered"
        # the dependency restarted first, once; no dependent before it was active again
        db_restarts = _restarts(engine, DB)
        assert len(db_restarts) == 1
        app_restarts = {u: _restarts(engine, u) for u in apps}
        assert all(len(r) <= 1 for r in app_restarts.values()), app_restarts
        early = [u for u, r in app_restarts.items() if r and r[0] < at["db-active"]]
        assert early == []
        assert min(r[0] for r in app_restarts.values() if r) > db_restarts[0]
        # restarts issued: the service and each dependent that did not come back by itself
        assert 1 + sum(len(r) for r in app_restarts.values()) == 201
        # one alert at the webhook (and its resolution), one at Alertmanager
        bodies = [json.loads(r.body) for r in receiver.requests]
        assert [b["status"] for b in bodies] == ["firing", "resolved"], bodies
        assert bodies[0]["unit"] == DB and len(bodies[0]["members"]) == 201
        assert bodies[0]["labels"]["cause"] == f"dependency {DB}"
        assert len(watch.seen) == 1, watch.seen
        (labels,) = watch.seen.values()
        assert labels["group"] == opened.incident_id and labels["cause_kind"] == "dependency"
        # every unit active again; every member's history names the group
        assert _active_count(sb, "app@*") == 200
        assert sb.show(DB, "ActiveState")["ActiveState"] == "active"
        assert opened.incident_id in str(engine.status("app@7.service")[0]["group"])

    await _run(sb, monkeypatch, tmp_path, alertmanager, dependents=200, unrelated=0, check=check)


@pytest.mark.asyncio
async def test_unrelated_failures_at_the_same_moment_recover_outside_the_group(
    fresh_user_sandbox: Sandbox,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    alertmanager: str,  # noqa: F811
) -> None:
    sb = fresh_user_sandbox

    def check(
        engine: RecoveryEngine,
        sink: Sink,
        receiver: Receiver,
        _watch: AlertmanagerWatch,
        at: dict[str, float],
    ) -> None:
        others = [f"other@{i}.service" for i in range(5)]
        assert len(sink.of(EventKind.GROUP_OPENED)) == 1
        (closed,) = sink.of(EventKind.GROUP_CLOSED)
        assert closed.fields["member_count"] == 101
        assert not any(o in str(closed.fields["members"]) for o in others)
        for unit in others:
            assert engine.status(unit)[0]["group"] == ""
        # each unrelated unit restarted once, at single-failure speed: within a
        # generous bound on this loaded machine. (Not compared with the group's
        # restarts: the test kills the unrelated units one by one after the
        # database, so on a slow machine the group can be done before they fail.)
        db_first = _restarts(engine, DB)[0]
        latencies = {}
        for unit in others:
            (restart,) = _restarts(engine, unit)
            latencies[unit] = restart - at[unit]
        assert max(latencies.values()) < 2.0, latencies
        app_restarts = sorted(r for i in range(100) for r in _restarts(engine, f"app@{i}.service"))
        assert db_first < app_restarts[0]
        # one group alert, and one alert for each unrelated unit (their own incidents)
        bodies = [json.loads(r.body) for r in receiver.requests]
        firing = [b for b in bodies if b["status"] == "firing"]
        assert sorted(b["unit"] for b in firing) == sorted([DB, *others]), firing
        assert [b.get("labels", {}).get("group") is not None for b in firing].count(True) == 1
        assert _active_count(sb, "other@*") == 5 and _active_count(sb, "app@*") == 100

    await _run(sb, monkeypatch, tmp_path, alertmanager, dependents=100, unrelated=5, check=check)
