"""What the recovery side tells the world, as plain data.

The ladder emits :class:`Event` objects into an :class:`EventSink` and does not
know who listens. The listener fans them out to the D-Bus signal exporter, the
Prometheus metrics and the journal; the OnFailure= path, which has no daemon,
sends them to the journal only. Keeping the event a frozen value with
primitive fields is what lets every sink serialise it without a secret ever
reaching it: alert URLs and passwords are never put in an event.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

log = logging.getLogger(__name__)

FieldValue = str | int | float | bool


class EventKind(enum.Enum):
    """The signals of the org.unitgen.Recovery1 interface, one per kind."""

    INCIDENT_OPENED = "IncidentOpened"
    STEP_STARTED = "StepStarted"
    STEP_FINISHED = "StepFinished"
    ESCALATED = "Escalated"
    RECOVERED = "Recovered"
    GAVE_UP = "GaveUp"
    HEALTH_CHANGED = "HealthChanged"
    # Incident groups (handlers/correlation.py): unit is the cause unit (or the first
    # member when the cause is no unit), incident_id the group's id.
    GROUP_OPENED = "GroupOpened"
    GROUP_CLOSED = "GroupClosed"
    # A watched service crashed, whoever restarts it (systemd itself, or the ladder).
    CRASHED = "Crashed"


@dataclass(frozen=True)
class Event:
    kind: EventKind
    unit: str
    incident_id: str  # empty for HealthChanged outside an incident
    # Free-form details: step, level, result, reason, attempt, duration... primitives only.
    fields: Mapping[str, FieldValue] = field(default_factory=dict)
    timestamp: float = field(default_factory=time.time)  # wall clock, for consumers


class EventSink(Protocol):
    def emit(self, event: Event) -> None:
        """Must not block and must not raise: a sink's failure never stops recovery."""


class NullSink:
    def emit(self, event: Event) -> None:
        pass


class FanOut:
    """Sends each event to several sinks; one failing sink does not starve the others."""

    def __init__(self, sinks: Iterable[EventSink]) -> None:
        self._sinks = list(sinks)

    def add(self, sink: EventSink) -> None:
        self._sinks.append(sink)

    def emit(self, event: Event) -> None:
        for sink in self._sinks:
            try:
                sink.emit(event)
            except Exception:
                log.exception("event sink %r failed on %s", sink, event.kind.value)
