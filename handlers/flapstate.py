"""The flapping alert's memory across a restart of ``unitgen watch``: one small file.

:class:`handlers.flapping.FlapWatch` keeps, per service with ``alert_on``, its
recent crashes and, while its alert is firing, the incident, when it started and
when it was last judged. Kept only in memory, a restarted daemon (an upgrade, a
crash, ``kill -9``, the watchdog) would never resolve an alert firing at a
receiver, and would count a service that keeps crashing from zero again. So the
same facts go to ``<state_dir>/flapping.json``, next to the history database,
whenever they change (a crash of a service with ``alert_on``, a fire, a
resolve; never for the crashes of other services).

The directory is checked like the ledger's (:func:`handlers.locks.open_private_dir`:
ours, not group- or other-writable); the file is read and replaced through
:mod:`handlers.atomicfile` (``O_NOFOLLOW``: a symlink in its place is refused;
written to a temporary file, fsynced, renamed). As for the ledger, a file that
cannot be read or parsed is logged once and treated as empty; the next change
overwrites it (its contents only ever resume alerts, they decide no restart).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from handlers.atomicfile import read_at, write_at
from handlers.flapping import DIGEST_MAX, Crash
from handlers.locks import open_private_dir

__all__ = ["FILE_NAME", "MAX_UNITS", "FlapFile", "FlapRecord"]

log = logging.getLogger(__name__)

VERSION = 1
FILE_NAME = "flapping.json"
# alert_on's longest window (unitgen/speckeys.py): older crashes can count for nothing.
MAX_WINDOW = 86400.0
# Services kept at most; bounds a hostile or runaway file (each entry is a few KiB at most).
MAX_UNITS = 1000
MAX_FILE_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class FlapRecord:
    """What one service's flapping watch must remember across a restart."""

    crashes: tuple[Crash, ...] = ()  # oldest first, at most DIGEST_MAX
    incident: str = ""  # the firing alert's incident; empty when none is firing
    started: float = 0.0  # the firing alert's start (its first crash)
    judged: float = 0.0  # when it was last fired (the next judgement is a window later)


class FlapFile:
    """``flapping.json`` in ``directory``: loaded once, rewritten whole on each change.

    Neither method raises: a problem is logged (once per distinct problem) and the
    watch goes on from memory.
    """

    def __init__(self, directory: Path, name: str = FILE_NAME) -> None:
        self.directory = directory
        self.name = name
        self.problem: str | None = None  # why the last load or save failed, else None

    @property
    def path(self) -> Path:
        return self.directory / self.name

    def load(self, now: float) -> dict[str, FlapRecord]:
        """The records on disk; crashes older than any window (a day) are left out."""
        try:
            fd = open_private_dir(self.directory, create=False)
        except FileNotFoundError:
            return {}
        except OSError as exc:
            self._failed(f"cannot read {self.path}: {exc.strerror}")
            return {}
        try:
            raw = read_at(fd, self.name, MAX_FILE_BYTES)
        except OSError as exc:
            self._failed(f"cannot read {self.directory}/{exc.strerror}")
            return {}
        finally:
            os.close(fd)
        if raw is None:
            return {}
        try:
            records = _parse(raw, now)
        except (ValueError, TypeError, KeyError, RecursionError) as exc:
            self._failed(
                f"{self.path} unusable, starting empty (rewritten on the next change): {exc}"
            )
            return {}
        self.problem = None
        return records

    def save(self, records: Mapping[str, FlapRecord]) -> bool:
        """Replace the file with ``records`` (blocking: fsync; call it off the loop)."""
        data = _dump(records).encode()
        try:
            fd = open_private_dir(self.directory, create=True)
        except OSError as exc:
            self._failed(f"cannot write {self.path}: {exc.strerror}")
            return False
        try:
            write_at(fd, self.name, data)
        except OSError as exc:
            self._failed(f"{self.directory}: {exc.strerror}")
            return False
        finally:
            os.close(fd)
        if self.problem is not None:
            log.info("flapping state written again to %s", self.path)
        self.problem = None
        return True

    def _failed(self, problem: str) -> None:
        if problem != self.problem:
            log.warning("flapping alert state: %s", problem)
        self.problem = problem


def _number(v: object) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise ValueError(f"expected a number, got {v!r}")
    return float(v)


def _text(v: object, limit: int = 300) -> str:
    if not isinstance(v, str) or len(v) > limit:
        raise ValueError(f"expected a short text, got {str(v)[:40]!r}")
    return v


def _crash(d: object) -> Crash:
    if not isinstance(d, dict):
        raise TypeError("a crash is not an object")
    return Crash(
        at=_number(d["at"]),
        result=_text(d["result"], 64),
        exit_code=_text(d["exit_code"], 16),
        exit_status=int(_number(d["exit_status"])),
        n_restarts=int(_number(d["n_restarts"])),
        restarted_by=_text(d["restarted_by"], 16),
    )


def _parse(raw: bytes, now: float) -> dict[str, FlapRecord]:
    data = json.loads(raw)
    if not isinstance(data, dict) or data.get("v") != VERSION:
        raise ValueError(f"not a version {VERSION} flapping state")
    units = data["units"]
    if not isinstance(units, dict) or len(units) > MAX_UNITS:
        raise ValueError(f"units: expected an object of at most {MAX_UNITS} services")
    out: dict[str, FlapRecord] = {}
    for unit, rec in units.items():
        if not isinstance(rec, dict) or not isinstance(rec.get("crashes"), list):
            raise TypeError(f"{unit[:100]}: not a flapping record")
        crashes = [_crash(c) for c in rec["crashes"][-DIGEST_MAX:]]
        record = FlapRecord(
            crashes=tuple(c for c in crashes if now - c.at <= MAX_WINDOW),
            incident=_text(rec.get("incident", ""), 400),
            started=_number(rec.get("started", 0.0)),
            judged=_number(rec.get("judged", 0.0)),
        )
        if record.crashes or record.incident:
            out[_text(unit, 256)] = record
    return out


def _dump(records: Mapping[str, FlapRecord]) -> str:
    units: dict[str, Any] = {}
    for unit, rec in list(records.items())[-MAX_UNITS:]:
        if not rec.crashes and not rec.incident:
            continue
        entry: dict[str, Any] = {"crashes": [asdict(c) for c in rec.crashes[-DIGEST_MAX:]]}
        if rec.incident:
            entry.update(incident=rec.incident, started=rec.started, judged=rec.judged)
        units[unit] = entry
    return json.dumps({"v": VERSION, "units": units}, sort_keys=True, separators=(",", ":"))
