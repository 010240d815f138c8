"""Structured journal entries: against a datagram socket the test binds, and real journald."""

from __future__ import annotations

import json
import socket
import struct
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from handlers.events import Event, EventKind
from handlers.journal import MESSAGE_IDS, JournalSink, encode_entry, entry_fields
from unitgen.sandbox import Sandbox

REPO = Path(__file__).resolve().parents[1]


def parse_entry(data: bytes) -> list[tuple[str, bytes]]:
    """journald's native protocol, read back the way journald reads it."""
    fields: list[tuple[str, bytes]] = []
    pos = 0
    while pos < len(data):
        nl = data.index(b"\n", pos)
        line = data[pos:nl]
        if b"=" in line:
            key, _, value = line.partition(b"=")
            fields.append((key.decode(), value))
            pos = nl + 1
        else:
            (size,) = struct.unpack("<Q", data[nl + 1 : nl + 9])
            value = data[nl + 9 : nl + 9 + size]
            assert data[nl + 9 + size : nl + 10 + size] == b"\n"
            fields.append((line.decode(), value))
            pos = nl + 10 + size
    return fields


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "journal.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    try:
        yield sock, path
    finally:
        sock.close()


def test_entry_has_the_documented_fields(receiver: tuple[socket.socket, str]) -> None:
    sock, path = receiver
    sink = JournalSink(path, object_unit=True)
    try:
        sink.emit(
            Event(
                EventKind.GAVE_UP,
                "web.service",
                "inc-42",
                {"reason": "budget", "level": "alert-and-stop", "attempts": 5, "alerted": True},
            )
        )
        fields = dict(parse_entry(sock.recv(65536)))
    finally:
        sink.close()
    assert fields["UNITGEN_EVENT"] == b"GaveUp"
    assert fields["UNITGEN_UNIT"] == b"web.service"
    assert fields["UNITGEN_INCIDENT"] == b"inc-42"
    assert fields["UNITGEN_LEVEL"] == b"alert-and-stop"
    assert fields["UNITGEN_REASON"] == b"budget"
    assert fields["UNITGEN_ATTEMPTS"] == b"5"
    assert fields["UNITGEN_ALERTED"] == b"true"
    assert fields["SYSLOG_IDENTIFIER"] == b"unitgen"
    assert fields["PRIORITY"] == b"2"
    assert fields["MESSAGE_ID"] == MESSAGE_IDS[EventKind.GAVE_UP].encode()
    assert fields["OBJECT_SYSTEMD_UNIT"] == b"web.service"
    assert fields["MESSAGE"].startswith(b"web.service: gave up (budget)")
    assert sink.sent == 1 and sink.dropped == 0


def test_a_value_with_a_newline_survives_binary_safe(receiver: tuple[socket.socket, str]) -> None:
    sock, path = receiver
    sink = JournalSink(path)
    hostile = "evil\nPRIORITY=0\nUNITGEN_EVENT=Recovered"
    try:
        sink.emit(Event(EventKind.INCIDENT_OPENED, hostile, "i", {"reason": "signal"}))
        fields = parse_entry(sock.recv(65536))
    finally:
        sink.close()
    as_dict = dict(fields)
    # The newline did not start new fields: one PRIORITY, one UNITGEN_EVENT, unit intact.
    assert [k for k, _ in fields].count("PRIORITY") == 1
    assert as_dict["PRIORITY"] == b"4"
    assert as_dict["UNITGEN_EVENT"] == b"IncidentOpened"
    assert as_dict["UNITGEN_UNIT"] == hostile.encode()


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.from_regex(r"[A-Z][A-Z0-9_]{0,20}", fullmatch=True),
            st.binary(max_size=64) | st.text(max_size=64),
        ),
        max_size=8,
    )
)
def test_encoding_round_trips_any_value(fields: list[tuple[str, str | bytes]]) -> None:
    want = [(k, v.encode("utf-8", "replace") if isinstance(v, str) else v) for k, v in fields]
    assert parse_entry(encode_entry(fields)) == want


def test_no_secret_reaches_the_journal(receiver: tuple[socket.socket, str]) -> None:
    sock, path = receiver
    sink = JournalSink(path)
    secret = "https://hooks.slack.com/services/T0/B0/SECRETSECRET"
    try:
        sink.emit(
            Event(
                EventKind.STEP_FINISHED,
                "web.service",
                "i",
                {
                    "step": "alerting",
                    "url": secret,
                    "error": f"POST {secret} failed",
                    "result": "failed",
                },
            )
        )
        data = sock.recv(65536)
    finally:
        sink.close()
    assert b"SECRET" not in data and b"hooks.slack" not in data
    assert dict(parse_entry(data))["UNITGEN_ERROR"] == b"[withheld]"


def test_without_a_journal_it_falls_back_to_one_line(tmp_path: Path) -> None:
    lines: list[str] = []

    def fallback(line: str) -> bool:
        lines.append(line)
        return True

    sink = JournalSink(str(tmp_path / "no-such-socket"), fallback=fallback, object_unit=True)
    try:
        sink.emit(Event(EventKind.RECOVERED, "web.service", "i9", {"duration": 1.5}))
    finally:
        sink.close()
    assert len(lines) == 1 and "\n" not in lines[0]
    assert lines[0].startswith("unitgen: web.service: recovered after 1.500 s")
    assert "event=Recovered" in lines[0] and "incident=i9" in lines[0]
    assert "object_systemd_unit" not in lines[0]  # the unit is named once, up front
    assert sink.fallbacks == 1 and sink.sent == 0


def test_a_missing_journal_is_asked_again_after_a_while(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import handlers.journal as journal

    now = [1000.0]
    monkeypatch.setattr(journal.time, "monotonic", lambda: now[0])
    path = str(tmp_path / "journal.sock")
    lines: list[str] = []
    sink = JournalSink(path, fallback=lambda line: lines.append(line) is None)
    event = Event(EventKind.RECOVERED, "web.service", "i9", {})
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sink.emit(event)
        sock.bind(path)  # journald starts
        sink.emit(event)  # still believed missing: no sendto per event
        assert (sink.fallbacks, sink.sent) == (2, 0)
        now[0] += journal.ABSENT_RETRY
        sink.emit(event)
        assert (sink.fallbacks, sink.sent) == (2, 1)
        sock.settimeout(5)
        assert dict(parse_entry(sock.recv(65536)))["UNITGEN_EVENT"] == b"Recovered"
    finally:
        sink.close()
        sock.close()


def test_a_full_journal_drops_instead_of_blocking(receiver: tuple[socket.socket, str]) -> None:
    _, path = receiver  # bound, never read: its queue fills up
    drops: list[str] = []
    sink = JournalSink(path, on_drop=drops.append)
    n = 5000
    try:
        for i in range(n):
            sink.emit(Event(EventKind.STEP_STARTED, f"u{i}.service", "i", {"step": "restarting"}))
    finally:
        sink.close()
    assert sink.dropped > 0 and drops[0] == "journal"
    assert sink.sent + sink.dropped == n


def test_priorities_follow_the_event() -> None:
    def prio(kind: EventKind, **fields: object) -> str:
        return dict(entry_fields(Event(kind, "u.service", "i", fields)))["PRIORITY"]  # type: ignore[arg-type]

    assert prio(EventKind.GAVE_UP) == "2"
    assert prio(EventKind.INCIDENT_OPENED) == "4"
    assert prio(EventKind.HEALTH_CHANGED, healthy=False) == "4"
    assert prio(EventKind.HEALTH_CHANGED, healthy=True) == "5"
    assert prio(EventKind.STEP_FINISHED, result="failed") == "5"
    assert prio(EventKind.STEP_FINISHED, result="ok") == "6"


_WRITER = """
import sys
from handlers.events import Event, EventKind
from handlers.journal import JournalSink
sink = JournalSink()
sink.emit(Event(EventKind.GAVE_UP, "web.service", sys.argv[1],
                {"reason": "budget", "level": "alert-and-stop", "attempts": 5}))
sink.close()
print(sink.sent, sink.fallbacks, sink.dropped)
"""


def test_real_journald_stores_the_fields(user_sandbox: Sandbox) -> None:
    incident = uuid.uuid4().hex
    res = user_sandbox.run([sys.executable, "-c", _WRITER, incident], env={"PYTHONPATH": str(REPO)})
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["1", "0", "0"]
    deadline = time.monotonic() + 10
    while True:
        out = user_sandbox.run(
            ["journalctl", "--no-pager", "-o", "json", f"UNITGEN_INCIDENT={incident}"]
        )
        if out.stdout.strip() or time.monotonic() > deadline:
            break
        time.sleep(0.05)  # polling journald with a deadline; it indexes asynchronously
    entries = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(entries) == 1, out.stdout + out.stderr
    entry = entries[0]
    assert entry["UNITGEN_EVENT"] == "GaveUp"
    assert entry["UNITGEN_UNIT"] == "web.service"
    assert entry["UNITGEN_LEVEL"] == "alert-and-stop"
    assert entry["UNITGEN_REASON"] == "budget"
    assert entry["SYSLOG_IDENTIFIER"] == "unitgen"
    assert entry["PRIORITY"] == "2"
    assert entry["MESSAGE"].startswith("web.service: gave up (budget)")
