"""Recovery events as structured journal entries, over journald's native protocol.

Each event becomes one datagram to ``/run/systemd/journal/socket`` made of
``KEY=value\\n`` fields; a value containing a newline uses the binary-safe
form ``KEY\\n`` + 64-bit little-endian length + bytes + ``\\n``. Fields::

    MESSAGE             one readable line: "web.service: incident 3f.. opened (exit-code)"
    PRIORITY            syslog level (GaveUp 2 crit, IncidentOpened/Escalated 4, ...)
    SYSLOG_IDENTIFIER   unitgen
    MESSAGE_ID          fixed per event kind, for journalctl --catalog and filters
    UNITGEN_EVENT       IncidentOpened, StepStarted, ... (the D-Bus signal name)
    UNITGEN_UNIT        the unit the event is about
    UNITGEN_INCIDENT    the incident id, when there is one
    UNITGEN_LEVEL, UNITGEN_REASON, UNITGEN_<KEY>   every allow-listed detail
    OBJECT_SYSTEMD_UNIT the unit, when we run as root: ``journalctl -u UNIT`` then
                        shows unitgen's entries beside the unit's own

So ``journalctl UNITGEN_EVENT=GaveUp`` or ``journalctl -o json UNITGEN_UNIT=x``
work locally, and journald forwarding (journal-upload, a log shipper reading
the journal) carries the fields to the fleet.

The socket is non-blocking: if journald is too slow to take a datagram the
entry is dropped and counted, because recovery must not wait for logging.
Without a journal socket (a container, a test) each event is one line on
stderr instead, written only when stderr can take it without blocking.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import socket
import stat
import struct
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Literal

from handlers.events import Event, EventKind
from handlers.public_fields import public_details

log = logging.getLogger(__name__)

__all__ = [
    "JOURNAL_SOCKET",
    "MESSAGE_IDS",
    "JournalSink",
    "encode_entry",
    "entry_fields",
    "field_name",
]

JOURNAL_SOCKET = "/run/systemd/journal/socket"
IDENTIFIER = "unitgen"

# Stable per kind: `journalctl MESSAGE_ID=...` keeps working whatever MESSAGE says.
MESSAGE_IDS: dict[EventKind, str] = {
    EventKind.INCIDENT_OPENED: "85e1e69b0c8e4f7790e5a177b5c71003",
    EventKind.STEP_STARTED: "a819a572dde640dbbb7ccc09182321f7",
    EventKind.STEP_FINISHED: "7b2835b002c84d32a25805bf97a90221",
    EventKind.ESCALATED: "d3673b49f3d244caa00636203a4c140f",
    EventKind.RECOVERED: "9cc7d81d7a6f40899067719f9f338afe",
    EventKind.GAVE_UP: "b97d6ffb264d45e3b0713a5933b2bed0",
    EventKind.HEALTH_CHANGED: "fce7e87282c04d499617b4341aa9e811",
    EventKind.GROUP_OPENED: "8cab18d590d8466e8ef76a31d782ae0a",
    EventKind.GROUP_CLOSED: "9fc439f1dc8e4c038915f1877ca946d9",
    EventKind.CRASHED: "4d0b3c6f2a9e4b51a6e07c1d98f2e5b3",
}

_PRIORITY = {
    EventKind.INCIDENT_OPENED: 4,  # warning
    EventKind.STEP_STARTED: 7,  # debug: the ladder's inner steps
    EventKind.STEP_FINISHED: 6,  # info
    EventKind.ESCALATED: 4,
    EventKind.RECOVERED: 5,  # notice
    EventKind.GAVE_UP: 2,  # crit: a service stays down until someone acts
    EventKind.HEALTH_CHANGED: 5,
    EventKind.GROUP_OPENED: 4,
    EventKind.GROUP_CLOSED: 5,
    EventKind.CRASHED: 4,
}

# How long a missing journal socket is believed missing before the next try.
ABSENT_RETRY = 5.0

# A line on stderr is written only if it fits a pipe's atomic write.
_PIPE_BUF = 4096


_FIELD_NAMES: dict[str, str] = {}


def field_name(key: str) -> str:
    """``attempt`` -> ``UNITGEN_ATTEMPT``: journald wants [A-Z0-9_], no leading underscore."""
    name = _FIELD_NAMES.get(key)
    if name is None:
        cleaned = "".join(c if c.isascii() and c.isalnum() else "_" for c in key.upper())
        name = f"UNITGEN_{cleaned}"[:64]
        # The keys are the ladder's few field names: remembered, not re-cleaned per event.
        if len(_FIELD_NAMES) < 256:
            _FIELD_NAMES[key] = name
    return name


def _message(event: Event, details: Mapping[str, object]) -> str:
    unit, kind = event.unit, event.kind
    incident = f"incident {event.incident_id}" if event.incident_id else "incident"
    why = details.get("reason", details.get("classification"))
    reason = f" ({why})" if why is not None else ""
    level = f" at level {details['level']}" if "level" in details else ""
    step = details.get("step", "step")
    if kind is EventKind.INCIDENT_OPENED:
        return f"{unit}: {incident} opened{reason}"
    if kind is EventKind.STEP_STARTED:
        return f"{unit}: {step} started{level}"
    if kind is EventKind.STEP_FINISHED:
        result = details.get("result", "done")
        return f"{unit}: {step} {result}{level}"
    if kind is EventKind.ESCALATED:
        source, target = details.get("from", "?"), details.get("to", details.get("level", "?"))
        return f"{unit}: escalated from {source} to {target}"
    if kind is EventKind.RECOVERED:
        took = details.get("duration")
        after = f" after {took:.3f} s" if isinstance(took, float) else ""
        return f"{unit}: recovered{after} ({incident})"
    if kind is EventKind.GAVE_UP:
        return f"{unit}: gave up{reason}; left as is until 'unitgen reset {unit}'"
    if kind is EventKind.GROUP_OPENED:
        return f"incident group {event.incident_id} opened: {details.get('cause', '?')}"
    if kind is EventKind.GROUP_CLOSED:
        state = details.get("state", "closed")
        return f"incident group {event.incident_id} closed ({state}): {details.get('cause', '?')}"
    if kind is EventKind.CRASHED:
        return _crashed_message(unit, details)
    healthy = details.get("healthy")
    state = "healthy" if healthy is True else "unhealthy" if healthy is False else "changed"
    return f"{unit}: health {state}"


def _crashed_message(unit: str, details: Mapping[str, object]) -> str:
    result = details.get("unit_result", "?")
    status = details.get("exit_status")
    code = f", status {status}" if status is not None else ""
    who = details.get("restarted_by", "none")
    then = {"systemd": "systemd restarts it", "ladder": "the ladder takes it over"}.get(
        str(who), "nobody restarts it"
    )
    return f"{unit}: crashed ({result}{code}, {details.get('n_restarts', 0)} restarts); {then}"


def entry_fields(event: Event, *, object_unit: bool = False) -> list[tuple[str, str]]:
    """The journal fields of one event, in a stable order."""
    details = public_details(event)
    kind = event.kind
    priority = _PRIORITY[kind]
    if kind is EventKind.HEALTH_CHANGED and details.get("healthy") is False:
        priority = 4
    if kind is EventKind.STEP_FINISHED and details.get("result") not in (None, "ok"):
        priority = 5
    fields = [
        ("MESSAGE", _message(event, details)),
        ("PRIORITY", _DIGITS[priority]),
        ("SYSLOG_IDENTIFIER", IDENTIFIER),
        ("MESSAGE_ID", MESSAGE_IDS[kind]),
        ("UNITGEN_EVENT", kind.value),
        ("UNITGEN_UNIT", event.unit),
    ]
    if event.incident_id:
        fields.append(("UNITGEN_INCIDENT", event.incident_id))
    for key, value in details.items():
        if value is True or value is False:
            text = "true" if value else "false"
        else:
            text = value if type(value) is str else str(value)
        fields.append((field_name(key), text))
    if object_unit:
        fields.append(("OBJECT_SYSTEMD_UNIT", event.unit))
    return fields


_DIGITS = [str(n) for n in range(8)]


def encode_entry(fields: Iterable[tuple[str, str | bytes]]) -> bytes:
    """journald's native datagram format, binary-safe for values with newlines."""
    fields = list(fields)
    if all(type(value) is str for _, value in fields):
        return _encode_text(fields)  # type: ignore[arg-type]
    parts: list[bytes] = []
    for key, value in fields:
        data = value.encode("utf-8", "replace") if isinstance(value, str) else value
        if b"\n" in data:
            parts.append(b"%s\n%s%s\n" % (key.encode("ascii"), struct.pack("<Q", len(data)), data))
        else:
            parts.append(b"%s=%s\n" % (key.encode("ascii"), data))
    return b"".join(parts)


def _encode_text(fields: list[tuple[str, str]]) -> bytes:
    """encode_entry for str values, the usual entry: plain KEY=value lines in one go."""
    text = "".join([f"{key}={value}\n" for key, value in fields])
    # One newline per field: no value has one of its own, so plain lines will do.
    if text.count("\n") == len(fields):
        return text.encode("utf-8", "replace")
    return encode_entry([(key, value.encode("utf-8", "replace")) for key, value in fields])


_stderr_is_file: bool | None = None


def _stderr_line(line: str) -> bool:
    """Write one line to fd 2 if that cannot block; False when it was not written."""
    global _stderr_is_file
    data = (line.rstrip("\n")[: _PIPE_BUF - 1] + "\n").encode("utf-8", "replace")[:_PIPE_BUF]
    try:
        if _stderr_is_file is None:
            _stderr_is_file = stat.S_ISREG(os.fstat(2).st_mode)
        # A write to a regular file does not wait for a reader; a pipe or socket may.
        if not _stderr_is_file:
            _, writable, _ = select.select([], [2], [], 0)
            if not writable:
                return False
        os.write(2, data)
    except (OSError, ValueError):
        return False
    return True


def _fallback_line(fields: list[tuple[str, str]]) -> str:
    """The entry as one stderr line: the message, then key=value for UNITGEN_EVENT on."""
    words = [f"unitgen: {fields[0][1]}"]
    for key, value in fields[4:]:
        if key != "UNITGEN_UNIT" and key != "OBJECT_SYSTEMD_UNIT":
            words.append(f"{key.removeprefix('UNITGEN_').lower()}={value}")
    return " ".join(words)


class JournalSink:
    """An EventSink writing structured journal entries; stderr lines without a journal."""

    def __init__(
        self,
        socket_path: str = JOURNAL_SOCKET,
        *,
        fallback: Callable[[str], bool] = _stderr_line,
        on_drop: Callable[[str], None] | None = None,
        object_unit: bool | None = None,
    ) -> None:
        self._path = socket_path
        self._fallback = fallback
        self._on_drop = on_drop
        # Only root's OBJECT_SYSTEMD_UNIT is honoured by `journalctl -u`.
        self._object_unit = os.geteuid() == 0 if object_unit is None else object_unit
        self._sock: socket.socket | None = None
        # No journal socket (a container, a sandbox): not asked again for a while, so
        # each event does not pay a failed sendto and its exception.
        self._absent_until = 0.0
        self._lock = threading.Lock()  # emit may come from the loop and from worker threads
        self.sent = 0
        self.fallbacks = 0
        self.dropped = 0

    def emit(self, event: Event) -> None:
        try:
            fields = entry_fields(event, object_unit=self._object_unit)
        except Exception:
            log.exception("journal: cannot format %s", event.kind.value)
            self._drop()
            return
        try:
            with self._lock:
                outcome = self._send_fields(fields)
        except Exception:
            log.exception("journal: send failed")
            self._drop()
            return
        if outcome == "sent":
            self.sent += 1
            return
        if outcome == "busy":
            # journald is behind; an entry lost is better than a ladder that waits.
            self._drop()
            return
        if self._fallback(_fallback_line(fields)):
            self.fallbacks += 1
        else:
            self._drop()

    def _send_fields(self, fields: list[tuple[str, str]]) -> Literal["sent", "busy", "absent"]:
        """Hand one entry to journald as a datagram, without waiting.

        Known to be absent (a container, a sandbox), the entry is not even encoded.
        """
        if self._absent_until and time.monotonic() < self._absent_until:
            return "absent"
        data = _encode_text(fields)
        if self._sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            sock.setblocking(False)
            self._sock = sock
        try:
            self._sock.sendto(data, self._path)
        except BlockingIOError:
            return "busy"
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ECONNREFUSED, errno.ENOTDIR, errno.EACCES):
                self._absent_until = time.monotonic() + ABSENT_RETRY
                return "absent"
            raise
        return "sent"

    def _drop(self) -> None:
        self.dropped += 1
        if self._on_drop is not None:
            try:
                self._on_drop("journal")
            except Exception:
                log.exception("drop counter failed")

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                with contextlib.suppress(OSError):
                    self._sock.close()
                self._sock = None
