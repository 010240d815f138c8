"""How long the ladder waits before a restart attempt: exponential, jittered, capped.

Pure arithmetic on numbers and an injected RNG, so the tests can pin every
value. The first attempt of a window is immediate: systemd has already done
its own fast restarts by the time the ladder is asked (see docs/recovery.md,
"Who restarts what"), so a further pause would only add downtime. From the
second attempt on, the delay doubles (``factor``) from ``base`` up to ``max``.

The delay is measured from the previous restart attempt, not from "now": a
new trigger that arrives after the unit crashed again only waits for what is
left of the pause, and one that arrives late does not wait at all.
"""

from __future__ import annotations

import math
import random

from unitgen.model import Backoff

__all__ = ["delay_for", "remaining"]


def delay_for(attempt: int, backoff: Backoff, rng: random.Random) -> float:
    """Seconds to wait before restart attempt number ``attempt`` (1-based, within the window).

    Always in ``[0, backoff.max]`` and finite, whatever the inputs: the jitter
    is drawn uniformly from ``[-jitter, +jitter]`` of the capped delay, then
    the result is clamped again, so jitter never pushes past the cap.
    """
    if attempt <= 1:
        return 0.0
    cap = _finite_nonneg(backoff.max)
    base = _finite_nonneg(backoff.base)
    factor = max(1.0, _finite_nonneg(backoff.factor))
    exponent = attempt - 2
    try:
        raw = base * factor**exponent
    except OverflowError:
        raw = math.inf
    capped = min(raw, cap) if not math.isnan(raw) else cap
    jitter = min(max(_finite_nonneg(backoff.jitter), 0.0), 1.0)
    spread = capped * jitter * rng.uniform(-1.0, 1.0)
    return min(max(capped + spread, 0.0), cap)


def remaining(delay: float, last_attempt_at: float | None, now: float) -> float:
    """What is left of ``delay`` after the previous attempt at ``last_attempt_at`` (monotonic)."""
    if last_attempt_at is None:
        return 0.0
    # A clock that went backwards (a different boot) must not turn into a huge wait.
    elapsed = max(0.0, now - last_attempt_at)
    return max(0.0, delay - elapsed)


def _finite_nonneg(value: float) -> float:
    if math.isnan(value) or value < 0:
        return 0.0
    if math.isinf(value):
        return 1e9
    return float(value)
