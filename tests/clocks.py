"""A fake clock for fast tests of pure logic: time moves only when told to, or on sleep."""

from __future__ import annotations


class FakeClock:
    """Monotonic and wall time that advance together; ``sleep`` records and advances.

    Pass ``clock.monotonic`` (or the clock itself, which is callable) where code
    takes a ``Callable[[], float]``, and ``clock.sleep`` for ``asyncio.sleep``.
    """

    def __init__(self) -> None:
        self.mono = 1000.0
        self.wall = 1_700_000_000.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.mono

    def __call__(self) -> float:
        return self.mono

    def time(self) -> float:
        return self.wall

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall += seconds

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.advance(seconds)
