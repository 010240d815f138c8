"""Back-off delays: exponential, jittered within bounds, capped, first attempt immediate."""

from __future__ import annotations

import math
import random

from hypothesis import given
from hypothesis import strategies as st

from handlers.backoff import delay_for, remaining
from unitgen.model import Backoff


class _Fixed(random.Random):
    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def uniform(self, a: float, b: float) -> float:
        return a + (b - a) * self.value


def test_first_attempt_is_immediate() -> None:
    assert delay_for(1, Backoff(), random.Random(1)) == 0.0


def test_exponential_without_jitter() -> None:
    b = Backoff(base=5.0, factor=2.0, max=300.0, jitter=0.0)
    got = [delay_for(n, b, random.Random(1)) for n in range(1, 10)]
    assert got == [0.0, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 300.0, 300.0]


def test_jitter_extremes() -> None:
    b = Backoff(base=10.0, factor=2.0, max=300.0, jitter=0.1)
    assert delay_for(2, b, _Fixed(0.0)) == 9.0  # -10 %
    assert delay_for(2, b, _Fixed(1.0)) == 11.0  # +10 %
    # At the cap, +jitter is clamped: never beyond max.
    assert delay_for(30, b, _Fixed(1.0)) == 300.0
    assert delay_for(30, b, _Fixed(0.0)) == 270.0


def test_jitter_spreads_values() -> None:
    b = Backoff(base=10.0, factor=2.0, max=300.0, jitter=0.5)
    rng = random.Random(42)
    values = {round(delay_for(3, b, rng), 6) for _ in range(50)}
    assert len(values) > 40
    assert all(10.0 <= v <= 30.0 for v in values)


@given(
    st.integers(min_value=-10, max_value=100_000),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=0, max_value=2**32),
)
def test_always_finite_and_within_cap(
    attempt: int, base: float, factor: float, cap: float, jitter: float, seed: int
) -> None:
    b = Backoff(base=base, factor=factor, max=cap, jitter=jitter)
    d = delay_for(attempt, b, random.Random(seed))
    assert math.isfinite(d)
    assert d >= 0.0
    limit = 0.0 if math.isnan(cap) or cap < 0 else (1e9 if math.isinf(cap) else cap)
    assert d <= limit


def test_remaining_counts_from_the_previous_attempt() -> None:
    assert remaining(10.0, None, 100.0) == 0.0
    assert remaining(10.0, 95.0, 100.0) == 5.0
    assert remaining(10.0, 80.0, 100.0) == 0.0
    # A clock from another boot (last attempt "in the future") must not mean a longer wait.
    assert remaining(10.0, 500.0, 100.0) == 10.0
