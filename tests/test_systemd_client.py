"""The engine's systemd seam: every fake the tests hand the engine is a whole SystemdClient.

mypy checks the product code's clients (handlers.bus.SystemdBus, the history
commands' NoBus) where they are passed to the engine, but not the tests: this
checks the tests' fakes the same way, member by member and signature by
signature, so a call the engine starts making cannot go missing from a fake.
"""

from __future__ import annotations

import inspect

import pytest
from clocks import FakeClock
from test_recovery import FakeBus, FakeUnit
from test_recovery_storm import TimedBus

from handlers.bus import SystemdBus
from handlers.busretry import RetryingBus
from handlers.diagnose import SystemdClient
from unitgen.commands.recover import NoBus

MEMBERS = sorted(
    {n for n in vars(SystemdClient) if not n.startswith("_")} | set(SystemdClient.__annotations__)
)
CLIENTS = [FakeBus, TimedBus, NoBus, SystemdBus, RetryingBus]


def test_the_protocol_names_what_the_engine_calls() -> None:
    assert {"get_property", "list_units", "expect_changes", "forget", "wait_for"} <= set(MEMBERS)


@pytest.mark.parametrize(
    "client", [FakeBus(), TimedBus(FakeUnit("a.service"), FakeClock()), NoBus()]
)
def test_fakes_are_systemd_clients(client: object) -> None:
    assert isinstance(client, SystemdClient)


@pytest.mark.parametrize("cls", CLIENTS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("member", MEMBERS)
def test_every_member_takes_the_protocols_arguments(cls: type, member: str) -> None:
    assert hasattr(cls, member), f"{cls.__name__} lacks {member}"
    wanted = getattr(SystemdClient, member, None)
    if not callable(wanted):
        return  # a data member (selects_interfaces): present is all
    got = getattr(cls, member)
    assert inspect.iscoroutinefunction(got) == inspect.iscoroutinefunction(wanted), member
    have = inspect.signature(got).parameters
    for name, param in inspect.signature(wanted).parameters.items():
        assert name in have, f"{cls.__name__}.{member} lacks the argument {name}"
        assert have[name].kind == param.kind, f"{cls.__name__}.{member}({name}): {param.kind}"
        if param.default is not inspect.Parameter.empty:
            assert have[name].default is not inspect.Parameter.empty, f"{member}({name})"
