"""The seam between the listener and the recovery engine, as typed interfaces.

The listener (:mod:`handlers.listener`) loads without the engine; what it needs
of :class:`handlers.recovery.RecoveryEngine` is :class:`Recoverer`, which mypy
checks the engine and the tests' fakes against.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from handlers.adoption import Unowned
    from handlers.bus import SystemdBus
    from handlers.diagnose import SystemdClient
    from handlers.parking import ParkedUnit
    from handlers.recovery import Outcome, Trigger, TriggerSource

__all__ = ["ConnectHook", "EngineFactory", "Recoverer", "TriggerFactory"]


class Recoverer(Protocol):
    """What the listener needs of :class:`handlers.recovery.RecoveryEngine`.

    One engine lives as long as the listener (it holds the SQLite store); after
    a reconnect its ``bus`` is pointed at the new connection (a
    :class:`~handlers.busretry.RetryingBus` is handed it instead).
    """

    bus: SystemdClient
    # Told how each run ended: parked (what it waits for), or not (any more).
    on_parking: Callable[[str, ParkedUnit | None], None] | None

    async def recover(self, unit: str, trigger: Trigger) -> Outcome: ...

    async def aclose(self) -> None: ...

    # Incident groups: +1 when a run starts waiting for its cause, -1 when done.
    def set_wait_hook(self, hook: Callable[[int], None] | None) -> None: ...

    # Parked units: the history's and the ledger's, a day's reminder, the checks.
    def parked_units(self) -> list[ParkedUnit]: ...

    def remind_parked(self, unit: str, day: int) -> None: ...

    def parked_info(self, unit: str) -> ParkedUnit | None: ...

    async def check_parked(self, unit: str, checks: tuple[str, ...]) -> tuple[bool, str]: ...

    # Open incidents no run works on: their owner died, or they were left to systemd.
    def unowned_incidents(self) -> Unowned: ...

    # "Resolved" alerts a dead owner left unsent, for units ``up`` says are active.
    def resolve_orphaned(self, active: Callable[[str], bool]) -> list[str]: ...


class TriggerFactory(Protocol):
    """Makes the ladder's :class:`~handlers.recovery.Trigger` (the class itself fits)."""

    def __call__(
        self,
        *,
        source: TriggerSource,
        invocation_id: str = "",
        result: str = "",
        reason: str = "",
        snapshot: Mapping[str, Any] | None = None,
        settled: bool = False,
    ) -> Trigger: ...


EngineFactory = Callable[["SystemdBus"], Recoverer]
ConnectHook = Callable[["SystemdBus"], Awaitable[None]]
