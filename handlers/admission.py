"""How many calls of org.unitgen.Recovery1 are served at once: per caller and overall.

Any local user may call ``Status`` and ``History`` (the bus policy allows it), so
the number served at once must not be up to them. A call over a limit is
answered at once with ``org.freedesktop.DBus.Error.LimitsExceeded`` instead of
being queued: queued work is what a flood is made of, and an immediate error
costs the daemon one small reply.

The caller is its unique bus name (``:1.42``): the bus daemon vouches for it,
it costs nothing to know (unlike the uid, a round trip), and the bus daemon's
own per-user connection limit bounds how many one user can open. Reads and the
mutating methods have separate pools, so a flood of reads never refuses an
``OnFailure=`` hand-off (a root-only ``Recover``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

__all__ = ["Limits", "Pool", "RefusalLog"]


@dataclass(frozen=True)
class Limits:
    per_caller: int
    overall: int


@dataclass
class Pool:
    """Calls in progress, counted per caller; ``admit`` and ``release`` pair up."""

    limits: Limits
    name: str
    in_progress: int = 0
    refused: int = 0  # since start, for metrics and tests
    _by_caller: dict[str, int] = field(default_factory=dict)

    def admit(self, caller: str | None) -> str | None:
        """None when the call may go ahead (then counted), else why it may not."""
        key = caller or ""
        mine = self._by_caller.get(key, 0)
        if mine >= self.limits.per_caller:
            self.refused += 1
            return (
                f"{mine} {self.name} calls of this connection in progress "
                f"(limit {self.limits.per_caller})"
            )
        if self.in_progress >= self.limits.overall:
            self.refused += 1
            return (
                f"{self.in_progress} {self.name} calls in progress "
                f"(limit {self.limits.overall}); try again later"
            )
        self._by_caller[key] = mine + 1
        self.in_progress += 1
        return None

    def release(self, caller: str | None) -> None:
        key = caller or ""
        mine = self._by_caller.get(key, 0)
        if mine <= 1:
            self._by_caller.pop(key, None)
        else:
            self._by_caller[key] = mine - 1
        if self.in_progress > 0:
            self.in_progress -= 1


@dataclass
class RefusalLog:
    """At most one log line per interval about refused calls, however many there were.

    A flood of refusals must not become a flood of journal lines (journald
    would throttle us, or the writes to it would hold up the loop).
    """

    interval: float = 10.0
    _count: int = 0
    _logged: float = float("-inf")

    def note(self) -> int | None:
        """Count a refusal; the number to log (this one included) when a line is due."""
        self._count += 1
        now = time.monotonic()
        if now - self._logged < self.interval:
            return None
        count, self._count, self._logged = self._count, 0, now
        return count
