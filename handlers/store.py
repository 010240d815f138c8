"""The incident history: SQLite in WAL mode at ``Paths.database``.

Two processes use it at once (the OnFailure= unit and the listener), so every
write is a short autocommit statement and readers never block writers (WAL).
It is also the memory that survives a ``kill -9`` of the listener: restart
attempts are counted from here, never from process state.

Times are stored three ways: wall clock (for people), the monotonic clock
and the boot id. Windows and back-off are computed on the monotonic clock,
which is system-wide and keeps counting across process restarts; a row from
an earlier boot falls back to its wall-clock age.

Failure modes, none of which stops recovery:

* A corrupt file (``file is not a database``, ``malformed``) is moved aside
  as ``history.sqlite3.corrupt-<time>`` with its -wal/-shm, recreated, and
  that is logged and reported in :attr:`Store.note`.
* A read-only directory or a full disk: the store switches to an in-memory
  database with the same schema, so the ladder's arithmetic still works for
  this process, and :attr:`Store.note` says history is not being kept.

Checkpoints: SQLite's automatic WAL checkpoint runs inside whichever commit
crosses its threshold and fsyncs the database, so about one recovery in a
hundred paid that fsync before its RestartUnit (docs/recovery.md). The threshold is set far
higher, as a backstop, and the engine calls :meth:`Store.checkpoint` in a
thread after a run instead (a PASSIVE checkpoint on a connection of its own
never blocks the writer); a short-lived process checkpoints when it closes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from unitgen.errors import StateError

__all__ = ["AttemptRow", "IncidentRow", "Stamp", "Store", "UnitSummary", "boot_id"]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS incidents(
    id TEXT PRIMARY KEY,
    unit TEXT NOT NULL,
    source TEXT NOT NULL,
    invocation_id TEXT NOT NULL,
    classification TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT NOT NULL,
    level INTEGER NOT NULL,
    opened_wall REAL NOT NULL,
    opened_mono REAL NOT NULL,
    opened_boot TEXT NOT NULL,
    closed_wall REAL,
    closed_mono REAL,
    closed_boot TEXT
);
CREATE INDEX IF NOT EXISTS incidents_by_unit ON incidents(unit, opened_wall);
CREATE TABLE IF NOT EXISTS attempts(
    id INTEGER PRIMARY KEY,
    incident_id TEXT NOT NULL,
    unit TEXT NOT NULL,
    wall REAL NOT NULL,
    mono REAL NOT NULL,
    boot TEXT NOT NULL,
    level INTEGER NOT NULL,
    action TEXT NOT NULL,
    result TEXT NOT NULL,
    reason TEXT NOT NULL,
    duration REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS attempts_by_unit ON attempts(unit, action, wall);
CREATE INDEX IF NOT EXISTS attempts_by_incident ON attempts(incident_id, id);
CREATE TABLE IF NOT EXISTS triggers(
    id INTEGER PRIMARY KEY,
    incident_id TEXT NOT NULL,
    unit TEXT NOT NULL,
    wall REAL NOT NULL,
    source TEXT NOT NULL,
    invocation_id TEXT NOT NULL,
    disposition TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS triggers_by_invocation ON triggers(unit, invocation_id);
CREATE TABLE IF NOT EXISTS resets(
    unit TEXT PRIMARY KEY,
    wall REAL NOT NULL,
    mono REAL NOT NULL,
    boot TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS alerts(
    incident_id TEXT NOT NULL,
    level TEXT NOT NULL,
    status TEXT NOT NULL,
    wall REAL NOT NULL,
    delivered INTEGER,
    detail TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (incident_id, level, status)
);
"""

# Errors that mean "this file is not a usable database", as opposed to "busy" or "full".
_CORRUPT_MARKERS = ("not a database", "malformed", "corrupt", "unsupported file format")
_UNWRITABLE_MARKERS = ("readonly", "read-only", "disk is full", "disk i/o", "unable to open")


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii").strip()
    except OSError:
        return "unknown"


@dataclass(frozen=True)
class Stamp:
    """One moment: monotonic for arithmetic, wall for people, boot id to relate the two."""

    mono: float
    wall: float
    boot: str


@dataclass(frozen=True)
class IncidentRow:
    id: str
    unit: str
    source: str
    invocation_id: str
    classification: str
    state: str  # open | recovered | gave-up | parked | stood-down | reset
    reason: str
    level: int
    opened: Stamp
    closed: Stamp | None


@dataclass(frozen=True)
class AttemptRow:
    incident_id: str
    unit: str
    at: Stamp
    level: int
    action: str
    result: str
    reason: str
    duration: float


@dataclass(frozen=True)
class UnitSummary:
    unit: str
    state: str
    last_reason: str
    last_classification: str
    incidents: int
    recovered: int
    gave_up: int
    mttr: float | None  # mean seconds from opening to recovery, recovered incidents only
    last_incident_wall: float | None

    @property
    def success_rate(self) -> float | None:
        decided = self.recovered + self.gave_up
        return self.recovered / decided if decided else None


def _on_timeline(wall: float, mono: float, boot: str, now: Stamp) -> float:
    """Place a stored moment on the current monotonic timeline."""
    if boot == now.boot:
        return mono
    # Another boot: the monotonic clock restarted, so use the wall-clock age.
    return now.mono - max(0.0, now.wall - wall)


_INSERT_ATTEMPT = (
    "INSERT INTO attempts(incident_id, unit, wall, mono, boot, level, action, result,"
    " reason, duration) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_TRIGGER = (
    "INSERT INTO triggers(incident_id, unit, wall, source, invocation_id, disposition)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)
_AMEND_RESTART = (
    "UPDATE attempts SET result = ?, reason = ?, duration = coalesce(?, duration)"
    " WHERE id = (SELECT max(id) FROM attempts WHERE incident_id = ? AND action = 'restart')"
)


def _attempt_params(r: AttemptRow) -> tuple[object, ...]:
    return (
        r.incident_id,
        r.unit,
        r.at.wall,
        r.at.mono,
        r.at.boot,
        r.level,
        r.action,
        r.result,
        r.reason,
        r.duration,
    )


class Store:
    """The history database, or its in-memory stand-in when the disk cannot take it."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        path: Path | None,
        note: str | None,
        *,
        read_only: bool = False,
    ) -> None:
        self._conn = conn
        self.path = path
        # A reader of another process's database: an error is the caller's answer,
        # never a reason to move the file aside or to switch to memory.
        self._read_only = read_only
        # Set whenever history is not what it should be; every output shows it.
        self.note = note
        self.commits = 0  # write transactions since the engine's last checkpoint

    @property
    def persistent(self) -> bool:
        return self.path is not None

    # --- opening ----------------------------------------------------------------------

    @classmethod
    def open(cls, path: Path) -> Store:
        """Open (creating) the database at ``path``; never raises for disk trouble."""
        try:
            return cls(_connect(path), path, None)
        except sqlite3.DatabaseError as exc:
            if _is_corrupt(exc):
                aside = _move_aside(path)
                log.warning(
                    "state database %s is corrupt (%s); moved aside to %s and recreated",
                    path,
                    exc,
                    aside,
                )
                try:
                    return cls(_connect(path), path, f"corrupt database moved aside to {aside}")
                except (sqlite3.Error, OSError) as exc2:
                    return cls.in_memory(f"cannot recreate {path}: {exc2}")
            return cls.in_memory(f"cannot open {path}: {exc}")
        except OSError as exc:
            return cls.in_memory(f"cannot open {path}: {exc.strerror}")

    @classmethod
    def reader(cls, path: Path) -> Store | None:
        """The database at ``path`` opened read-only, without set-up; None if it cannot be.

        No schema, no migration, no write: for a process that only asks what the
        writer recorded (the OnFailure= hand-off). Its queries raise StateError on a
        missing table, a lock held past a second or a corrupt file.
        """
        try:
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1.0)
        except sqlite3.Error:
            return None
        return cls(conn, path, None, read_only=True)

    @classmethod
    def in_memory(cls, why: str | None = None) -> Store:
        if why is not None:
            log.warning("recovery continues without history: %s", why)
        conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        conn.executescript(_SCHEMA)
        note = f"history not kept: {why}" if why is not None else None
        return cls(conn, None, note)

    @classmethod
    def snapshot(cls, path: Path) -> Store:
        """An in-memory copy of the database at ``path`` (for dry runs); never writes there."""
        store = cls.in_memory()
        store.note = "dry run: history read, nothing written"
        try:
            src = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
        except sqlite3.Error:
            return store
        try:
            src.backup(store._conn)
            store._conn.execute("SELECT count(*) FROM resets").fetchone()
        except sqlite3.Error:
            store._conn.executescript(_SCHEMA)
        finally:
            src.close()
        return store

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._conn.close()

    def checkpoint_due(self) -> bool:
        """Enough commits since the last checkpoint; the caller clears the count."""
        return self.path is not None and self.commits >= CHECKPOINT_COMMITS

    def checkpoint(self) -> None:
        """Copy the log into the database (blocking: fsync; call it in a thread)."""
        path = self.path
        if path is None:
            return
        try:
            conn = sqlite3.connect(str(path), timeout=1.0, isolation_level=None)
        except sqlite3.Error as exc:
            log.debug("checkpoint of %s skipped: %s", path, exc)
            return
        try:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as exc:
            log.debug("checkpoint of %s skipped: %s", path, exc)
        finally:
            conn.close()

    # --- the write path, guarded ----------------------------------------------------------

    @contextlib.contextmanager
    def _writing(self) -> Iterator[sqlite3.Connection]:
        try:
            yield self._conn
        except sqlite3.DatabaseError as exc:
            if self._read_only:
                raise StateError(f"history not readable: {exc}") from exc
            if self.path is None:
                raise StateError(f"in-memory history failed: {exc}") from exc
            self._degrade(exc)
            raise _Retry from exc

    def _degrade(self, exc: sqlite3.DatabaseError) -> None:
        why = str(exc)
        if _is_corrupt(exc) and self.path is not None:
            aside = _move_aside(self.path)
            why = f"database corrupt, moved aside to {aside}"
        log.warning("recovery continues without history: %s (%s)", why, self.path)
        with contextlib.suppress(sqlite3.Error):
            self._conn.close()
        self._conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        self._conn.executescript(_SCHEMA)
        self.note = f"history not kept: {why}"
        self.path = None

    def _write(self, work: Callable[[sqlite3.Connection], _T], failure: str) -> _T:
        """Run one write; on a database error, once more on the in-memory stand-in."""
        for _ in range(2):
            try:
                with self._writing() as conn:
                    result = work(conn)
                    self.commits += 1
                    return result
            except _Retry:
                continue
        raise StateError(failure)

    def _exec(self, sql: str, params: tuple[object, ...] = ()) -> sqlite3.Cursor:
        return self._write(
            lambda conn: conn.execute(sql, params),
            f"history statement failed twice: {sql.split()[0]}",
        )

    # --- incidents --------------------------------------------------------------------

    def open_incident(
        self,
        unit: str,
        *,
        source: str,
        invocation_id: str,
        classification: str,
        level: int,
        at: Stamp,
        handled_at: float | None = None,
    ) -> str:
        """A new open incident; with ``handled_at``, its 'handled' trigger row too, in
        the same transaction."""
        # 64 random bits: unique enough per unit history, and uuid's import is not free.
        incident_id = os.urandom(8).hex()
        statements: list[tuple[str, Sequence[tuple[object, ...]]]] = [
            (
                "INSERT INTO incidents(id, unit, source, invocation_id, classification, state,"
                " reason, level, opened_wall, opened_mono, opened_boot)"
                " VALUES (?, ?, ?, ?, ?, 'open', '', ?, ?, ?, ?)",
                [
                    (
                        incident_id,
                        unit,
                        source,
                        invocation_id,
                        classification,
                        level,
                        at.wall,
                        at.mono,
                        at.boot,
                    )
                ],
            )
        ]
        if handled_at is not None:
            statements.append(
                (
                    _INSERT_TRIGGER,
                    [(incident_id, unit, handled_at, source, invocation_id, "handled")],
                )
            )
        self._transaction(statements, "the incident")
        return incident_id

    def update_incident(
        self, incident_id: str, *, level: int | None = None, classification: str | None = None
    ) -> None:
        if level is not None:
            self._exec("UPDATE incidents SET level = ? WHERE id = ?", (level, incident_id))
        if classification is not None:
            self._exec(
                "UPDATE incidents SET classification = ? WHERE id = ?",
                (classification, incident_id),
            )

    def close_incident(
        self,
        incident_id: str,
        *,
        state: str,
        reason: str,
        at: Stamp,
        rows: Sequence[AttemptRow] = (),
        last_restart: tuple[str, str, float | None] | None = None,
    ) -> None:
        """Close it; the run's remaining step ``rows`` and the result of its last
        restart (result, reason, duration) go in the same transaction."""
        statements: list[tuple[str, Sequence[tuple[object, ...]]]] = []
        if rows:
            statements.append((_INSERT_ATTEMPT, [_attempt_params(r) for r in rows]))
        if last_restart is not None:
            statements.append((_AMEND_RESTART, [(*last_restart, incident_id)]))
        statements.append(
            (
                "UPDATE incidents SET state = ?, reason = ?, closed_wall = ?, closed_mono = ?,"
                " closed_boot = ? WHERE id = ?",
                [(state, reason, at.wall, at.mono, at.boot, incident_id)],
            )
        )
        self._transaction(statements, "the incident's end")

    def reopen_incident(self, incident_id: str) -> None:
        self._exec(
            "UPDATE incidents SET state = 'open', closed_wall = NULL, closed_mono = NULL,"
            " closed_boot = NULL WHERE id = ?",
            (incident_id,),
        )

    def last_incident(self, unit: str) -> IncidentRow | None:
        row = self._query_one(
            "SELECT * FROM incidents WHERE unit = ? ORDER BY opened_wall DESC, rowid DESC LIMIT 1",
            (unit,),
        )
        return _incident(row) if row is not None else None

    def open_incidents(self) -> list[IncidentRow]:
        """Every incident still open, of any unit (candidates for adoption)."""
        rows = self._query("SELECT * FROM incidents WHERE state = 'open' ORDER BY opened_wall")
        return [_incident(r) for r in rows]

    def parked_incidents(self) -> list[IncidentRow]:
        """Every incident left parked (handlers/parking.py), of any unit, oldest first."""
        rows = self._query("SELECT * FROM incidents WHERE state = 'parked' ORDER BY opened_wall")
        return [_incident(r) for r in rows]

    def incident(self, incident_id: str) -> IncidentRow | None:
        row = self._query_one("SELECT * FROM incidents WHERE id = ?", (incident_id,))
        return _incident(row) if row is not None else None

    def incidents(self, unit: str, limit: int = 50) -> list[IncidentRow]:
        rows = self._query(
            "SELECT * FROM incidents WHERE unit = ? ORDER BY opened_wall DESC, rowid DESC LIMIT ?",
            (unit, limit),
        )
        return [_incident(r) for r in rows]

    # --- attempts and triggers --------------------------------------------------------

    def record_attempt(
        self,
        incident_id: str,
        unit: str,
        *,
        at: Stamp,
        level: int,
        action: str,
        result: str,
        reason: str = "",
        duration: float = 0.0,
    ) -> None:
        row = AttemptRow(incident_id, unit, at, level, action, result, reason, duration)
        self._exec(_INSERT_ATTEMPT, _attempt_params(row))

    def record_attempts(self, rows: Sequence[AttemptRow]) -> None:
        """Several steps in one transaction (one WAL commit instead of one each)."""
        self._transaction([(_INSERT_ATTEMPT, [_attempt_params(r) for r in rows])], "attempts")

    def _transaction(
        self, statements: Sequence[tuple[str, Sequence[tuple[object, ...]]]], what: str
    ) -> None:
        """Each statement with each of its parameter rows, all in one transaction.

        One WAL commit instead of one per statement; on a database error the whole
        transaction is replayed on the in-memory stand-in, like a single _exec.
        """

        def work(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN IMMEDIATE")
            try:
                for sql, params in statements:
                    conn.executemany(sql, params)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

        self._write(work, f"history: could not record {what}")

    def amend_last_restart(
        self, incident_id: str, *, result: str, reason: str, duration: float | None = None
    ) -> None:
        """Set the result of the incident's last restart after the fact (min_uptime)."""
        self._exec(_AMEND_RESTART, (result, reason, duration, incident_id))

    def attempts(self, incident_id: str) -> list[AttemptRow]:
        rows = self._query(
            "SELECT incident_id, unit, wall, mono, boot, level, action, result, reason, duration"
            " FROM attempts WHERE incident_id = ? ORDER BY id",
            (incident_id,),
        )
        return [
            AttemptRow(r[0], r[1], Stamp(r[3], r[2], r[4]), r[5], r[6], r[7], r[8], r[9])
            for r in rows
        ]

    def restart_times(self, unit: str, now: Stamp, horizon: float) -> list[float]:
        """Monotonic times of the unit's restart attempts in the last ``horizon`` seconds."""
        rows = self._query(
            "SELECT wall, mono, boot FROM attempts WHERE unit = ? AND action = 'restart'"
            " AND wall >= ? ORDER BY id",
            (unit, now.wall - horizon - 60.0),
        )
        return [_on_timeline(w, m, b, now) for w, m, b in rows]

    def record_trigger(
        self,
        incident_id: str,
        unit: str,
        *,
        wall: float,
        source: str,
        invocation_id: str,
        disposition: str,
    ) -> None:
        self._exec(_INSERT_TRIGGER, (incident_id, unit, wall, source, invocation_id, disposition))

    def handled_invocation(self, unit: str, invocation_id: str) -> str | None:
        """The incident that already handled this InvocationID, if any."""
        if not invocation_id:
            return None
        row = self._query_one(
            "SELECT incident_id FROM triggers WHERE unit = ? AND invocation_id = ?"
            " AND disposition IN ('handled', 'resumed') ORDER BY id DESC LIMIT 1",
            (unit, invocation_id),
        )
        return str(row[0]) if row is not None else None

    def triggers(self, unit: str) -> list[tuple[str, str, str, str]]:
        rows = self._query(
            "SELECT incident_id, source, invocation_id, disposition FROM triggers"
            " WHERE unit = ? ORDER BY id",
            (unit,),
        )
        return [(str(a), str(b), str(c), str(d)) for a, b, c, d in rows]

    # --- reset ------------------------------------------------------------------------

    def set_reset(self, unit: str, at: Stamp) -> None:
        self._exec(
            "INSERT INTO resets(unit, wall, mono, boot) VALUES (?, ?, ?, ?)"
            " ON CONFLICT(unit) DO UPDATE SET wall = excluded.wall, mono = excluded.mono,"
            " boot = excluded.boot",
            (unit, at.wall, at.mono, at.boot),
        )

    def reset_at(self, unit: str, now: Stamp) -> float | None:
        row = self._query_one("SELECT wall, mono, boot FROM resets WHERE unit = ?", (unit,))
        return _on_timeline(row[0], row[1], row[2], now) if row is not None else None

    # --- alerts -----------------------------------------------------------------------

    def claim_alert(self, incident_id: str, level: str, status: str, wall: float) -> bool:
        """True exactly once per (incident, level, status), across processes."""
        cur = self._exec(
            "INSERT OR IGNORE INTO alerts(incident_id, level, status, wall) VALUES (?, ?, ?, ?)",
            (incident_id, level, status, wall),
        )
        return cur.rowcount == 1

    def alerted(self, incident_id: str) -> list[tuple[str, str]]:
        rows = self._query(
            "SELECT level, status FROM alerts WHERE incident_id = ? ORDER BY wall",
            (incident_id,),
        )
        return [(str(a), str(b)) for a, b in rows]

    def unresolved_recoveries(self, limit: int = 50) -> list[IncidentRow]:
        """Recovered incidents with a "firing" alert claimed and no "resolved" one, newest
        first: a process that closed one died while it waited out ``min_uptime``."""
        rows = self._query(
            "SELECT * FROM incidents i WHERE i.state = 'recovered'"
            " AND EXISTS (SELECT 1 FROM alerts a WHERE a.incident_id = i.id"
            " AND a.status = 'firing')"
            " AND NOT EXISTS (SELECT 1 FROM alerts r WHERE r.incident_id = i.id"
            " AND r.status = 'resolved')"
            " ORDER BY i.closed_wall DESC LIMIT ?",
            (limit,),
        )
        return [_incident(r) for r in rows]

    def record_delivery(
        self, incident_id: str, level: str, status: str, *, delivered: bool, detail: str
    ) -> None:
        self._exec(
            "UPDATE alerts SET delivered = ?, detail = ? WHERE incident_id = ? AND level = ?"
            " AND status = ?",
            (int(delivered), detail, incident_id, level, status),
        )

    # --- summaries --------------------------------------------------------------------

    def units(self) -> list[str]:
        return [str(r[0]) for r in self._query("SELECT DISTINCT unit FROM incidents ORDER BY 1")]

    def summary(self, unit: str) -> UnitSummary:
        rows = self._query(
            "SELECT state, count(*), avg(CASE WHEN closed_wall IS NOT NULL"
            " THEN closed_wall - opened_wall END) FROM incidents WHERE unit = ? GROUP BY state",
            (unit,),
        )
        by_state = {str(r[0]): (int(r[1]), r[2]) for r in rows}
        last = self.last_incident(unit)
        recovered, mttr = by_state.get("recovered", (0, None))
        return UnitSummary(
            unit=unit,
            state=last.state if last is not None else "ok",
            last_reason=last.reason if last is not None else "",
            last_classification=last.classification if last is not None else "",
            incidents=sum(n for n, _ in by_state.values()),
            recovered=recovered,
            gave_up=by_state.get("gave-up", (0, None))[0],
            mttr=float(mttr) if mttr is not None else None,
            last_incident_wall=last.opened.wall if last is not None else None,
        )

    # --- reads ------------------------------------------------------------------------

    def _query(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        for _ in range(2):
            try:
                with self._writing() as conn:
                    return list(conn.execute(sql, params).fetchall())
            except _Retry:
                continue
        return []

    def _query_one(self, sql: str, params: tuple[object, ...] = ()) -> tuple[Any, ...] | None:
        rows = self._query(sql, params)
        return rows[0] if rows else None


_T = TypeVar("_T")


class _Retry(Exception):  # internal control flow: the store degraded, run again
    pass


def _incident(r: tuple[Any, ...]) -> IncidentRow:
    closed = Stamp(float(r[12]), float(r[11]), str(r[13])) if r[11] is not None else None
    return IncidentRow(
        id=str(r[0]),
        unit=str(r[1]),
        source=str(r[2]),
        invocation_id=str(r[3]),
        classification=str(r[4]),
        state=str(r[5]),
        reason=str(r[6]),
        level=int(r[7]),
        opened=Stamp(float(r[9]), float(r[8]), str(r[10])),
        closed=closed,
    )


def _is_corrupt(exc: sqlite3.DatabaseError) -> bool:
    text = str(exc).lower()
    if any(m in text for m in _UNWRITABLE_MARKERS):
        return False
    return any(m in text for m in _CORRUPT_MARKERS)


# The automatic checkpoint only as a backstop (64 MiB of log at 4 KiB pages); see the
# module docstring. The engine checkpoints every CHECKPOINT_COMMITS write transactions
# (one to three pages each: about as often as SQLite's default of 1000 pages).
AUTOCHECKPOINT_PAGES = 16384
CHECKPOINT_COMMITS = 400


# How long a first open waits for another process's switch of the file to WAL.
WAL_SWITCH_WAIT = 5.0


def _connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    conn = sqlite3.connect(str(path), timeout=5.0, isolation_level=None, check_same_thread=False)
    try:
        _enter_wal(conn)
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=5000")
        conn.execute(f"PRAGMA wal_autocheckpoint={AUTOCHECKPOINT_PAGES}")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version != SCHEMA_VERSION:
            conn.executescript(_SCHEMA)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        # Touches the tables, so a file that only looks like a database fails here, not later.
        conn.execute("SELECT count(*) FROM resets").fetchone()
    except BaseException:
        conn.close()
        raise
    return conn


def _enter_wal(conn: sqlite3.Connection) -> None:
    """Switch to WAL (the listener reads status while an OnFailure= process writes).

    Two processes creating the database at once (the daemon and an OnFailure=
    oneshot after a first failure) race for the switch, and SQLite answers the
    loser "database is locked" at once, without its busy handler: 35 of 60
    simultaneous first opens here. The switch is persistent, so the loser only
    has to try again for a moment; until this retry it fell back to in-memory
    history and the incident it then recorded was lost to the other process.
    """
    deadline = time.monotonic() + WAL_SWITCH_WAIT
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL").fetchone()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.005)
        else:
            return


def _move_aside(path: Path) -> Path:
    aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")
    for suffix in ("", "-wal", "-shm"):
        src = Path(str(path) + suffix)
        with contextlib.suppress(FileNotFoundError):
            src.rename(Path(str(aside) + suffix))
    return aside
