"""Prometheus metrics of the recovery daemon, from its event stream.

:class:`Metrics` is an :class:`~handlers.events.EventSink`: counting an event
is a few dict updates, so it never blocks. The exposition is the Prometheus
text format 0.0.4, written here rather than taken from prometheus_client:
five metric families need a hundred lines, and the daemon stays free of a
dependency that would also bring a global registry and threads.

Two ways out, both owned by :class:`MetricsPublisher`:

* ``--metrics-listen 127.0.0.1:9464``: an asyncio HTTP server on a loopback
  address (``GET /metrics``). Anything but loopback is refused: the unit
  names are an inventory of the machine, and node_exporter or a reverse proxy
  is the place to decide who else may read them.
* ``--metrics-textfile /var/lib/node_exporter/textfile/unitgen.prom``: the
  file node_exporter's textfile collector reads, rewritten at most once per
  ``interval`` after a change, atomically (temp file in the same directory,
  fsync, rename) and off the event loop.

Families::

    unitgen_incidents_total{unit,reason}                    counter
    unitgen_attempts_total{unit,level,result}               counter
    unitgen_recovery_duration_seconds{unit,outcome}         histogram
    unitgen_unit_state{unit,state}                          gauge, 1 for the current state
    unitgen_unit_restarts_total{unit,by}                    counter, by="systemd"|"ladder"
    unitgen_events_total{event}                             counter
    unitgen_events_dropped_total{sink}                      counter
    unitgen_series_dropped_total                            counter (cardinality guard)

An attempt is counted when ``StepFinished`` reports the step that decides it:
``step=verifying``, or ``step=restarting`` with a result other than ``ok``
(the restart job itself failed). A restart is counted ``by="ladder"`` when
``StepFinished`` reports ``step=restarting`` with ``result=ok``, and
``by="systemd"`` when the listener sees systemd's own restart of a crashed unit
start (:meth:`Metrics.count_restart`): a restart its start limit refused is not one.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
import math
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from handlers.events import Event, EventKind
from handlers.public_fields import public_details
from handlers.tasks import log_failure
from unitgen import __version__
from unitgen.errors import UsageError

log = logging.getLogger(__name__)

__all__ = [
    "BUCKETS",
    "CONTENT_TYPE",
    "STATES",
    "Metrics",
    "MetricsPublisher",
    "Snapshot",
    "format_snapshot",
    "parse_listen",
    "parse_textfile",
    "publisher_for",
]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# From a systemd-speed restart (tens of ms) to a ladder that backs off for minutes.
BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
STATES = ("ok", "recovering", "unhealthy", "gave-up")
# Beyond this many label sets per family new ones are counted, not stored: a runaway
# template (worker@1..N) must not grow the daemon without bound.
MAX_SERIES = 20_000
# Incidents whose end we have not seen yet; oldest forgotten first.
MAX_OPEN_INCIDENTS = 10_000

Labels = tuple[tuple[str, str], ...]


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    if type(value) is int:
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


def _label_text(labels: Labels) -> str:
    return ",".join(f'{k}="{_escape_label(v)}"' for k, v in labels)


def _series(name: str, labels: Labels, value: float) -> str:
    if not labels:
        return f"{name} {_number(value)}"
    return f"{name}{{{_label_text(labels)}}} {_number(value)}"


_BUCKET_TEXT = tuple(_number(b) for b in BUCKETS)


@dataclass(frozen=True)
class Snapshot:
    """A copy of every series, taken on the loop, formatted anywhere (a worker thread)."""

    incidents: dict[Labels, int]
    attempts: dict[Labels, int]
    durations: dict[Labels, tuple[tuple[int, ...], int, float]]
    states: dict[str, str]
    events: dict[Labels, int]
    dropped: dict[Labels, int]
    series_dropped: int
    restarts: dict[Labels, int] = dataclasses.field(default_factory=dict)


class _Histogram:
    __slots__ = ("buckets", "count", "total")

    def __init__(self) -> None:
        self.buckets = [0] * len(BUCKETS)
        self.count = 0
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.count += 1
        self.total += value
        for i, bound in enumerate(BUCKETS):
            if value <= bound:
                self.buckets[i] += 1


class Metrics:
    """Counters, gauges and a histogram fed by events; :meth:`render` exposes them."""

    def __init__(self, max_series: int = MAX_SERIES) -> None:
        self._max_series = max_series
        self._incidents: dict[Labels, int] = {}
        self._attempts: dict[Labels, int] = {}
        self._durations: dict[Labels, _Histogram] = {}
        self._states: dict[str, str] = {}
        self._events: dict[Labels, int] = {}
        self._dropped: dict[Labels, int] = {}
        self._restarts: dict[Labels, int] = {}
        self._series_dropped = 0
        self._opened: dict[str, float] = {}  # incident id -> wall-clock open time
        self._listeners: list[Callable[[], None]] = []
        self.generation = 0  # bumps on every change, so a writer knows when to rewrite

    # -- feeding -----------------------------------------------------------------------

    def on_change(self, callback: Callable[[], None]) -> None:
        self._listeners.append(callback)

    def _changed(self) -> None:
        self.generation += 1
        for callback in self._listeners:
            try:
                callback()
            except Exception:
                log.exception("metrics change listener failed")

    def _inc(self, family: dict[Labels, int], labels: Labels, by: int = 1) -> None:
        if labels not in family and len(family) >= self._max_series:
            self._series_dropped += 1
            return
        family[labels] = family.get(labels, 0) + by

    def emit(self, event: Event) -> None:
        try:
            self._count(event)
        except Exception:
            log.exception("metrics: cannot count %s", event.kind.value)
            return
        self._changed()

    def _count(self, event: Event) -> None:
        details = public_details(event)
        unit = event.unit
        self._inc(self._events, (("event", event.kind.value),))
        kind = event.kind
        if kind is EventKind.INCIDENT_OPENED:
            reason = str(details.get("reason", details.get("classification", "unknown")))
            self._inc(self._incidents, (("unit", unit), ("reason", reason)))
            if event.incident_id:
                self._opened[event.incident_id] = event.timestamp
                while len(self._opened) > MAX_OPEN_INCIDENTS:
                    self._opened.pop(next(iter(self._opened)))
            self._set_state(unit, "recovering")
        elif kind is EventKind.STEP_FINISHED:
            step = details.get("step")
            result = str(details.get("result", "unknown"))
            if step == "verifying" or (step == "restarting" and result != "ok"):
                level = str(details.get("level", "unknown"))
                self._inc(self._attempts, (("unit", unit), ("level", level), ("result", result)))
            elif step == "restarting":
                self._inc(self._restarts, (("unit", unit), ("by", "ladder")))
        elif kind in (EventKind.RECOVERED, EventKind.GAVE_UP):
            outcome = "recovered" if kind is EventKind.RECOVERED else "gave-up"
            opened = self._opened.pop(event.incident_id, None)
            duration = details.get("duration")
            if not isinstance(duration, float) and opened is not None:
                duration = max(0.0, event.timestamp - opened)
            if isinstance(duration, float):
                self._observe((("unit", unit), ("outcome", outcome)), duration)
            self._set_state(unit, "ok" if kind is EventKind.RECOVERED else "gave-up")
        elif kind is EventKind.HEALTH_CHANGED:
            healthy = details.get("healthy")
            current = self._states.get(unit, "ok")
            # A health flap does not hide an incident in progress or a given-up unit.
            if current not in ("recovering", "gave-up") and isinstance(healthy, bool):
                self._set_state(unit, "ok" if healthy else "unhealthy")
        elif kind is EventKind.ESCALATED:
            self._set_state(unit, "recovering")

    def _observe(self, labels: Labels, value: float) -> None:
        hist = self._durations.get(labels)
        if hist is None:
            if len(self._durations) >= self._max_series:
                self._series_dropped += 1
                return
            hist = self._durations[labels] = _Histogram()
        hist.observe(value)

    def _set_state(self, unit: str, state: str) -> None:
        if unit not in self._states and len(self._states) >= self._max_series:
            self._series_dropped += 1
            return
        self._states[unit] = state

    def set_state(self, unit: str, state: str) -> None:
        """Set a unit's state from outside the event stream (start-up, ``Reset``)."""
        if state not in STATES:
            raise ValueError(f"unit state {state!r}: expected one of {', '.join(STATES)}")
        self._set_state(unit, state)
        self._changed()

    def forget(self, unit: str) -> None:
        """A unit no longer watched: its state gauge goes away (counters stay)."""
        if self._states.pop(unit, None) is not None:
            self._changed()

    def count_restart(self, unit: str, by: str = "systemd") -> None:
        """A restart of a crashed unit that the event stream does not carry: systemd's own."""
        self._inc(self._restarts, (("unit", unit), ("by", by)))
        self._changed()

    def count_dropped(self, sink: str, n: int = 1) -> None:
        """An event that a sink (or the listener's bounded queue) could not take."""
        self._inc(self._dropped, (("sink", sink),), n)
        self._changed()

    # -- exposition --------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        """Copies of every series: cheap, so it is taken on the loop between events."""
        return Snapshot(
            incidents=dict(self._incidents),
            attempts=dict(self._attempts),
            durations={k: (tuple(h.buckets), h.count, h.total) for k, h in self._durations.items()},
            states=dict(self._states),
            events=dict(self._events),
            dropped=dict(self._dropped),
            series_dropped=self._series_dropped,
            restarts=dict(self._restarts),
        )

    def render(self) -> str:
        """The Prometheus text exposition format 0.0.4 (on the caller's thread)."""
        return format_snapshot(self.snapshot())


def format_snapshot(snap: Snapshot) -> str:
    """The text exposition format 0.0.4 of a snapshot; pure, safe in a worker thread."""
    out: list[str] = []

    def family(name: str, kind: str, text: str) -> None:
        out.append(f"# HELP {name} {_escape_help(text)}")
        out.append(f"# TYPE {name} {kind}")

    def counters(name: str, series: Mapping[Labels, int]) -> None:
        out.extend(_series(name, labels, v) for labels, v in sorted(series.items()))

    family("unitgen_build_info", "gauge", "unitgen version, always 1.")
    out.append(_series("unitgen_build_info", (("version", __version__),), 1))
    family("unitgen_incidents_total", "counter", "Incidents opened, by unit and reason.")
    counters("unitgen_incidents_total", snap.incidents)
    family(
        "unitgen_attempts_total",
        "counter",
        "Recovery attempts (restart and verify), by unit, ladder level and result.",
    )
    counters("unitgen_attempts_total", snap.attempts)
    name = "unitgen_recovery_duration_seconds"
    family(name, "histogram", "Time from incident opened to recovered or given up.")
    for labels, (buckets, count, total) in sorted(snap.durations.items()):
        prefix = f"{name}_bucket{{{_label_text(labels)},le="
        out.extend(
            f'{prefix}"{bound}"}} {n}' for bound, n in zip(_BUCKET_TEXT, buckets, strict=True)
        )
        out.append(f'{prefix}"+Inf"}} {count}')
        out.append(_series(f"{name}_sum", labels, total))
        out.append(_series(f"{name}_count", labels, count))
    family(
        "unitgen_unit_state",
        "gauge",
        "Recovery state of each watched unit: 1 for its current state, 0 otherwise.",
    )
    for unit, current in sorted(snap.states.items()):
        unit_label = _escape_label(unit)
        out.extend(
            f'unitgen_unit_state{{unit="{unit_label}",state="{state}"}} '
            f"{1 if state == current else 0}"
            for state in STATES
        )
    family(
        "unitgen_unit_restarts_total",
        "counter",
        "Restarts of a watched unit after a crash, by who made them: systemd or the ladder.",
    )
    counters("unitgen_unit_restarts_total", snap.restarts)
    family("unitgen_events_total", "counter", "Events published, by kind.")
    counters("unitgen_events_total", snap.events)
    family(
        "unitgen_events_dropped_total",
        "counter",
        "Events a sink or a bounded queue could not take, by sink.",
    )
    counters("unitgen_events_dropped_total", snap.dropped)
    family(
        "unitgen_series_dropped_total",
        "counter",
        "Updates not stored because a metric family reached its series limit.",
    )
    out.append(_series("unitgen_series_dropped_total", (), snap.series_dropped))
    return "\n".join(out) + "\n"


# -- publishing ------------------------------------------------------------------------


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) on a loopback address; UsageError otherwise."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host:
        raise UsageError(f"--metrics-listen {value!r}: expected HOST:PORT, e.g. 127.0.0.1:9464")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        port = int(port_text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise UsageError(f"--metrics-listen {value!r}: expected a port 0-65535, got {port_text!r}")
    if host != "localhost":
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise UsageError(
                f"--metrics-listen {value!r}: expected a loopback address "
                "(127.0.0.1, ::1 or localhost); use the textfile for node_exporter instead"
            )
    return host, port


def parse_textfile(value: str) -> Path:
    """An absolute ``*.prom`` path in an existing directory (node_exporter reads only those)."""
    path = Path(value)
    if not path.is_absolute() or path.suffix != ".prom":
        raise UsageError(f"--metrics-textfile {value!r}: expected an absolute path ending in .prom")
    if not path.parent.is_dir():
        raise UsageError(f"--metrics-textfile {value!r}: directory {path.parent} does not exist")
    return path


def write_textfile(path: Path, text: str) -> None:
    """Replace ``path`` atomically: a reader sees the old file or the new one, never half."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.chmod(0o644)  # mkstemp's 0600 would hide it from node_exporter's user
        tmp.replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def publisher_for(
    metrics: Metrics, listen: str | None, textfile: str | None
) -> MetricsPublisher | None:
    """The publisher ``--metrics-listen``/``--metrics-textfile`` ask for; None for neither.

    Validates both first (UsageError, exit 2), so a daemon with a typo in its
    unit file fails at start instead of running without metrics.
    """
    if listen is None and textfile is None:
        return None
    return MetricsPublisher(
        metrics,
        listen=parse_listen(listen) if listen is not None else None,
        textfile=parse_textfile(textfile) if textfile is not None else None,
    )


def _format_and_write(path: Path, snap: Snapshot) -> None:
    write_textfile(path, format_snapshot(snap))


# What a scrape request may be: small and quick, or the connection is dropped.
_MAX_REQUEST = 8192
_REQUEST_TIMEOUT = 5.0


class MetricsPublisher:
    """Serves :class:`Metrics` over loopback HTTP and/or keeps a node_exporter textfile."""

    def __init__(
        self,
        metrics: Metrics,
        *,
        listen: tuple[str, int] | None = None,
        textfile: Path | None = None,
        interval: float = 1.0,
    ) -> None:
        self.metrics = metrics
        self._listen = listen
        self._textfile = textfile
        self._interval = interval
        self._server: asyncio.Server | None = None
        self._writer: asyncio.Task[None] | None = None
        self._dirty = asyncio.Event()
        self._conns: set[asyncio.Task[None]] = set()
        self._cached: tuple[int, bytes] | None = None  # (generation, body)
        self.scrapes = 0
        self.writes = 0

    @property
    def address(self) -> tuple[str, int] | None:
        """The bound address (the real port when 0 was asked for)."""
        if self._server is None or not self._server.sockets:
            return None
        host, port = self._server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    async def start(self) -> None:
        if self._listen is not None:
            host, port = self._listen
            try:
                self._server = await asyncio.start_server(
                    self._serve, host, port, limit=_MAX_REQUEST
                )
            except OSError as exc:
                raise UsageError(
                    f"--metrics-listen {host}:{port}: cannot listen ({exc.strerror})"
                ) from exc
        if self._textfile is not None:
            self.metrics.on_change(self._dirty.set)
            self._dirty.set()
            self._writer = asyncio.get_running_loop().create_task(
                self._write_loop(self._textfile), name="metrics-textfile"
            )
            self._writer.add_done_callback(log_failure(log))

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._conns):
                task.cancel()
            await asyncio.gather(*self._conns, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
            self._writer = None
            if self._textfile is not None:
                # The last state, so node_exporter does not keep serving a stale one.
                await self._write_once(self._textfile)

    async def body(self) -> bytes:
        """The current exposition; formatted off the loop, and only after a change.

        A thousand units are tens of thousands of lines: formatting them on the
        loop would stall event handling for every scrape.
        """
        generation = self.metrics.generation
        if self._cached is not None and self._cached[0] == generation:
            return self._cached[1]
        snap = self.metrics.snapshot()
        text = await asyncio.to_thread(format_snapshot, snap)
        body = text.encode("utf-8")
        self._cached = (generation, body)
        return body

    async def _write_once(self, path: Path) -> None:
        snap = self.metrics.snapshot()
        try:
            await asyncio.to_thread(_format_and_write, path, snap)
            self.writes += 1
        except OSError as exc:
            log.warning("metrics textfile %s: %s", path, exc.strerror or type(exc).__name__)

    async def _write_loop(self, path: Path) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            await self._write_once(path)
            # Coalesce: an event storm costs one write per interval, not one per event.
            await asyncio.sleep(self._interval)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._conns.add(task)
        try:
            await asyncio.wait_for(self._handle(reader, writer), _REQUEST_TIMEOUT)
        except (
            TimeoutError,
            ConnectionError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
        ):
            pass
        except Exception:
            log.exception("metrics request failed")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            if task is not None:
                self._conns.discard(task)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # The reader was made with limit=_MAX_REQUEST: a longer head raises, and is dropped.
        head = await reader.readuntil(b"\r\n\r\n")
        request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = request_line.split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            await _respond(writer, 400, "Bad Request", b"bad request\n")
            return
        method, target, _ = parts
        if method not in ("GET", "HEAD"):
            await _respond(writer, 405, "Method Not Allowed", b"GET only\n", allow="GET, HEAD")
            return
        if target.split("?", 1)[0] not in ("/metrics", "/"):
            await _respond(writer, 404, "Not Found", b"try /metrics\n")
            return
        body = await self.body()
        self.scrapes += 1
        await _respond(writer, 200, "OK", body, head_only=method == "HEAD")


async def _respond(
    writer: asyncio.StreamWriter,
    status: int,
    reason: str,
    body: bytes,
    *,
    head_only: bool = False,
    allow: str | None = None,
) -> None:
    headers = [
        f"HTTP/1.1 {status} {reason}",
        f"Content-Type: {CONTENT_TYPE if status == 200 else 'text/plain; charset=utf-8'}",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    if allow:
        headers.append(f"Allow: {allow}")
    writer.write(("\r\n".join(headers) + "\r\n\r\n").encode("latin-1"))
    if not head_only:
        writer.write(body)
    await writer.drain()
