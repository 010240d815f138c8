"""The worst case a policy allows: how many starts of a unit per ladder window.

Two actors restart a unit, in layers (docs/recovery.md, "Who restarts what"):

* systemd, with ``Restart=`` and ``RestartSec=`` (``policy.restart.delay``),
  limited by ``StartLimitBurst=`` starts per ``StartLimitIntervalSec=``;
* the ladder, at most ``max_attempts`` restarts per ``window``.

Each ladder restart begins with ResetFailedUnit, which also clears systemd's
start-limit counter, so every ladder attempt buys systemd one more burst.
Independently of that, the start limit admits at most ``burst`` starts in any
``interval``, and ``RestartSec`` spaces systemd's own restarts. The worst case
is the smallest of those bounds. ``unitgen check`` prints it per service.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from unitgen.policy import Policy

__all__ = ["Budget", "worst_case"]


@dataclass(frozen=True)
class Budget:
    unit: str
    window: float  # seconds, the ladder's window
    systemd_restarts: int  # automatic restarts by systemd's Restart= within the window
    ladder_restarts: int  # RestartUnit calls by the ladder within the window
    bounded_by: str  # which limit gave systemd_restarts

    @property
    def total(self) -> int:
        return self.systemd_restarts + self.ladder_restarts

    def describe(self) -> str:
        return (
            f"{self.unit}: at most {self.total} restarts per {self.window:g}s "
            f"({self.systemd_restarts} by systemd, bounded by {self.bounded_by}; "
            f"{self.ladder_restarts} by the ladder)"
        )


def worst_case(policy: Policy) -> Budget:
    window = max(0.0, policy.recovery.window)
    ladder = max(0, policy.recovery.max_attempts)
    r = policy.restart
    if r.policy == "no":
        return Budget(policy.unit, window, 0, ladder, "Restart=no")
    burst = max(1, r.burst)
    interval = r.interval
    candidates: list[tuple[float, str]] = []
    if burst > 0 and interval > 0:
        # Each cycle is `burst` starts, the first of which is not systemd's own restart.
        # A new cycle opens when the interval passes, or when the ladder resets the limit.
        cycles_by_time = math.ceil(window / interval) if window > 0 else 1
        per_cycle = burst - 1
        by_limit = (cycles_by_time + ladder) * per_cycle
        # Between cycles that opened by time, the unit can also be restarted once
        # it is idle long enough: at most `burst` starts per interval in total.
        candidates.append((float(by_limit), f"StartLimitBurst={burst} per {interval:g}s"))
    else:
        candidates.append((math.inf, "no start limit"))
    if r.delay > 0:
        # RestartSec spaces systemd's restarts; the unit's own run time only adds to it.
        candidates.append((math.floor(window / r.delay), f"RestartSec={r.delay:g}s"))
    value, why = min(candidates, key=lambda c: c[0])
    systemd = int(value) if math.isfinite(value) else -1
    if systemd < 0:
        # Neither a start limit nor a delay: systemd alone may restart without bound.
        return Budget(policy.unit, window, 2**31 - 1, ladder, "nothing (unbounded)")
    return Budget(policy.unit, window, systemd, ladder, why)
