"""Alertmanager clusters and re-sends against real sockets (the real binary:
tests/test_alerts_alertmanager.py): every member gets it, a dead or hanging member
delays no other and leaks nothing, the keeper re-sends until resolved."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from datetime import datetime
from typing import Any

import pytest
from receivers import HangingServer, Receiver, closed_port

from handlers.alertkeeper import AlertKeeper
from handlers.alerts import Alert, Alerter, AlertTarget, alertmanager_urls

TOKEN = "s3cr3t-T0KEN"  # planted in URLs; must never show


def alert(**over: Any) -> Alert:
    fields: dict[str, Any] = {
        "unit": "api.service", "incident_id": "inc-1", "level": "restart",
        "status": "firing", "reason": "exit-code", "summary": "api.service failed",
        "attempts": 1, "started_at": time.time() - 10, "ended_at": None, "host": "node1",
    }  # fmt: skip
    fields.update(over)
    return Alert(**fields)


def target(**over: Any) -> AlertTarget:
    fields: dict[str, Any] = {
        "name": "am", "type": "alertmanager", "timeout": 0.5, "retries": 1,
        "send_resolved": True, "url_env": "AM",
    }  # fmt: skip
    fields.update(over)
    return AlertTarget(**fields)


def test_member_lists() -> None:
    assert alertmanager_urls(" http://a:9093\nhttp://b:9093/ ,http://a:9093,,\n") == [
        "http://a:9093",
        "http://b:9093/",
    ]
    assert alertmanager_urls(" \n, ") == []


@pytest.mark.asyncio
async def test_every_live_member_gets_it_and_dead_ones_delay_nobody(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    with Receiver() as one, Receiver() as two, HangingServer() as hanging:
        dead = f"http://127.0.0.1:{closed_port()}/{TOKEN}"
        hung = f"http://user:{TOKEN}@127.0.0.1:{hanging.port}/?k={TOKEN}"
        urls = f"{dead}\n{hung}\n{one.url()}\n{two.url('/prefix')}"
        t = target(resend_interval=45.0)
        started = time.monotonic()
        (d,) = await Alerter([t], env={"AM": urls}).send(alert())
        took = time.monotonic() - started
        assert d.ok and d.error is not None
        assert took <= t.time_bound() + 1.0
        for r, path in ((one, "/api/v2/alerts"), (two, "/prefix/api/v2/alerts")):
            (req,) = r.wait_for(1)
            assert req.path == path
            (body,) = json.loads(req.body)
            assert body["generatorURL"] == "unitgen://node1/api.service?incident=inc-1"
            ends = datetime.fromisoformat(body["endsAt"].replace("Z", "+00:00")).timestamp()
            assert abs(ends - (time.time() + 4 * 45.0)) < 10
        # The live members were not retried; the dead ones were, within the bound.
        assert len(one.requests) == len(two.requests) == 1
    assert TOKEN not in (d.error or "")
    assert TOKEN not in caplog.text


@pytest.mark.asyncio
async def test_no_live_member_is_a_failed_delivery_within_the_bound() -> None:
    with HangingServer() as hanging:
        urls = f"http://127.0.0.1:{closed_port()},{hanging.url()}"
        t = target()
        started = time.monotonic()
        (d,) = await Alerter([t], env={"AM": urls}).send(alert())
    assert not d.ok and d.attempts == 2
    assert time.monotonic() - started <= t.time_bound() + 1.0


@pytest.mark.asyncio
async def test_a_member_that_is_not_http_refuses_the_list_without_showing_it() -> None:
    (d,) = await Alerter([target()], env={"AM": f"http://ok:1 ftp://{TOKEN}@h"}).send(alert())
    assert not d.ok and d.error == "alertmanager am: a configured URL is not http(s)"


@pytest.mark.asyncio
async def test_the_keeper_re_sends_until_resolved() -> None:
    with Receiver() as am:
        t = target(resend_interval=0.2)
        keeper = AlertKeeper()
        alerter = Alerter([t], env={"AM": am.url()}, keeper=keeper)
        try:
            await alerter.send(alert())
            await asyncio.to_thread(am.wait_for, 3)  # the send, then re-sends
            assert len(keeper) == 1 and keeper.resends >= 2
            # An escalation replaces the kept alert: the next re-sends carry it.
            await alerter.send(alert(level="cleanup-then-restart"))
            n = len(am.requests)
            await asyncio.to_thread(am.wait_for, n + 1)
            (body,) = json.loads(am.requests[-1].body)
            assert body["annotations"]["level"] == "cleanup-then-restart"
            assert len(keeper) == 1
            await alerter.send(alert(status="resolved", ended_at=time.time()))
            assert len(keeper) == 0
        finally:
            await keeper.aclose()
        # Closed: a later alert is sent, not kept.
        await alerter.send(alert(incident_id="inc-2"))
        assert len(keeper) == 0


@pytest.mark.asyncio
async def test_a_restarted_daemon_keeps_given_up_alerts_firing() -> None:
    from handlers.alertkeeper import readopt
    from handlers.store import Stamp, Store

    store = Store.in_memory()
    at = Stamp(mono=10.0, wall=time.time() - 600, boot="b")

    def incident(unit: str, state: str, statuses: tuple[str, ...]) -> str:
        inc = store.open_incident(
            unit, source="listener", invocation_id="", classification="exit-code", level=4, at=at
        )
        if state != "open":
            store.close_incident(inc, state=state, reason="budget", at=at)
        for status in statuses:
            store.claim_alert(inc, "alert-and-stop" if status == "firing" else "", status, 1.0)
        return inc

    down = incident("down.service", "gave-up", ("firing",))
    incident("resolved.service", "gave-up", ("firing", "resolved"))
    incident("recovered.service", "recovered", ("firing",))
    incident("quiet.service", "gave-up", ())
    incident("hooked.service", "gave-up", ("firing",))  # a webhook only: nothing to keep
    with Receiver() as am:
        keeper = AlertKeeper()
        targets = {"am": target(resend_interval=60.0)}
        hook = AlertTarget(name="hook", type="webhook", timeout=1.0, retries=0,
                           send_resolved=True, url_env="AM")  # fmt: skip

        def alerter_for(unit: str) -> Alerter:
            chosen = [hook] if unit == "hooked.service" else list(targets.values())
            return Alerter(chosen, env={"AM": am.url()}, keeper=keeper)

        try:
            assert readopt(keeper, store, alerter_for, "node1") == 1
            assert len(keeper) == 1
            # Sent at once, not one interval later: the old endsAt may have passed.
            (req,) = await asyncio.to_thread(am.wait_for, 1)
        finally:
            await keeper.aclose()
            store.close()
    (body,) = json.loads(req.body)
    assert body["labels"]["incident"] == down
    assert body["labels"]["unit"] == "down.service"
    assert body["labels"]["reason"] == "exit-code"  # the same identity the ladder sent
    assert body["labels"]["instance"] == "node1"
    assert body["annotations"]["level"] == "alert-and-stop"
