"""Alerts against real receivers: HTTP servers, a hanging socket, aiosmtpd, a real script."""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import socket
import ssl
import stat
import subprocess
import time
from collections.abc import Iterator
from email import message_from_bytes
from email import policy as email_policy
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from receivers import HangingServer, Receiver, Recorded, closed_port

from handlers.alertmodel import ALERTMANAGER_FIRING_TTL
from handlers.alerts import Alert, Alerter, AlertTarget, Delivery
from handlers.outbound import MAX_REDIRECTS
from unitgen.errors import PolicyError

TOKEN = "s3cr3t-T0KEN-9f8e7d"
QTOKEN = "qS3cret-query-77"
USERPW = "pw-in-userinfo-55"
SECRETS = (TOKEN, QTOKEN, USERPW)


def secret_url(base: str) -> str:
    """``base`` (http://127.0.0.1:PORT) with a token in userinfo, path and query."""
    return base.replace("http://", f"http://user:{USERPW}@") + f"/hooks/{TOKEN}?token={QTOKEN}"


def write(path: Path, text: str) -> None:
    """Tiny test files, written synchronously: the blocking is immaterial here."""
    path.write_text(text)


def read(path: Path) -> str:
    return path.read_text()


def make_alert(**over: Any) -> Alert:
    fields: dict[str, Any] = {
        "unit": "api.service",
        "incident_id": "inc-42",
        "level": "restart",
        "status": "firing",
        "reason": "exit-code",
        "summary": "api.service failed 3 times",
        "attempts": 3,
        "started_at": 1_700_000_000.25,
        "ended_at": None,
        "host": "node1",
        "labels": {"team": "web"},
    }
    fields.update(over)
    return Alert(**fields)


def url_target(kind: str, url_file: Path, **over: Any) -> AlertTarget:
    d: dict[str, Any] = {"name": "ops", "type": kind, "url_file": str(url_file)}
    d.update(over)
    return AlertTarget.from_mapping(d)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


@pytest.fixture
def url_file(tmp_path: Path) -> Path:
    return tmp_path / "hook.url"


def assert_no_secret(*things: object) -> None:
    for thing in things:
        text = repr(thing)
        for secret in SECRETS:
            assert secret not in text, f"secret leaked into {text!r}"


# -- configuration -------------------------------------------------------------------


def test_from_mapping_defaults_and_types(tmp_path: Path) -> None:
    t = AlertTarget.from_mapping({"type": "slack", "url_env": "SLACK_URL"}, name="chat")
    assert (t.name, t.type, t.timeout, t.retries, t.send_resolved) == (
        "chat",
        "slack",
        5.0,
        3,
        True,
    )
    assert t.url_env == "SLACK_URL"
    am = AlertTarget.from_mapping(
        {
            "name": "am",
            "type": "alertmanager",
            "url_file": "/etc/unitgen/am.url",
            "labels": {"team": "sre", "severity": "page"},
            "timeout": 2,
            "retries": 0,
            "send_resolved": False,
        }
    )
    assert am.labels == {"team": "sre", "severity": "page"}
    assert (am.timeout, am.retries, am.send_resolved) == (2.0, 0, False)
    mail = AlertTarget.from_mapping(
        {
            "name": "mail",
            "type": "email",
            "smtp_host": "mx.example.org",
            "from": "unitgen@example.org",
            "to": ["ops@example.org", "b@example.org"],
            "starttls": True,
            "username": "u",
            "password_env": "SMTP_PW",
        }
    )
    assert (mail.smtp_port, mail.from_addr, mail.to) == (
        25,
        "unitgen@example.org",
        ("ops@example.org", "b@example.org"),
    )
    cmd = AlertTarget.from_mapping({"name": "hook", "type": "command", "command": ["/bin/x", "-v"]})
    assert cmd.command == ("/bin/x", "-v")


@pytest.mark.parametrize(
    ("mapping", "key"),
    [
        ({"type": "webhook", "url_env": "X"}, "alert.name"),
        ({"name": "a", "type": "pager", "url_env": "X"}, "alert.a.type"),
        # The spec's rule, at the table's key (docs/spec.md): one check for both sides.
        ({"name": "a", "type": "webhook"}, "alert.a: expected exactly one of url_file or url_env"),
        (
            {"name": "a", "type": "webhook", "url_env": "X", "url_file": "/x"},
            "alert.a: expected exactly one of url_file or url_env or url_credential, "
            "got url_file, url_env",
        ),
        ({"name": "a", "type": "webhook", "url_file": "rel/path"}, "alert.a.url_file"),
        ({"name": "a", "type": "webhook", "url_env": "BAD-NAME"}, "alert.a.url_env"),
        ({"name": "a", "type": "webhook", "url": "http://x/"}, "alert.a.url"),
        ({"name": "a", "type": "webhook", "url_env": "X", "timeout": "5s"}, "alert.a.timeout"),
        ({"name": "a", "type": "webhook", "url_env": "X", "timeout": 0}, "alert.a.timeout"),
        ({"name": "a", "type": "webhook", "url_env": "X", "retries": True}, "alert.a.retries"),
        ({"name": "a", "type": "webhook", "url_env": "X", "retries": 99}, "alert.a.retries"),
        ({"name": "a", "type": "slack", "url_env": "X", "send_resolved": 1}, "send_resolved"),
        ({"name": "a", "type": "webhook", "url_env": "X", "labels": {}}, "alert.a.labels"),
        (
            {"name": "a", "type": "alertmanager", "url_env": "X", "labels": {"unit": "x"}},
            "alert.a.labels.unit",
        ),
        (
            {"name": "a", "type": "alertmanager", "url_env": "X", "labels": {"a-b": "x"}},
            "alert.a.labels.a-b",
        ),
        (
            {"name": "a", "type": "alertmanager", "url_env": "X", "labels": {"t": 1}},
            "alert.a.labels.t",
        ),
        ({"name": "a", "type": "email", "from": "a@b", "to": ["c@d"]}, "alert.a.smtp_host"),
        ({"name": "a", "type": "email", "smtp_host": "h", "to": ["c@d"]}, "alert.a.from"),
        ({"name": "a", "type": "email", "smtp_host": "h", "from": "a@b", "to": []}, "alert.a.to"),
        (
            {
                "name": "a",
                "type": "email",
                "smtp_host": "h",
                "from": "a@b",
                "to": ["c@d\nBcc: x@y"],
            },
            "alert.a.to[0]",
        ),
        (
            {"name": "a", "type": "email", "smtp_host": "h", "from": "a@b", "to": ["c@d"]}
            | {"smtp_port": 70000},
            "alert.a.smtp_port",
        ),
        (
            {"name": "a", "type": "email", "smtp_host": "h", "from": "a@b", "to": ["c@d"]}
            | {"username": "u", "password_env": "P"},
            "alert.a.starttls",
        ),
        (
            {"name": "a", "type": "email", "smtp_host": "h", "from": "a@b", "to": ["c@d"]}
            | {"password_env": "P"},
            "alert.a.username",
        ),
        ({"name": "a", "type": "command", "command": ["rel"]}, "alert.a.command[0]"),
        ({"name": "a", "type": "command", "command": []}, "alert.a.command"),
        ({"name": "a", "type": "command", "command": "/bin/sh -c x"}, "alert.a.command"),
    ],
)
def test_from_mapping_rejects_with_key(mapping: dict[str, Any], key: str) -> None:
    with pytest.raises(PolicyError) as info:
        AlertTarget.from_mapping(mapping)
    message = str(info.value)
    assert key in message
    assert "\n" not in message


def test_time_bound_is_documented_formula() -> None:
    t = AlertTarget.from_mapping({"name": "a", "type": "webhook", "url_env": "X"})
    # 4 attempts of (2 x 5 s + 0.5 s) plus backoffs 0.5 + 1 + 2 = 45.5 s, capped at 30 s.
    assert t.time_bound(cap=1000) == pytest.approx(45.5)
    assert t.time_bound() == 30.0
    fast = AlertTarget.from_mapping(
        {"name": "a", "type": "webhook", "url_env": "X", "timeout": 0.5, "retries": 1}
    )
    assert fast.time_bound() == pytest.approx(2 * 1.5 + 0.5)
    assert Alerter([t, fast]).time_bound() == 30.0


# -- payloads through a real receiver ------------------------------------------------


def body(rec: Recorded) -> Any:
    assert rec.headers["Content-Type"] == "application/json"
    return json.loads(rec.body)


@pytest.mark.asyncio
async def test_webhook_payload_exact(receiver: Receiver, url_file: Path) -> None:
    write(url_file, receiver.url("/hook") + "\n")
    deliveries = await Alerter([url_target("webhook", url_file)]).send(make_alert())
    assert [(d.target, d.ok, d.error, d.attempts) for d in deliveries] == [("ops", True, None, 1)]
    (rec,) = receiver.wait_for(1)
    assert (rec.method, rec.path) == ("POST", "/hook")
    assert body(rec) == {
        "version": 1,
        "source": "unitgen",
        "status": "firing",
        "unit": "api.service",
        "incident_id": "inc-42",
        "level": "restart",
        "reason": "exit-code",
        "summary": "api.service failed 3 times",
        "attempts": 3,
        "host": "node1",
        "started_at": 1_700_000_000.25,
        "started_at_iso": "2023-11-14T22:13:20.250Z",
        "ended_at": None,
        "ended_at_iso": None,
        "labels": {"team": "web"},
    }


@pytest.mark.asyncio
async def test_webhook_url_from_env(receiver: Receiver) -> None:
    target = AlertTarget.from_mapping({"name": "ops", "type": "webhook", "url_env": "OPS_URL"})
    alerter = Alerter([target], env={"OPS_URL": receiver.url("/from-env")})
    (d,) = await alerter.send(make_alert(status="resolved", ended_at=1_700_000_100.0))
    assert d.ok
    (rec,) = receiver.wait_for(1)
    assert rec.path == "/from-env"
    assert body(rec)["status"] == "resolved"
    assert body(rec)["ended_at_iso"] == "2023-11-14T22:15:00.000Z"


@pytest.mark.asyncio
async def test_slack_payload_exact(receiver: Receiver, url_file: Path) -> None:
    write(url_file, receiver.url("/slack"))
    alert = make_alert(summary="restart <failed> & gave up", unit="a&b.service")
    (d,) = await Alerter([url_target("slack", url_file)]).send(alert)
    assert d.ok
    (rec,) = receiver.wait_for(1)
    text = (
        ":rotating_light: [FIRING] a&amp;b.service on node1: restart &lt;failed&gt; &amp; gave up"
    )
    assert body(rec) == {
        "text": text,
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": text}},
            {
                "type": "section",
                "fields": [
                    {"type": "mrkdwn", "text": "*Level*\nrestart"},
                    {"type": "mrkdwn", "text": "*Reason*\nexit-code"},
                    {"type": "mrkdwn", "text": "*Attempts*\n3"},
                    {"type": "mrkdwn", "text": "*Incident*\ninc-42"},
                    {"type": "mrkdwn", "text": "*Started*\n2023-11-14T22:13:20.250Z"},
                ],
            },
        ],
    }


def parse_iso(text: str) -> float:
    from datetime import datetime

    assert text.endswith("Z")
    return datetime.fromisoformat(text[:-1] + "+00:00").timestamp()


@pytest.mark.asyncio
async def test_alertmanager_firing_then_resolved(receiver: Receiver, url_file: Path) -> None:
    # A trailing slash on the base URL must not produce //api/v2/alerts.
    write(url_file, receiver.url("/") + "\n")
    target = url_target("alertmanager", url_file, labels={"team": "sre"})
    alerter = Alerter([target])
    started = time.time() - 60
    before = time.time()
    (d1,) = await alerter.send(make_alert(started_at=started))
    (d2,) = await alerter.send(make_alert(started_at=started, level="gave-up", summary="gave up"))
    ended = time.time() - 1
    (d3,) = await alerter.send(make_alert(started_at=started, status="resolved", ended_at=ended))
    after = time.time()
    assert [d1.ok, d2.ok, d3.ok] == [True, True, True]
    recs = receiver.wait_for(3)
    assert [(r.method, r.path) for r in recs] == [("POST", "/api/v2/alerts")] * 3
    firing, escalated, resolved = (body(r) for r in recs)
    for payload in (firing, escalated, resolved):
        assert isinstance(payload, list)
        assert len(payload) == 1
    expected_labels = {
        "alertname": "UnitgenRecovery",
        "unit": "api.service",
        "instance": "node1",
        "incident": "inc-42",
        "reason": "exit-code",
        "severity": "critical",
        "team": "sre",
    }
    # Same labels, so the same fingerprint: escalation updates, resolved closes it.
    assert firing[0]["labels"] == escalated[0]["labels"] == resolved[0]["labels"]
    assert firing[0]["labels"] == expected_labels
    assert firing[0]["startsAt"] == resolved[0]["startsAt"]
    assert abs(parse_iso(firing[0]["startsAt"]) - started) < 0.002
    # Firing: endsAt far in the future, so Alertmanager does not auto-resolve it.
    assert parse_iso(firing[0]["endsAt"]) >= before + ALERTMANAGER_FIRING_TTL - 1
    assert escalated[0]["annotations"]["level"] == "gave-up"
    assert escalated[0]["annotations"]["summary"] == "gave up"
    # Resolved: endsAt in the past (the recovery time), not before startsAt.
    ends = parse_iso(resolved[0]["endsAt"])
    assert started <= ends <= after
    assert abs(ends - ended) < 0.002
    assert firing[0]["annotations"]["status"] == "firing"
    assert resolved[0]["annotations"]["status"] == "resolved"


@pytest.mark.asyncio
async def test_alertmanager_resolved_without_end_uses_now(
    receiver: Receiver, url_file: Path
) -> None:
    write(url_file, receiver.url(""))
    before = time.time()
    (d,) = await Alerter([url_target("alertmanager", url_file)]).send(
        make_alert(status="resolved", started_at=before - 5)
    )
    assert d.ok
    (rec,) = receiver.wait_for(1)
    assert rec.path == "/api/v2/alerts"
    ends = parse_iso(body(rec)[0]["endsAt"])
    assert before - 0.01 <= ends <= time.time() + 0.01


# -- failure modes, time bounds, secrets ---------------------------------------------


@pytest.mark.asyncio
async def test_dead_endpoint_bounded_and_host_only(
    url_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    port = closed_port()
    write(url_file, secret_url(f"http://127.0.0.1:{port}"))
    target = url_target("webhook", url_file, timeout=0.5, retries=2)
    alerter = Alerter([target])
    start = time.monotonic()
    (d,) = await alerter.send(make_alert())
    elapsed = time.monotonic() - start
    assert elapsed < alerter.time_bound() + 5
    assert not d.ok
    assert d.attempts == 3
    assert d.error is not None
    assert f"webhook ops: POST to 127.0.0.1:{port} failed: ConnectionError" in d.error
    assert "connection refused" in d.error
    assert_no_secret(d, caplog.text)
    assert "hooks" not in (d.error or "")


@pytest.mark.asyncio
async def test_hanging_endpoint_bounded(url_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with HangingServer() as hang:
        write(url_file, secret_url(f"http://127.0.0.1:{hang.port}"))
        target = url_target("slack", url_file, timeout=0.5, retries=1)
        alerter = Alerter([target])
        bound = alerter.time_bound()
        assert bound == pytest.approx(3.5)
        start = time.monotonic()
        (d,) = await alerter.send(make_alert())
        elapsed = time.monotonic() - start
    assert elapsed < bound + 5
    assert elapsed >= 2 * 0.5  # both attempts really waited for an answer
    assert not d.ok
    assert d.attempts == 2
    assert d.error is not None
    assert f"127.0.0.1:{hang.port}" in d.error
    assert re.search(r"ReadTimeout|no answer within", d.error)
    assert_no_secret(d, caplog.text)


@pytest.mark.asyncio
async def test_send_bounded_by_max_send_seconds(url_file: Path) -> None:
    with HangingServer() as hang:
        write(url_file, hang.url())
        target = url_target("webhook", url_file, timeout=2.0, retries=5)
        alerter = Alerter([target], max_send_seconds=1.5)
        assert alerter.time_bound() == 1.5
        start = time.monotonic()
        (d,) = await alerter.send(make_alert())
        elapsed = time.monotonic() - start
    assert not d.ok
    assert d.attempts == 1
    assert elapsed < 1.5 + 5


@pytest.mark.asyncio
async def test_targets_run_concurrently(receiver: Receiver, tmp_path: Path) -> None:
    with HangingServer() as hang:
        (tmp_path / "hang.url").write_text(hang.url())
        (tmp_path / "good.url").write_text(receiver.url("/good"))
        slow = AlertTarget.from_mapping(
            {
                "name": "slow",
                "type": "webhook",
                "url_file": str(tmp_path / "hang.url"),
                "timeout": 1.0,
                "retries": 0,
            }
        )
        good = url_target("webhook", tmp_path / "good.url")
        start = time.monotonic()
        deliveries = await Alerter([slow, good]).send(make_alert())
        elapsed = time.monotonic() - start
    by_name = {d.target: d for d in deliveries}
    assert by_name["ops"].ok
    assert not by_name["slow"].ok
    # The good target did not wait behind the hanging one.
    assert min(d.duration for d in deliveries) < 1.0
    assert elapsed < slow.time_bound() + 5


@pytest.mark.asyncio
async def test_redirect_loop_capped_and_not_retried(
    url_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)

    def loop_route(rec: Recorded) -> tuple[int, dict[str, str], bytes]:
        return 307, {"Location": rec.path}, b""

    with Receiver(loop_route) as recv:
        write(url_file, secret_url(f"http://127.0.0.1:{recv.port}"))
        (d,) = await Alerter([url_target("webhook", url_file, retries=3)]).send(make_alert())
        # The first request plus MAX_REDIRECTS followed ones, and no retry.
        assert len(recv.wait_for(MAX_REDIRECTS + 1)) == MAX_REDIRECTS + 1
        time.sleep(0.2)  # noqa: ASYNC251 -- let a wrongly scheduled retry show up
        assert len(recv.requests) == MAX_REDIRECTS + 1
    assert not d.ok
    assert d.attempts == 1
    assert d.error is not None
    assert "TooManyRedirects" in d.error
    assert_no_secret(d, caplog.text)


@pytest.mark.asyncio
async def test_500_retried_with_backoff(receiver: Receiver, url_file: Path) -> None:
    receiver.script = [500, 503]
    write(url_file, receiver.url("/flaky"))
    (d,) = await Alerter([url_target("webhook", url_file, retries=3)]).send(make_alert())
    assert d.ok
    assert d.attempts == 3
    recs = receiver.wait_for(3)
    gaps = [b.at - a.at for a, b in itertools.pairwise(recs)]
    # Backoff ceilings are 0.5 s then 1 s; the jittered wait is at least half of each.
    assert gaps[0] >= 0.25
    assert gaps[1] >= 0.5
    assert all(body(r) == body(recs[0]) for r in recs)


@pytest.mark.asyncio
async def test_400_not_retried(receiver: Receiver, url_file: Path) -> None:
    receiver.script = [400, 400]
    write(url_file, receiver.url("/bad"))
    (d,) = await Alerter([url_target("webhook", url_file, retries=3)]).send(make_alert())
    assert not d.ok
    assert d.attempts == 1
    assert d.error is not None
    assert d.error.startswith(f"webhook ops: POST to 127.0.0.1:{receiver.port} returned HTTP 400")
    time.sleep(0.2)  # noqa: ASYNC251 -- give a wrong retry time to arrive
    assert len(receiver.requests) == 1


@pytest.mark.asyncio
async def test_429_retried(receiver: Receiver, url_file: Path) -> None:
    def route(_: Recorded) -> tuple[int, dict[str, str], bytes]:
        return 200, {}, b"ok"

    receiver.route = route
    receiver.script = [429]
    write(url_file, receiver.url("/rl"))
    (d,) = await Alerter([url_target("webhook", url_file, retries=1)]).send(make_alert())
    assert d.ok
    assert d.attempts == 2


@pytest.mark.asyncio
async def test_missing_secret_is_reported_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    missing = tmp_path / "nope.url"
    empty_env = AlertTarget.from_mapping({"name": "e", "type": "webhook", "url_env": "NOPE_URL"})
    deliveries = await Alerter([url_target("webhook", missing), empty_env], env={}).send(
        make_alert()
    )
    by_name = {d.target: d for d in deliveries}
    assert by_name["ops"].error == (
        f"webhook ops: url_file {missing}: cannot read (No such file or directory)"
    )
    assert by_name["e"].error == "webhook e: url_env NOPE_URL: variable is unset or empty"
    assert all(d.attempts == 0 and not d.ok for d in deliveries)


@pytest.mark.asyncio
async def test_non_http_url_refused_without_echo(url_file: Path) -> None:
    write(url_file, f"ftp://{TOKEN}@example.org/")
    (d,) = await Alerter([url_target("webhook", url_file)]).send(make_alert())
    assert not d.ok
    assert d.error == "webhook ops: the configured URL is not http(s)"
    assert_no_secret(d)


@pytest.mark.asyncio
async def test_send_resolved_false_skips_target(receiver: Receiver, url_file: Path) -> None:
    write(url_file, receiver.url())
    target = url_target("webhook", url_file, send_resolved=False)
    assert await Alerter([target]).send(make_alert(status="resolved", ended_at=time.time())) == []
    (d,) = await Alerter([target]).send(make_alert())
    assert d.ok


# -- email ---------------------------------------------------------------------------


class Mailbox:
    def __init__(self) -> None:
        self.envelopes: list[Any] = []
        self.logins: list[tuple[str, str]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.envelopes.append(envelope)
        return "250 OK"

    def authenticate(
        self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any
    ) -> AuthResult:
        self.logins.append((data.login.decode(), data.password.decode()))
        return AuthResult(success=True)


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def start_smtp(mailbox: Mailbox, **kwargs: Any) -> Controller:
    controller = Controller(mailbox, hostname="127.0.0.1", port=closed_port(), **kwargs)
    controller.start()
    return controller


def mail_target(port: int, **over: Any) -> AlertTarget:
    d: dict[str, Any] = {
        "name": "mail",
        "type": "email",
        "smtp_host": "127.0.0.1",
        "smtp_port": port,
        "from": "unitgen@example.org",
        "to": ["ops@example.org", "oncall@example.org"],
        "timeout": 5,
        "retries": 0,
    }
    d.update(over)
    return AlertTarget.from_mapping(d)


def parse_mail(envelope: Any) -> Any:
    return message_from_bytes(envelope.original_content, policy=email_policy.default)


@pytest.mark.asyncio
async def test_email_plain() -> None:
    mailbox = Mailbox()
    controller = start_smtp(mailbox)
    try:
        (d,) = await Alerter([mail_target(controller.port)]).send(make_alert())
    finally:
        controller.stop()
    assert d.ok, d.error
    (env,) = mailbox.envelopes
    assert env.mail_from == "unitgen@example.org"
    assert env.rcpt_tos == ["ops@example.org", "oncall@example.org"]
    msg = parse_mail(env)
    assert msg["From"] == "unitgen@example.org"
    assert msg["To"] == "ops@example.org, oncall@example.org"
    # strip(): folding a long Subject puts the text on a continuation line, and
    # Python's parser keeps that fold's leading space.
    assert msg["Subject"].strip() == (
        "[unitgen] FIRING api.service on node1 (restart): api.service failed 3 times"
    )
    assert msg["X-Unitgen-Incident"] == "inc-42"
    text = msg.get_content()
    assert "Unit:     api.service" in text
    assert "Reason:   exit-code" in text
    assert "Started:  2023-11-14T22:13:20.250Z" in text
    assert "api.service failed 3 times" in text


@pytest.mark.asyncio
async def test_email_starttls_with_login(
    tls_files: tuple[Path, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    cert, key = tls_files
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=str(cert))
    pw_file = tmp_path / "smtp.pw"
    write(pw_file, TOKEN + "\n")
    pw_file.chmod(stat.S_IRUSR | stat.S_IWUSR)
    mailbox = Mailbox()
    controller = start_smtp(
        mailbox,
        tls_context=server_ctx,
        require_starttls=True,
        authenticator=mailbox.authenticate,
        auth_required=True,
    )
    try:
        target = mail_target(
            controller.port, starttls=True, username="alerts", password_file=str(pw_file)
        )
        (d,) = await Alerter([target], ssl_context=client_ctx).send(
            make_alert(status="resolved", ended_at=1_700_000_100.0)
        )
        # The default trust store does not know our test CA: refused, not retried.
        (untrusted,) = await Alerter([mail_target(controller.port, starttls=True)]).send(
            make_alert()
        )
    finally:
        controller.stop()
    assert d.ok, d.error
    assert mailbox.logins == [("alerts", TOKEN)]
    (env,) = mailbox.envelopes
    msg = parse_mail(env)
    assert msg["Subject"].strip().startswith("[unitgen] RESOLVED api.service on node1")
    assert "Ended:    2023-11-14T22:15:00.000Z" in msg.get_content()
    assert not untrusted.ok
    assert untrusted.error == (
        f"email mail: SMTP to 127.0.0.1:{controller.port} failed: TLS certificate not trusted"
        " (after 1 attempt(s))"
    )
    assert_no_secret(d, untrusted, caplog.text)


@pytest.mark.asyncio
async def test_email_dead_server() -> None:
    port = closed_port()
    (d,) = await Alerter([mail_target(port, timeout=0.5, retries=1)]).send(make_alert())
    assert not d.ok
    assert d.attempts == 2
    assert d.error is not None
    assert d.error.startswith(f"email mail: SMTP to 127.0.0.1:{port} failed: ConnectionRefused")


# -- command -------------------------------------------------------------------------


def write_script(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


@pytest.mark.asyncio
async def test_command_alert_gets_json_env(tmp_path: Path) -> None:
    out = tmp_path / "alert.json"
    script = write_script(
        tmp_path / "hook.sh",
        f'#!/bin/sh\nprintf %s "$UNITGEN_ALERT" > {out}\n'
        f'printf "%s|%s|%s" "$UNITGEN_ALERT_UNIT" "$UNITGEN_ALERT_STATUS" "${{OPS_SECRET-unset}}"'
        f" > {out}.fields\n",
    )
    target = AlertTarget.from_mapping({"name": "hook", "type": "command", "command": [str(script)]})
    os.environ["OPS_SECRET"] = TOKEN
    try:
        (d,) = await Alerter([target]).send(make_alert(unit="we'ird\"%unit"))
    finally:
        del os.environ["OPS_SECRET"]
    assert d.ok, d.error
    payload = json.loads(read(out))
    assert payload["unit"] == "we'ird\"%unit"
    assert payload["version"] == 1
    assert payload["incident_id"] == "inc-42"
    # unitgen's own environment (where url_env secrets live) is not passed on.
    assert read(Path(f"{out}.fields")) == "we'ird\"%unit|firing|unset"


@pytest.mark.asyncio
async def test_command_alert_failure_and_timeout(tmp_path: Path) -> None:
    fail = write_script(tmp_path / "fail.sh", "#!/bin/sh\nexit 3\n")
    hang = write_script(tmp_path / "hang.sh", "#!/bin/sh\nexec sleep 30\n")
    targets = [
        AlertTarget.from_mapping(
            {"name": "fail", "type": "command", "command": [str(fail)], "retries": 1}
        ),
        AlertTarget.from_mapping(
            {
                "name": "hang",
                "type": "command",
                "command": [str(hang)],
                "timeout": 0.5,
                "retries": 0,
            }
        ),
    ]
    start = time.monotonic()
    deliveries = await Alerter(targets).send(make_alert())
    elapsed = time.monotonic() - start
    by_name = {d.target: d for d in deliveries}
    assert by_name["fail"].error == f"command fail: {fail}: exit code 3 (after 2 attempt(s))"
    assert by_name["hang"].error is not None
    assert "timed out" in by_name["hang"].error
    assert elapsed < targets[1].time_bound() + targets[0].time_bound() + 5


def test_delivery_is_plain_data() -> None:
    d = Delivery("ops", False, "webhook ops: POST to h:1 failed: X", 2, 0.5)
    assert (d.target, d.ok, d.attempts) == ("ops", False, 2)


def test_socket_cleanup_helpers_work() -> None:
    # closed_port really is closed: the dead-endpoint tests rely on it.
    port = closed_port()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


SPEC_WITH_EVERY_ALERT = """
[defaults]
alerts = ["hook", "chat", "am", "mail", "cmd"]

[alert.hook]
type = "webhook"
url_file = "/etc/unitgen/hook.url"
timeout = "2s"
retries = 1
send_resolved = false

[alert.chat]
type = "slack"
url_env = "SLACK_URL"

[alert.am]
type = "alertmanager"
url_file = "/etc/unitgen/am.url"
labels = { team = "sre" }

[alert.mail]
type = "email"
smtp_host = "mx.example.org"
smtp_port = 587
starttls = true
from = "unitgen@example.org"
to = ["ops@example.org"]
username = "unitgen"
password_file = "/etc/unitgen/smtp.pw"

[alert.cmd]
type = "command"
command = ["/usr/local/bin/page", "--now"]

[service.api]
exec = ["/usr/bin/python3", "-m", "http.server"]
"""


def test_every_spec_alert_reaches_from_mapping_through_the_policy_file() -> None:
    """The spec validator and AlertTarget.from_mapping accept the same tables."""
    from unitgen.policy import from_json, policy_from_service, to_json
    from unitgen.specfile import parse_spec

    spec = parse_spec(SPEC_WITH_EVERY_ALERT, "spec.toml")
    mappings = tuple({**a.config, "name": a.name, "type": a.type} for a in spec.alerts.values())
    policy = from_json(to_json(policy_from_service(spec.services["api"], mappings)), "p.json")
    targets = {t.name: t for t in (AlertTarget.from_mapping(m) for m in policy.alerts)}
    assert set(targets) == {"hook", "chat", "am", "mail", "cmd"}
    assert (targets["hook"].timeout, targets["hook"].retries) == (2.0, 1)
    assert targets["hook"].send_resolved is False
    assert targets["chat"].url_env == "SLACK_URL"
    assert targets["am"].labels == {"team": "sre"}
    assert (targets["mail"].smtp_port, targets["mail"].password_file) == (
        587,
        "/etc/unitgen/smtp.pw",
    )
    assert targets["cmd"].command == ("/usr/local/bin/page", "--now")


@pytest.mark.asyncio
async def test_url_file_fifo_refused_without_hanging(tmp_path: Path) -> None:
    fifo = tmp_path / "hook.url"
    os.mkfifo(fifo)
    start = time.monotonic()
    (d,) = await Alerter([url_target("webhook", fifo, timeout=2.0)]).send(make_alert())
    assert time.monotonic() - start < 2.0
    assert d.error == f"webhook ops: url_file {fifo}: not a regular file"
    assert d.attempts == 0


@pytest.mark.asyncio
async def test_world_readable_secret_file_warns(
    receiver: Receiver, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="handlers.secrets")
    private, public = tmp_path / "private.url", tmp_path / "public.url"
    for path, mode in ((private, 0o600), (public, 0o644)):
        write(path, receiver.url(f"/{TOKEN}"))
        path.chmod(mode)
    deliveries = await Alerter([url_target("webhook", private), url_target("slack", public)]).send(
        make_alert()
    )
    assert all(d.ok for d in deliveries)
    warnings = [r.getMessage() for r in caplog.records if r.name == "handlers.secrets"]
    assert warnings == [f"slack ops: url_file {public} is readable by every user; chmod o-r it"]
    assert_no_secret(caplog.text)
