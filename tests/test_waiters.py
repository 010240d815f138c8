"""The waiters' bookkeeping without a bus: what is queued for whom, and how a wait ends.

Against systemd the waits are proven in tests/test_bus.py (both libraries).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from handlers.waiters import Waiters, apply_until
from unitgen.errors import BusConnectionLostError, SystemdError

UNIT = "org.freedesktop.systemd1.Unit"
SERVICE = "org.freedesktop.systemd1.Service"
PATH = "/org/freedesktop/systemd1/unit/a_2eservice"


def _state(props: dict[str, Any]) -> bool:
    return props.get("ActiveState") == "active"


@pytest.mark.asyncio
async def test_changes_go_to_the_waits_on_their_path_and_interface() -> None:
    waits = Waiters()
    unit_only = waits.add(PATH, (UNIT,))
    both = waits.add(PATH, (UNIT, SERVICE))
    other = waits.add(PATH + "x", (UNIT, SERVICE))
    waits.deliver(1, PATH, (SERVICE, {"Result": "signal"}, []))
    waits.deliver(2, PATH, (UNIT, {"ActiveState": "failed"}, ["Conditions"]))
    waits.deliver(3, PATH, ("not", "a", "triple", "at all"))  # malformed: logged, dropped
    assert unit_only.queue.qsize() == 1 and both.queue.qsize() == 2
    assert other.queue.empty()
    assert both.queue.get_nowait() == (1, SERVICE, {"Result": "signal"}, [])
    waits.drop(unit_only)
    waits.drop(both)
    waits.drop(both)  # twice is harmless
    assert list(waits.by_path) == [PATH + "x"]


@pytest.mark.asyncio
async def test_apply_until_skips_what_the_read_already_had_and_drops_invalidated() -> None:
    waits = Waiters()
    waiter = waits.add(PATH, (UNIT,))
    waits.deliver(4, PATH, (UNIT, {"ActiveState": "active"}, []))  # older than the read
    waits.deliver(6, PATH, (UNIT, {"SubState": "start"}, ["Conditions"]))
    waits.deliver(7, PATH, (UNIT, {"ActiveState": "active"}, []))
    props = {"ActiveState": "activating", "Conditions": ["x"]}
    loop = asyncio.get_running_loop()
    got = await apply_until(
        "a.service", waiter, _state, 1, loop.time() + 1, props, asyncio.Event(), {UNIT: 5}
    )
    assert got == {"ActiveState": "active", "SubState": "start"}


@pytest.mark.asyncio
async def test_a_lost_connection_ends_every_wait_at_once() -> None:
    waits = Waiters()
    waiter = waits.add(PATH, (UNIT,))
    gone = asyncio.Event()
    loop = asyncio.get_running_loop()
    wait = asyncio.ensure_future(
        apply_until("a.service", waiter, _state, 30, loop.time() + 30, {}, gone)
    )
    await asyncio.sleep(0)
    waits.lose(9)
    with pytest.raises(BusConnectionLostError, match="lost while waiting"):
        await asyncio.wait_for(wait, 5)


@pytest.mark.asyncio
async def test_the_deadline_names_the_state_reached() -> None:
    waiter = Waiters().add(PATH, (UNIT,))
    loop = asyncio.get_running_loop()
    props = {"ActiveState": "failed", "SubState": "failed"}
    with pytest.raises(SystemdError, match=r"0\.05s \(ActiveState=failed, SubState=failed\)"):
        await apply_until(
            "a.service", waiter, _state, 0.05, loop.time() + 0.05, props, asyncio.Event()
        )


def test_watched_replies_are_numbered() -> None:
    waits = Waiters()
    serials: list[int] = []
    hook = waits.watch_reply(serials)
    hook(12)
    assert serials == [12] and waits.replies == {12: 0}
