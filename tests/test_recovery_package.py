"""handlers.recovery is a package: the names callers import stay where they were."""

from __future__ import annotations

from pathlib import Path

import pytest

import handlers.recovery

# Every public name of the engine when it was one module, and the private ones the
# tests import.
NAMES = [
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
    "_on_same_filesystem",
    "_probe",
    "_test_pause",
    "_validate",
]


@pytest.mark.parametrize("name", NAMES)
def test_the_package_keeps_the_modules_names(name: str) -> None:
    assert hasattr(handlers.recovery, name)


def test_no_module_of_the_package_is_over_800_lines() -> None:
    here = Path(handlers.recovery.__file__).parent
    sizes = {p.name: len(p.read_text().splitlines()) for p in here.glob("*.py")}
    assert len(sizes) > 5
    assert {n: s for n, s in sizes.items() if s > 800} == {}
