"""The SQLite history: persistence across processes, corruption, and a disk that says no."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from handlers.store import Stamp, Store

NOW = Stamp(1000.0, 1_700_000_000.0, "boot-a")


def _incident(
    store: Store, unit: str = "api.service", *, invocation_id: str = "inv1", handled: bool = False
) -> str:
    return store.open_incident(
        unit,
        source="onfailure",
        invocation_id=invocation_id,
        classification="exit-code",
        level=1,
        at=NOW,
        handled_at=NOW.wall if handled else None,
    )


def test_wal_mode_and_round_trip(tmp_path: Path) -> None:
    db = tmp_path / "state" / "history.sqlite3"
    store = Store.open(db)
    assert store.persistent and store.note is None
    inc = _incident(store)
    store.record_attempt(inc, "api.service", at=NOW, level=1, action="restart", result="started")
    store.close()
    mode = sqlite3.connect(db).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    again = Store.open(db)
    row = again.incident(inc)
    assert row is not None and row.state == "open" and row.classification == "exit-code"
    assert [a.action for a in again.attempts(inc)] == ["restart"]
    again.close()


def test_counts_survive_a_killed_writer(tmp_path: Path) -> None:
    """A process that records an attempt and dies by SIGKILL leaves the attempt counted."""
    db = tmp_path / "history.sqlite3"
    code = f"""
import os, signal
from handlers.store import Stamp, Store
from pathlib import Path
s = Store.open(Path({str(db)!r}))
at = Stamp({NOW.mono}, {NOW.wall}, {NOW.boot!r})
i = s.open_incident("api.service", source="listener", invocation_id="x", classification="signal",
                    level=1, at=at)
s.record_attempt(i, "api.service", at=at, level=1, action="restart", result="started")
os.kill(os.getpid(), signal.SIGKILL)
"""
    proc = subprocess.run([sys.executable, "-c", code], check=False)
    assert proc.returncode == -9
    store = Store.open(db)
    assert store.restart_times("api.service", Stamp(1010.0, NOW.wall + 10, "boot-a"), 600) == [
        1000.0
    ]
    last = store.last_incident("api.service")
    assert last is not None and last.state == "open"
    store.close()


def test_other_boot_uses_wall_clock_age(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "h.sqlite3")
    inc = _incident(store)
    store.record_attempt(inc, "api.service", at=NOW, level=1, action="restart", result="ok")
    later = Stamp(5.0, NOW.wall + 100.0, "boot-b")  # rebooted: monotonic restarted
    assert store.restart_times("api.service", later, 600) == [pytest.approx(-95.0)]
    store.close()


def test_corrupt_database_is_moved_aside_and_recreated(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "history.sqlite3"
    db.write_bytes(b"this is not a database at all" * 200)
    store = Store.open(db)
    assert store.persistent
    assert store.note is not None and "moved aside" in store.note
    asides = list(tmp_path.glob("history.sqlite3.corrupt-*"))
    assert len(asides) == 1 and asides[0].read_bytes().startswith(b"this is not")
    assert "corrupt" in caplog.text
    _incident(store)  # usable
    store.close()


def test_read_only_directory_degrades_to_memory(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        # root ignores directory permissions; a read-only bind mount needs a namespace,
        # which the sandbox test covers. Here: a path whose parent is a regular file.
        (tmp_path / "file").write_text("x")
        db = tmp_path / "file" / "history.sqlite3"
    else:
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        db = ro / "history.sqlite3"
    store = Store.open(db)
    assert not store.persistent
    assert store.note is not None and store.note.startswith("history not kept")
    inc = _incident(store)
    store.record_attempt(inc, "api.service", at=NOW, level=1, action="restart", result="ok")
    assert len(store.restart_times("api.service", NOW, 600)) == 1
    store.close()


def test_write_failure_mid_run_switches_to_memory(tmp_path: Path) -> None:
    db = tmp_path / "history.sqlite3"
    store = Store.open(db)
    _incident(store)

    class Full:
        def execute(self, *a: object) -> None:
            raise sqlite3.OperationalError("database or disk is full")

        def close(self) -> None:
            pass

    store._conn = Full()  # type: ignore[assignment]
    inc = _incident(store)  # retried on the in-memory stand-in
    assert not store.persistent
    assert store.note is not None and "disk is full" in store.note
    assert store.incident(inc) is not None
    store.close()


def test_alert_claims_are_once_per_incident_level_status(tmp_path: Path) -> None:
    a = Store.open(tmp_path / "h.sqlite3")
    b = Store.open(tmp_path / "h.sqlite3")  # a second process, as far as SQLite cares
    assert a.claim_alert("i1", "restart", "firing", 1.0)
    assert not b.claim_alert("i1", "restart", "firing", 2.0)
    assert b.claim_alert("i1", "cleanup-then-restart", "firing", 2.0)
    assert b.claim_alert("i1", "", "resolved", 3.0)
    assert not a.claim_alert("i1", "", "resolved", 4.0)
    a.close()
    b.close()


def test_summary_mttr_and_success_rate(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "h.sqlite3")
    for i, (state, took) in enumerate([("recovered", 2.0), ("recovered", 4.0), ("gave-up", 9.0)]):
        at = Stamp(NOW.mono + i * 100, NOW.wall + i * 100, NOW.boot)
        inc = store.open_incident(
            "api.service",
            source="onfailure",
            invocation_id=str(i),
            classification="signal",
            level=1,
            at=at,
        )
        end = Stamp(at.mono + took, at.wall + took, at.boot)
        store.close_incident(inc, state=state, reason=state, at=end)
    s = store.summary("api.service")
    assert s.incidents == 3 and s.recovered == 2 and s.gave_up == 1
    assert s.mttr == pytest.approx(3.0)
    assert s.success_rate == pytest.approx(2 / 3)
    assert s.state == "gave-up"
    assert store.units() == ["api.service"]
    store.close()


def test_handled_invocation_dedupes(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "h.sqlite3")
    store.record_trigger(
        "inc", "a.service", wall=1.0, source="listener", invocation_id="abc", disposition="handled"
    )
    assert store.handled_invocation("a.service", "abc") == "inc"
    assert store.handled_invocation("a.service", "") is None
    assert store.handled_invocation("b.service", "abc") is None
    store.close()


def test_snapshot_reads_but_never_writes(tmp_path: Path) -> None:
    db = tmp_path / "h.sqlite3"
    real = Store.open(db)
    _incident(real)
    real.close()
    before = db.read_bytes()
    snap = Store.snapshot(db)
    assert snap.last_incident("api.service") is not None
    _incident(snap, "other.service")
    snap.close()
    again = Store.open(db)
    assert again.last_incident("other.service") is None
    again.close()
    assert before  # the file existed and was read


def test_commits_never_checkpoint_the_engine_does(tmp_path: Path) -> None:
    """The automatic checkpoint (an fsync inside some commit) is only a far backstop."""
    from handlers.store import AUTOCHECKPOINT_PAGES, CHECKPOINT_COMMITS

    path = tmp_path / "h.sqlite3"
    store = Store.open(path)
    assert store._conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == AUTOCHECKPOINT_PAGES
    before = path.stat().st_size
    for i in range(CHECKPOINT_COMMITS):
        store.set_reset(f"u{i}.service", NOW)
    assert store.checkpoint_due()
    # Every page is still in the log: no commit copied any into the database file.
    assert path.stat().st_size == before
    store.checkpoint()
    assert path.stat().st_size > before
    probe = sqlite3.connect(path)
    try:
        assert probe.execute("SELECT count(*) FROM resets").fetchone() == (CHECKPOINT_COMMITS,)
    finally:
        probe.close()
    store.close()
    memory = Store.in_memory()
    assert not memory.checkpoint_due()  # nothing to checkpoint without a file
    memory.close()


def test_close_writes_the_last_steps_and_the_restart_result_in_one_transaction(
    tmp_path: Path,
) -> None:
    from handlers.store import AttemptRow

    db = tmp_path / "history.sqlite3"
    store = Store.open(db)
    inc = _incident(store, invocation_id="inv9", handled=True)
    assert store.handled_invocation("api.service", "inv9") == inc  # the trigger came along
    row = AttemptRow(inc, "api.service", NOW, 1, "restart", "started", "attempt 1", 0.0)
    store.record_attempts([row])
    commits = store.commits
    verify = AttemptRow(inc, "api.service", NOW, 1, "verify", "ok", "active", 0.25)
    store.close_incident(
        inc,
        state="recovered",
        reason="active again",
        at=NOW,
        rows=[verify],
        last_restart=("ok", "active (attempt 1)", 0.004),
    )
    assert store.commits == commits + 1
    store.close()
    again = Store.open(db)
    closed = again.incident(inc)
    assert closed is not None and closed.state == "recovered"
    attempts = again.attempts(inc)
    assert [(a.action, a.result, a.duration) for a in attempts] == [
        ("restart", "ok", 0.004),
        ("verify", "ok", 0.25),
    ]
    again.close()


def test_a_failing_transaction_is_replayed_whole_on_the_stand_in(tmp_path: Path) -> None:
    db = tmp_path / "history.sqlite3"
    store = Store.open(db)
    real = store._conn
    seen: list[str] = []

    class FailsOnTrigger:
        def execute(self, sql: str, *a: object) -> object:
            return real.execute(sql, *a)

        def executemany(self, sql: str, params: object) -> object:
            seen.append(sql.split()[2].split("(")[0])
            if "triggers" in sql:
                raise sqlite3.OperationalError("database or disk is full")
            return real.executemany(sql, params)  # type: ignore[arg-type]

        def close(self) -> None:
            real.close()

    store._conn = FailsOnTrigger()  # type: ignore[assignment]
    inc = _incident(store, invocation_id="inv3", handled=True)
    assert seen == ["incidents", "triggers"]  # the incident row went in, then rolled back
    assert not store.persistent and store.note is not None
    # Both rows, on the stand-in: nothing half-written.
    assert store.incident(inc) is not None
    assert store.handled_invocation("api.service", "inv3") == inc
    store.close()
    # ... and the file kept neither (the rollback), not an incident without its trigger.
    check = sqlite3.connect(db)
    try:
        assert check.execute("SELECT count(*) FROM incidents").fetchone()[0] == 0
    finally:
        check.close()


def test_two_processes_creating_the_database_at_once_both_keep_history(tmp_path: Path) -> None:
    """The daemon and an OnFailure= oneshot may open a database that does not exist yet
    at the same moment; the loser of the WAL switch used to fall back to memory (15 of
    100 rounds here), and its incident was then invisible to the other process."""
    import threading

    for round_ in range(100):
        db = tmp_path / str(round_) / "history.sqlite3"
        start = threading.Barrier(2)
        stores: list[Store] = []

        def open_it(
            db: Path = db, start: threading.Barrier = start, stores: list[Store] = stores
        ) -> None:
            start.wait()
            stores.append(Store.open(db))

        threads = [threading.Thread(target=open_it) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        try:
            assert [s.persistent for s in stores] == [True, True], [s.note for s in stores]
        finally:
            for s in stores:
                s.close()
        check = sqlite3.connect(db)
        try:
            assert check.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        finally:
            check.close()
