"""The restart budget's second memory: one small file per unit under the run directory.

The history database (:mod:`handlers.store`) lives on the state filesystem,
which fills up, goes read-only or gets corrupted; when it does the store falls
back to an in-memory copy that dies with the process, and every ``OnFailure=``
run would start the budget afresh. So the facts the budget rests on are also
kept here, in ``<run_dir>/ledger/<unit>.json`` (``/run`` is a tmpfs of its own,
cleared at boot like the monotonic clock the windows use):

* the unit's restart attempts within the budget's horizon,
* its give-up (incident, reason, time), until ``unitgen reset``,
* the last reset (a time, so an older give-up anywhere stays forgiven),
* whether this unit's operators were already told about the history gap,
* whether it is parked (handlers/parking.py): its incident, what it waits for,
  since when and when it was last parked, so a restarted listener resumes it on
  the same schedule even when the history database is gone.

The engine takes the union of what the database and the ledger know (attempts
deduplicated by their exact timestamps, which both records share), so losing
either one costs no count. A long-lived process (the listener daemon) also
keeps every entry it has seen in memory and merges it in, so a ledger file
removed under it does not reset its budget either.

Writes are atomic: a temporary file in the same directory, fsync, rename
(:mod:`handlers.atomicfile`, shared with the flapping alert's state). The
read-modify-write is serialised across processes by an ``flock`` on the
directory, held only for that moment (the ladder's own writes already run
under the unit's lock; ``unitgen reset`` does not take that lock).

The directory is checked like the lock directory: created 0700, refused when a
symlink, not ours, or writable by group or others; files are opened
``O_NOFOLLOW`` relative to it. A file that cannot be parsed is treated as
empty (and rewritten on the next change): its contents are only a fallback.

``.history-gap`` in the same directory records when the history database
stopped being written, and why, so ``unitgen status`` can say since when.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from handlers.atomicfile import read_at, write_at
from handlers.locks import check_unit_name, open_private_dir
from handlers.store import Stamp
from unitgen.errors import UsageError

__all__ = ["Entry", "Gap", "GiveUpMark", "Ledger", "LedgerError", "ParkMark"]

log = logging.getLogger(__name__)

VERSION = 1
MAX_ATTEMPTS_KEPT = 256  # far above any max_attempts; bounds a hostile or runaway file
MAX_FILE_BYTES = 64 * 1024
_SUFFIX = ".json"
_GAP_FILE = ".history-gap"


class LedgerError(OSError):
    """The ledger could not be read or written (internal: callers get a reason string)."""


@dataclass(frozen=True)
class GiveUpMark:
    incident_id: str
    reason: str
    at: Stamp


@dataclass(frozen=True)
class ParkMark:
    """A parked unit: the incident, what it waits for, first and latest parking."""

    incident_id: str
    waiting_for: tuple[str, ...]
    reason: str
    since: Stamp  # first parked (the daily reminder counts from here)
    at: Stamp  # parked last (the slow retry counts from here)


MAX_WAITS_KEPT = 64


@dataclass(frozen=True)
class Gap:
    """The history database is not being written: since when, and why."""

    since: float  # wall clock
    reason: str


@dataclass(frozen=True)
class Entry:
    """What the ledger knows of one unit."""

    attempts: tuple[Stamp, ...] = ()
    gave_up: GiveUpMark | None = None
    reset: Stamp | None = None
    gap_alerted: float | None = None  # the Gap.since this unit's alert was sent for
    parked: ParkMark | None = None

    def merged(self, other: Entry) -> Entry:
        """The union of two accounts: every attempt of either, the later give-up/reset."""
        attempts = {(a.mono, a.wall, a.boot): a for a in (*self.attempts, *other.attempts)}
        return Entry(
            attempts=tuple(sorted(attempts.values(), key=lambda a: a.wall))[-MAX_ATTEMPTS_KEPT:],
            gave_up=_later(self.gave_up, other.gave_up),
            reset=_later_stamp(self.reset, other.reset),
            gap_alerted=max(
                (g for g in (self.gap_alerted, other.gap_alerted) if g is not None), default=None
            ),
            parked=_later_park(self.parked, other.parked),
        )


def _later(a: GiveUpMark | None, b: GiveUpMark | None) -> GiveUpMark | None:
    if a is None or b is None:
        return a or b
    return a if a.at.wall >= b.at.wall else b


def _later_park(a: ParkMark | None, b: ParkMark | None) -> ParkMark | None:
    if a is None or b is None:
        return a or b
    return a if a.at.wall >= b.at.wall else b


def _later_stamp(a: Stamp | None, b: Stamp | None) -> Stamp | None:
    if a is None or b is None:
        return a or b
    return a if a.wall >= b.wall else b


@dataclass
class Ledger:
    """The per-unit budget files under ``directory``, plus this process's memory of them."""

    directory: Path
    readonly: bool = False  # dry runs read the ledger and never write it
    # Why the last write failed, or None when it succeeded; shown in notes and status.
    problem: str | None = None
    _memory: dict[str, Entry] = field(default_factory=dict, repr=False)

    # --- reading -------------------------------------------------------------------

    def entry(self, unit: str) -> Entry:
        """The file's account merged with this process's memory (never raises)."""
        remembered = self._memory.get(unit, Entry())
        try:
            on_disk = self._read(unit)
        except LedgerError as exc:
            log.debug("ledger of %s unreadable: %s", unit, exc)
            return remembered
        return on_disk.merged(remembered)

    def units(self) -> list[str]:
        """Every unit with a ledger file (or in memory); names that are not unit names
        (a stray file someone put there) are skipped."""
        names = set(self._memory)
        with contextlib.suppress(OSError):
            for p in self.directory.iterdir():
                if p.name.endswith(_SUFFIX) and not p.name.startswith("."):
                    names.add(p.name[: -len(_SUFFIX)])
        return sorted(n for n in names if _is_unit_name(n))

    def gap(self) -> Gap | None:
        try:
            with self._dir(create=False) as dfd:
                raw = _read_at(dfd, _GAP_FILE)
        except LedgerError:
            return None
        if raw is None:
            return None
        try:
            data = json.loads(raw)
            since, reason = data["since"], data["reason"]
            if not _number(since) or not isinstance(reason, str):
                return None
            return Gap(float(since), reason[:500])
        except (ValueError, KeyError, TypeError):
            return None

    # --- writing -------------------------------------------------------------------

    def record_attempt(self, unit: str, at: Stamp, *, horizon: float) -> bool:
        """One restart attempt; entries older than ``horizon`` seconds are dropped."""

        def change(e: Entry) -> Entry:
            kept = tuple(a for a in e.attempts if at.wall - a.wall <= horizon)
            return replace(e, attempts=(*kept, at)[-MAX_ATTEMPTS_KEPT:])

        return self._update(unit, change)

    def give_up(self, unit: str, incident_id: str, reason: str, at: Stamp) -> bool:
        return self._update(unit, lambda e: replace(e, gave_up=GiveUpMark(incident_id, reason, at)))

    def reset(self, unit: str, at: Stamp) -> bool:
        """Forget attempts and the give-up; remember when, so no older record revives them."""
        self._memory[unit] = Entry(reset=at)
        return self._update(unit, lambda e: Entry(reset=at, gap_alerted=e.gap_alerted), merge=False)

    def park(self, unit: str, mark: ParkMark) -> bool:
        return self._update(unit, lambda e: replace(e, parked=mark))

    def unpark(self, unit: str) -> bool:
        """Forget the park mark (the unit recovered, or stopped for good)."""
        self._memory[unit] = replace(self._memory.get(unit, Entry()), parked=None)
        if self.entry(unit).parked is None:
            return True
        return self._update(unit, lambda e: replace(e, parked=None))

    def gap_alerted(self, unit: str, since: float) -> bool:
        return self._update(unit, lambda e: replace(e, gap_alerted=since))

    def writable(self, unit: str) -> bool:
        """Rewrite the unit's file as it is: proves a count can be kept before relying on it."""
        return self._update(unit, lambda e: e)

    def mark_gap(self, reason: str, now: float) -> Gap | None:
        """Record that history is not being written; the new Gap if it just began."""
        if self.readonly or self.gap() is not None:
            return None
        gap = Gap(now, reason[:500])
        data = json.dumps({"v": VERSION, "since": gap.since, "reason": gap.reason})
        try:
            with self._dir(create=True) as dfd, _dir_lock(dfd):
                if _read_at(dfd, _GAP_FILE) is not None:
                    return None  # another process recorded it first
                _write_at(dfd, _GAP_FILE, data.encode())
        except LedgerError as exc:
            self.problem = str(exc)
            return None
        return gap

    def clear_gap(self) -> None:
        if self.readonly:
            return
        try:
            with self._dir(create=False) as dfd:
                os.unlink(_GAP_FILE, dir_fd=dfd)
        except (LedgerError, FileNotFoundError):
            return
        except OSError as exc:
            log.debug("cannot remove %s/%s: %s", self.directory, _GAP_FILE, exc)

    # --- internals -----------------------------------------------------------------

    def _update(self, unit: str, change: Any, *, merge: bool = True) -> bool:
        """Read, change, write back atomically. False (and ``problem`` set) on failure."""
        if self.readonly:
            return False
        try:
            with self._dir(create=True) as dfd, _dir_lock(dfd):
                try:
                    current = _parse(_read_at(dfd, unit + _SUFFIX))
                except LedgerError:
                    current = Entry()
                if merge:
                    current = current.merged(self._memory.get(unit, Entry()))
                new = change(current)
                self._memory[unit] = new
                _write_at(dfd, unit + _SUFFIX, _dump(new).encode())
        except LedgerError as exc:
            if merge:
                # The count still lives in this process, whatever the disk says.
                self._memory[unit] = change(self._memory.get(unit, Entry()))
            self.problem = str(exc)
            return False
        self.problem = None
        return True

    def _read(self, unit: str) -> Entry:
        with self._dir(create=False) as dfd:
            return _parse(_read_at(dfd, unit + _SUFFIX))

    @contextlib.contextmanager
    def _dir(self, *, create: bool) -> Iterator[int]:
        path = self.directory
        try:
            fd = open_private_dir(path, create=create)
        except OSError as exc:
            raise LedgerError(exc.errno, f"{path}: {exc.strerror}") from exc
        try:
            yield fd
        finally:
            os.close(fd)


def _is_unit_name(name: str) -> bool:
    try:
        check_unit_name(name)
    except UsageError:
        return False
    return True


@contextlib.contextmanager
def _dir_lock(dfd: int) -> Iterator[None]:
    # Held for one read-modify-write of a few hundred bytes.
    try:
        fcntl.flock(dfd, fcntl.LOCK_EX)
    except OSError as exc:
        raise LedgerError(exc.errno, f"ledger lock: {exc.strerror}") from exc
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            fcntl.flock(dfd, fcntl.LOCK_UN)


def _read_at(dfd: int, name: str) -> bytes | None:
    try:
        return read_at(dfd, name, MAX_FILE_BYTES)
    except OSError as exc:
        raise LedgerError(exc.errno, exc.strerror) from exc


def _write_at(dfd: int, name: str, data: bytes) -> None:
    try:
        write_at(dfd, name, data)
    except OSError as exc:
        raise LedgerError(exc.errno, exc.strerror) from exc


def _number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _float_or_none(v: object) -> float | None:
    return float(v) if isinstance(v, int | float) and _number(v) else None


def _stamp(v: object) -> Stamp:
    if (
        isinstance(v, list)
        and len(v) == 3
        and _number(v[0])
        and _number(v[1])
        and isinstance(v[2], str)
    ):
        return Stamp(float(v[0]), float(v[1]), v[2][:64])
    raise LedgerError(errno.EINVAL, f"bad time {str(v)[:40]!r}")


def _parse(raw: bytes | None) -> Entry:
    """An Entry from a file's bytes; LedgerError for anything that is not one."""
    if raw is None:
        return Entry()
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise LedgerError(errno.EINVAL, f"not JSON: {exc}") from exc
    if not isinstance(data, dict) or data.get("v") != VERSION:
        raise LedgerError(errno.EINVAL, "not a version 1 ledger")
    attempts = data.get("attempts", [])
    if not isinstance(attempts, list):
        raise LedgerError(errno.EINVAL, "attempts is not a list")
    gave_up = None
    g = data.get("gave_up")
    if g is not None:
        if not isinstance(g, dict) or not isinstance(g.get("incident"), str):
            raise LedgerError(errno.EINVAL, "bad gave_up")
        reason = g.get("reason")
        if not isinstance(reason, str):
            raise LedgerError(errno.EINVAL, "bad gave_up reason")
        gave_up = GiveUpMark(g["incident"][:64], reason[:1000], _stamp(g.get("at")))
    reset = data.get("reset")
    alerted = data.get("gap_alerted")
    parked = _park_mark(data.get("parked"))
    return Entry(
        attempts=tuple(_stamp(a) for a in attempts[-MAX_ATTEMPTS_KEPT:]),
        gave_up=gave_up,
        reset=_stamp(reset) if reset is not None else None,
        gap_alerted=float(alerted)
        if isinstance(alerted, int | float) and _number(alerted)
        else None,
        parked=parked,
    )


def _park_mark(p: object) -> ParkMark | None:
    if p is None:
        return None
    if not isinstance(p, dict) or not isinstance(p.get("incident"), str):
        raise LedgerError(errno.EINVAL, "bad parked")
    waits, reason = p.get("waiting_for"), p.get("reason")
    if (
        not isinstance(waits, list)
        or len(waits) > MAX_WAITS_KEPT
        or not all(isinstance(w, str) for w in waits)
        or not isinstance(reason, str)
    ):
        raise LedgerError(errno.EINVAL, "bad parked waits")
    return ParkMark(
        p["incident"][:64],
        tuple(w[:256] for w in waits),
        reason[:1000],
        _stamp(p.get("since")),
        _stamp(p.get("at")),
    )


def _dump(e: Entry) -> str:
    def s(at: Stamp) -> list[object]:
        return [at.mono, at.wall, at.boot]

    g = e.gave_up
    p = e.parked

    return json.dumps(
        {
            "v": VERSION,
            "attempts": [s(a) for a in e.attempts],
            "gave_up": (
                {"incident": g.incident_id, "reason": g.reason, "at": s(g.at)}
                if g is not None
                else None
            ),
            "reset": s(e.reset) if e.reset is not None else None,
            "gap_alerted": e.gap_alerted,
            "parked": (
                {
                    "incident": p.incident_id,
                    "waiting_for": list(p.waiting_for),
                    "reason": p.reason,
                    "since": s(p.since),
                    "at": s(p.at),
                }
                if p is not None
                else None
            ),
        },
        separators=(",", ":"),
    )
