"""What the listener keeps: its options, what the signals said of each unit, its counters.

Plain data, shared by :mod:`handlers.listener` and the benchmarks that drive it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["ListenerOptions", "Stats", "UnitState"]


@dataclass(frozen=True)
class ListenerOptions:
    # Units handled at once, across all units. A ladder holds its slot while systemd
    # starts the unit, so a small pool makes a burst of failures wait in rounds; the
    # bus layer caps calls in flight at 32 either way (figures in docs/listener.md).
    max_concurrency: int = 32
    max_pending: int = 4096  # distinct units waiting; more are dropped and counted
    reconnect_initial: float = 0.05
    reconnect_max: float = 10.0
    health_concurrency: int = 8


@dataclass
class UnitState:
    active: str = ""
    handled: str = ""  # the invocation last handed to the ladder
    # The invocation last seen in ``auto-restart``: a ``failed`` of that same invocation
    # means systemd's own restart job was refused (the start limit) and it gave up.
    auto_restart: str = ""
    crashed: str = ""  # the invocation last reported as crashed (one Crashed each)
    restarted: str = ""  # the auto-restart invocation whose restart by systemd was counted
    live: dict[str, Any] = field(default_factory=dict)  # SERVICE_LIVE | UNIT_LIVE, latest
    static: dict[str, Any] | None = None  # STATIC, None until read (again)

    def forget(self) -> None:
        """Signals may have been missed or the unit reloaded: read it afresh next time."""
        self.live.clear()
        self.static = None
        self.auto_restart = ""


@dataclass
class Stats:
    signals: int = 0
    failed_signals: int = 0
    systemd_restarting: int = 0  # failed, then systemd's own auto-restart: stood down
    decided_without_read: int = 0  # systemd cannot restart it: decided on the signals alone
    start_limit: int = 0  # failed after auto-restart, same invocation: systemd gave up
    duplicates: int = 0  # a failure of an invocation already handed to the ladder
    recoveries: int = 0
    recovery_errors: int = 0
    health_escalations: int = 0
    reconnects: int = 0
    reconciles: int = 0
    malformed: int = 0
