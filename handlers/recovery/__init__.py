"""The recovery engine: runs the ladder of :mod:`handlers.ladder` with real side effects.

A package, one concern a module:

* :mod:`.engine`: :class:`RecoveryEngine`, the public API, joining and the loop;
* :mod:`.steps`: the action of each ladder state;
* :mod:`.finish`: what a terminal state means for the incident, and the outcome;
* :mod:`.alerting`: once-only alerts, queued behind the restart;
* :mod:`.history`: the read side (budgets, status, history) on the store alone;
* :mod:`.core`: the services and records the others share;
* :mod:`.model`: :class:`Trigger`, :class:`Outcome` and the run record.

The names importable from here are the ones this module offered when it was a
single file; callers need not know the split.
"""

from __future__ import annotations

from handlers.recovery import steps as _steps
from handlers.recovery.core import SERVICE_INTERFACE, UNIT_INTERFACE
from handlers.recovery.engine import RecoveryEngine
from handlers.recovery.history import history_gap
from handlers.recovery.model import (
    LISTENER_SOURCES,
    AlerterFactory,
    Clock,
    LockMode,
    Outcome,
    ProbeRunner,
    SystemClock,
    Trigger,
    TriggerSource,
)

__all__ = [
    "LISTENER_SOURCES",
    "SERVICE_INTERFACE",
    "UNIT_INTERFACE",
    "AlerterFactory",
    "Clock",
    "LockMode",
    "Outcome",
    "ProbeRunner",
    "RecoveryEngine",
    "SystemClock",
    "Trigger",
    "TriggerSource",
    "history_gap",
]

# The single module's private helpers, by the names the tests import them with.
_on_same_filesystem = _steps.on_same_filesystem
_probe = _steps.run_probe
_test_pause = _steps.test_pause
_validate = _steps.validate
