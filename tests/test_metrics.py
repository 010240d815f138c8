"""Prometheus metrics: scraped for real over loopback HTTP, parsed, and checked."""

from __future__ import annotations

import asyncio
import os
import re
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from hypothesis import given, settings
from hypothesis import strategies as st

from handlers.events import Event, EventKind
from handlers.metrics import (
    BUCKETS,
    CONTENT_TYPE,
    Metrics,
    MetricsPublisher,
    parse_listen,
    parse_textfile,
    publisher_for,
)
from unitgen.errors import UsageError

Sample = tuple[str, tuple[tuple[str, str], ...], float]

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(,|$)')


def _unescape(value: str) -> str:
    out, i = [], 0
    while i < len(value):
        if value[i] == "\\":
            nxt = value[i + 1]
            out.append({"n": "\n", "\\": "\\", '"': '"'}[nxt])
            i += 2
        else:
            out.append(value[i])
            i += 1
    return "".join(out)


def parse_exposition(text: str) -> tuple[dict[str, str], list[Sample]]:
    """A strict reader of format 0.0.4: TYPE per family, samples, label escapes."""
    assert text.endswith("\n")
    types: dict[str, str] = {}
    samples: list[Sample] = []
    # The format separates lines by \n only; a raw \r in a label value is legal.
    for line in text[:-1].split("\n"):
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert name not in types, f"TYPE twice for {name}"
            types[name] = kind
            continue
        m = _SAMPLE.match(line)
        assert m, f"not a sample line: {line!r}"
        name, raw_labels, value = m.groups()
        labels: list[tuple[str, str]] = []
        if raw_labels:
            inner = raw_labels[1:-1]
            pos = 0
            while pos < len(inner):
                lm = _LABEL.match(inner, pos)
                assert lm, f"bad labels in {line!r}"
                labels.append((lm.group(1), _unescape(lm.group(2))))
                pos = lm.end()
        family = re.sub(r"_(bucket|sum|count)$", "", name)
        assert family in types or name in types, f"sample before its TYPE: {line!r}"
        samples.append((name, tuple(labels), float(value)))
    return types, samples


def value(samples: list[Sample], name: str, **labels: str) -> float:
    want = set(labels.items())
    found = [v for n, ls, v in samples if n == name and want <= set(ls)]
    assert len(found) == 1, (name, labels, found)
    return found[0]


def ev(
    kind: EventKind, unit: str, incident: str = "i1", ts: float = 1000.0, **fields: object
) -> Event:
    return Event(kind=kind, unit=unit, incident_id=incident, fields=fields, timestamp=ts)  # type: ignore[arg-type]


def feed_incident(metrics: Metrics) -> None:
    metrics.emit(ev(EventKind.INCIDENT_OPENED, "web.service", reason="exit-code", ts=1000.0))
    metrics.emit(ev(EventKind.STEP_STARTED, "web.service", step="restarting", level="restart"))
    metrics.emit(
        ev(EventKind.STEP_FINISHED, "web.service", step="restarting", level="restart", result="ok")
    )
    metrics.emit(
        ev(
            EventKind.STEP_FINISHED,
            "web.service",
            step="verifying",
            level="restart",
            result="failed",
        )
    )
    metrics.emit(
        ev(
            EventKind.ESCALATED,
            "web.service",
            level="restart",
            **{"from": "restart", "to": "cleanup-then-restart"},
        )
    )
    metrics.emit(
        ev(
            EventKind.STEP_FINISHED,
            "web.service",
            step="verifying",
            level="cleanup-then-restart",
            result="ok",
        )
    )
    metrics.emit(ev(EventKind.RECOVERED, "web.service", ts=1003.0))
    metrics.emit(ev(EventKind.INCIDENT_OPENED, "db.service", "i2", classification="oom-kill"))
    metrics.emit(ev(EventKind.GAVE_UP, "db.service", "i2", reason="budget", duration=0.07))


async def scrape(
    address: tuple[str, int], request: bytes | None = None
) -> tuple[str, dict[str, str], bytes]:
    host, port = address
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(request or b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return lines[0], headers, body


@pytest_asyncio.fixture
async def served() -> AsyncIterator[tuple[Metrics, MetricsPublisher]]:
    metrics = Metrics()
    publisher = MetricsPublisher(metrics, listen=parse_listen("127.0.0.1:0"))
    await publisher.start()
    try:
        yield metrics, publisher
    finally:
        await publisher.close()


@pytest.mark.asyncio
async def test_scrape_over_http_reports_the_ladder(
    served: tuple[Metrics, MetricsPublisher],
) -> None:
    metrics, publisher = served
    feed_incident(metrics)
    assert publisher.address is not None
    status, headers, body = await scrape(publisher.address)
    assert status == "HTTP/1.1 200 OK"
    assert headers["Content-Type"] == CONTENT_TYPE
    assert int(headers["Content-Length"]) == len(body)
    types, samples = parse_exposition(body.decode())
    assert types["unitgen_incidents_total"] == "counter"
    assert types["unitgen_recovery_duration_seconds"] == "histogram"
    assert types["unitgen_unit_state"] == "gauge"
    assert value(samples, "unitgen_incidents_total", unit="web.service", reason="exit-code") == 1
    assert value(samples, "unitgen_incidents_total", unit="db.service", reason="oom-kill") == 1
    # The restarting step that went ok is not an attempt; its verification is.
    assert (
        value(
            samples, "unitgen_attempts_total", unit="web.service", level="restart", result="failed"
        )
        == 1
    )
    assert (
        value(
            samples,
            "unitgen_attempts_total",
            unit="web.service",
            level="cleanup-then-restart",
            result="ok",
        )
        == 1
    )
    assert len([s for s in samples if s[0] == "unitgen_attempts_total"]) == 2
    # Duration from the IncidentOpened timestamp when the event has none: 3 s.
    web = {"unit": "web.service", "outcome": "recovered"}
    assert value(samples, "unitgen_recovery_duration_seconds_sum", **web) == 3.0
    assert value(samples, "unitgen_recovery_duration_seconds_count", **web) == 1
    assert value(samples, "unitgen_recovery_duration_seconds_bucket", le="2.5", **web) == 0
    assert value(samples, "unitgen_recovery_duration_seconds_bucket", le="5", **web) == 1
    assert value(samples, "unitgen_recovery_duration_seconds_bucket", le="+Inf", **web) == 1
    db = {"unit": "db.service", "outcome": "gave-up"}
    assert value(samples, "unitgen_recovery_duration_seconds_bucket", le="0.1", **db) == 1
    assert value(samples, "unitgen_unit_state", unit="web.service", state="ok") == 1
    assert value(samples, "unitgen_unit_state", unit="web.service", state="recovering") == 0
    assert value(samples, "unitgen_unit_state", unit="db.service", state="gave-up") == 1
    assert value(samples, "unitgen_events_total", event="IncidentOpened") == 2
    assert publisher.scrapes == 1


@pytest.mark.asyncio
async def test_histogram_buckets_are_cumulative() -> None:
    metrics = Metrics()
    durations = [0.01, 0.3, 0.3, 7.0, 9999.0]
    for i, d in enumerate(durations):
        metrics.emit(ev(EventKind.RECOVERED, "a.service", f"i{i}", duration=d))
    _, samples = parse_exposition(metrics.render())
    buckets = [
        (labels, v) for n, labels, v in samples if n == "unitgen_recovery_duration_seconds_bucket"
    ]
    counts = [v for _, v in buckets]
    assert counts == sorted(counts)
    assert len(buckets) == len(BUCKETS) + 1
    for bound, count in zip(BUCKETS, counts, strict=False):
        assert count == sum(1 for d in durations if d <= bound)
    assert counts[-1] == len(durations)
    assert value(samples, "unitgen_recovery_duration_seconds_sum") == pytest.approx(sum(durations))


@pytest.mark.asyncio
async def test_dropped_events_and_health_state(served: tuple[Metrics, MetricsPublisher]) -> None:
    metrics, publisher = served
    metrics.count_dropped("listener-queue", 7)
    metrics.count_dropped("dbus")
    metrics.emit(ev(EventKind.HEALTH_CHANGED, "api.service", "", healthy=False, probe="http"))
    assert publisher.address is not None
    _, _, body = await scrape(publisher.address)
    _, samples = parse_exposition(body.decode())
    assert value(samples, "unitgen_events_dropped_total", sink="listener-queue") == 7
    assert value(samples, "unitgen_events_dropped_total", sink="dbus") == 1
    assert value(samples, "unitgen_unit_state", unit="api.service", state="unhealthy") == 1
    metrics.set_state("api.service", "ok")
    _, _, body = await scrape(publisher.address)
    _, samples = parse_exposition(body.decode())
    assert value(samples, "unitgen_unit_state", unit="api.service", state="ok") == 1


@pytest.mark.asyncio
async def test_http_refuses_what_is_not_a_scrape(served: tuple[Metrics, MetricsPublisher]) -> None:
    _, publisher = served
    assert publisher.address is not None
    status, _, _ = await scrape(publisher.address, b"POST /metrics HTTP/1.1\r\n\r\n")
    assert status.startswith("HTTP/1.1 405")
    status, _, _ = await scrape(publisher.address, b"GET /etc/passwd HTTP/1.1\r\n\r\n")
    assert status.startswith("HTTP/1.1 404")
    status, _, _ = await scrape(publisher.address, b"garbage\r\n\r\n")
    assert status.startswith("HTTP/1.1 400")
    # An oversized head is dropped without an answer, and the server carries on.
    status, _, body = await scrape(
        publisher.address, b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n"
    )
    assert status == "" and body == b""
    status, _, body = await scrape(publisher.address, b"HEAD /metrics HTTP/1.1\r\n\r\n")
    assert status == "HTTP/1.1 200 OK" and body == b""
    assert publisher.scrapes == 1


@pytest.mark.parametrize(
    "bad",
    [
        "0.0.0.0:9464",
        "192.168.1.5:9464",
        "example.org:80",
        "9464",
        "127.0.0.1:x",
        "127.0.0.1:70000",
    ],
)
def test_listen_must_be_loopback(bad: str) -> None:
    with pytest.raises(UsageError, match="--metrics-listen"):
        parse_listen(bad)


def test_listen_accepts_loopback_forms() -> None:
    assert parse_listen("127.0.0.1:9464") == ("127.0.0.1", 9464)
    assert parse_listen("[::1]:9464") == ("::1", 9464)
    assert parse_listen("localhost:0") == ("localhost", 0)


def test_publisher_for_validates_both_options(tmp_path: Path) -> None:
    metrics = Metrics()
    assert publisher_for(metrics, None, None) is None
    with pytest.raises(UsageError, match="loopback"):
        publisher_for(metrics, "0.0.0.0:9464", None)
    with pytest.raises(UsageError, match=r"\.prom"):
        publisher_for(metrics, "127.0.0.1:0", str(tmp_path / "x.txt"))
    assert publisher_for(metrics, "127.0.0.1:0", str(tmp_path / "u.prom")) is not None


def test_textfile_path_is_checked(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"\.prom"):
        parse_textfile(str(tmp_path / "metrics.txt"))
    with pytest.raises(UsageError, match="does not exist"):
        parse_textfile(str(tmp_path / "nope" / "unitgen.prom"))
    assert parse_textfile(str(tmp_path / "unitgen.prom")) == tmp_path / "unitgen.prom"


@pytest.mark.asyncio
async def test_textfile_is_rewritten_atomically_after_changes(tmp_path: Path) -> None:
    target = tmp_path / "unitgen.prom"
    metrics = Metrics()
    publisher = MetricsPublisher(metrics, textfile=target, interval=0.01)
    await publisher.start()
    try:
        deadline = asyncio.get_running_loop().time() + 10
        while not target.exists():
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.01)
        first = target.read_text()
        assert "unitgen_incidents_total" in first and "web.service" not in first
        feed_incident(metrics)
        while "web.service" not in target.read_text():
            assert asyncio.get_running_loop().time() < deadline, "textfile never updated"
            await asyncio.sleep(0.01)
    finally:
        await publisher.close()
    _, samples = parse_exposition(target.read_text())
    assert value(samples, "unitgen_incidents_total", unit="db.service", reason="oom-kill") == 1
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert os.listdir(tmp_path) == ["unitgen.prom"]  # no temp files left


def test_series_limit_bounds_memory() -> None:
    metrics = Metrics(max_series=10)
    for i in range(50):
        metrics.emit(ev(EventKind.INCIDENT_OPENED, f"w@{i}.service", f"i{i}", reason="signal"))
    _, samples = parse_exposition(metrics.render())
    assert len([s for s in samples if s[0] == "unitgen_incidents_total"]) == 10
    assert value(samples, "unitgen_series_dropped_total") == 80  # incidents and states


def test_no_secret_reaches_a_label() -> None:
    metrics = Metrics()
    secret = "https://hooks.slack.com/services/T000/B000/XXXXSECRET"
    metrics.emit(ev(EventKind.INCIDENT_OPENED, "web.service", reason=secret, url=secret))
    text = metrics.render()
    assert "SECRET" not in text and "hooks.slack" not in text


@settings(max_examples=200, deadline=None)
@given(
    unit=st.text(min_size=1, max_size=40),
    reason=st.text(max_size=40),
)
def test_any_label_value_round_trips(unit: str, reason: str) -> None:
    metrics = Metrics()
    metrics.emit(ev(EventKind.INCIDENT_OPENED, unit, reason=reason))
    _, samples = parse_exposition(metrics.render())
    (labels,) = [ls for n, ls, _ in samples if n == "unitgen_incidents_total"]
    assert dict(labels)["unit"] == unit
