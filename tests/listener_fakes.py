"""What a fake engine given to the Listener needs beside ``recover``: no groups, no parking."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from handlers.adoption import Unowned


class EngineHooks:
    """The Recoverer protocol's incident-group and parking members, doing nothing."""

    on_parking: Callable[[str, Any], None] | None = None

    def set_wait_hook(self, hook: Callable[[int], None] | None) -> None:
        pass

    def parked_units(self) -> list[Any]:
        return []

    def remind_parked(self, unit: str, day: int) -> None:
        pass

    async def check_parked(self, unit: str, checks: tuple[str, ...]) -> tuple[bool, str]:
        return False, "a fake engine parks nothing"

    def resolve_orphaned(self, active: Callable[[str], bool]) -> list[str]:
        return []

    def unowned_incidents(self) -> Unowned:
        return Unowned([], [])

    def parked_info(self, unit: str) -> Any:
        return None
