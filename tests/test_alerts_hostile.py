"""Hostile unit names, reasons and summaries through every alert payload (hypothesis)."""

from __future__ import annotations

import asyncio
import json
import re
import unicodedata
from email import message_from_bytes
from email import policy as email_policy
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from receivers import Receiver, closed_port

from handlers.alertpayloads import (
    alertmanager_payload,
    command_env,
    email_message,
    slack_payload,
    webhook_payload,
)
from handlers.alerts import Alert, Alerter, AlertTarget
from handlers.secrets import describe_exception, endpoint

# Newlines, quotes, %, specifiers, header look-alikes, unicode, and lone surrogates.
hostile = st.one_of(
    st.text(max_size=80),
    st.text(alphabet=st.characters(exclude_categories=[]), max_size=40),
    st.sampled_from(
        [
            "x\r\nBcc: evil@example.org",
            "x\nSubject: injected",
            "%n%s%%{}",
            "\"quoted\" 'single' `back`",
            "<!channel> <@U123> &amp;",
            "\u2028line\u2029sep\x85nel",
            "\x00nul\x1bESC",
            "ünïcödé 🚨 ש",
            "\udcff lone surrogate",
            "",
        ]
    ),
)

HEADERS = {
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "X-Unitgen-Status",
    "X-Unitgen-Incident",
    "Content-Type",
    "Content-Transfer-Encoding",
    "MIME-Version",
}


def alert_of(unit: str, reason: str, summary: str, status: str = "firing") -> Alert:
    return Alert(
        unit=unit,
        incident_id=f"inc-{reason[:10]}",
        level="restart",
        status="firing" if status == "firing" else "resolved",
        reason=reason,
        summary=summary,
        attempts=2,
        started_at=1_700_000_000.0,
        ended_at=None if status == "firing" else 1_700_000_050.0,
        host=f"host {unit[:5]}",
        labels={"team": reason, "bad-label name": summary},
    )


MAIL = AlertTarget.from_mapping(
    {
        "name": "m",
        "type": "email",
        "smtp_host": "127.0.0.1",
        "from": "unitgen@example.org",
        "to": ["ops@example.org"],
    }
)


def check_email_bytes(raw: bytes, alert: Alert) -> None:
    head, _, _ = raw.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        # Every header line is a known header or a folded continuation: nothing injected.
        assert line[:1] in (b" ", b"\t") or line.split(b":", 1)[0].decode() in HEADERS, line
    assert b"\n" not in head.replace(b"\r\n", b"")
    assert b"\r" not in head.replace(b"\r\n", b"")
    msg = message_from_bytes(raw, policy=email_policy.default)
    assert set(msg.keys()) == HEADERS
    assert msg.get_all("To") == ["ops@example.org"]
    subject = str(msg["Subject"])
    assert "\n" not in subject
    assert "\r" not in subject
    assert len(subject.strip()) <= 200
    # No terminal escapes or other control characters reach a mail reader either.
    assert not any(unicodedata.category(c) == "Cc" for c in subject)
    assert msg["X-Unitgen-Status"] == alert.status
    msg.get_content()  # decodes


@settings(max_examples=300, deadline=None)
@given(unit=hostile, reason=hostile, summary=hostile, resolved=st.booleans())
def test_every_payload_is_valid(unit: str, reason: str, summary: str, resolved: bool) -> None:
    alert = alert_of(unit, reason, summary, "resolved" if resolved else "firing")

    hook = json.loads(json.dumps(webhook_payload(alert)).encode("ascii"))
    assert (hook["unit"], hook["reason"], hook["summary"]) == (unit, reason, summary)
    assert hook["version"] == 1

    slack = json.loads(json.dumps(slack_payload(alert)).encode("ascii"))
    # Slack's control sequences (<!channel>, <@user>) cannot be smuggled in.
    for text in [slack["text"], *(f["text"] for f in slack["blocks"][1]["fields"])]:
        assert "<" not in text
        assert ">" not in text

    (am,) = json.loads(json.dumps(alertmanager_payload(alert, {"env": "prod"})).encode("ascii"))
    assert am["labels"]["unit"] == unit
    assert am["labels"]["reason"] == reason
    assert all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k) for k in am["labels"])
    assert all(isinstance(v, str) for v in am["labels"].values())
    assert am["annotations"]["summary"] == summary

    env = command_env(alert, "hook")
    assert all("\x00" not in v for v in env.values())
    assert json.loads(env["UNITGEN_ALERT"])["summary"] == summary

    check_email_bytes(email_message(alert, MAIL).as_bytes(), alert)


class _Box:
    def __init__(self) -> None:
        self.envelopes: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.envelopes.append(envelope)
        return "250 OK"


def test_hostile_alerts_delivered_end_to_end(tmp_path: Path) -> None:
    """The same values over real sockets: the receivers parse what was sent."""
    box = _Box()
    smtp = Controller(box, hostname="127.0.0.1", port=closed_port())
    smtp.start()
    try:
        with Receiver() as recv:
            (tmp_path / "hook.url").write_text(recv.url("/hook"))
            (tmp_path / "am.url").write_text(recv.url(""))
            targets = [
                AlertTarget.from_mapping(
                    {"name": "h", "type": "webhook", "url_file": str(tmp_path / "hook.url")}
                ),
                AlertTarget.from_mapping(
                    {"name": "a", "type": "alertmanager", "url_file": str(tmp_path / "am.url")}
                ),
                AlertTarget.from_mapping(
                    {
                        "name": "m",
                        "type": "email",
                        "smtp_host": "127.0.0.1",
                        "smtp_port": smtp.port,
                        "from": "unitgen@example.org",
                        "to": ["ops@example.org"],
                    }
                ),
            ]
            alerter = Alerter(targets)
            sent: list[Alert] = []

            @settings(
                max_examples=25,
                deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture],
            )
            @given(unit=hostile, reason=hostile, summary=hostile)
            def deliver(unit: str, reason: str, summary: str) -> None:
                alert = alert_of(unit, reason, summary)
                deliveries = asyncio.run(alerter.send(alert))
                assert all(d.ok for d in deliveries), deliveries
                sent.append(alert)

            deliver()
            recs = recv.wait_for(2 * len(sent))
    finally:
        smtp.stop()
    hooks = [json.loads(r.body) for r in recs if r.path == "/hook"]
    ams = [json.loads(r.body) for r in recs if r.path == "/api/v2/alerts"]
    assert len(hooks) == len(ams) == len(box.envelopes) == len(sent)
    # Each example is sent and awaited before the next, so arrival order is sending order.
    for alert, hook, am, env in zip(sent, hooks, ams, box.envelopes, strict=True):
        assert hook["unit"] == alert.unit
        assert hook["summary"] == alert.summary
        assert am[0]["labels"]["reason"] == alert.reason
        assert env.rcpt_tos == ["ops@example.org"]
        check_email_bytes(env.original_content, alert)


SECRET = "Zq9SECRETzq9"
url_text = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=12)


@settings(max_examples=300, deadline=None)
@given(
    scheme=st.sampled_from(["http", "https", "HTTP", "ftp", ""]),
    host=st.one_of(st.from_regex(r"[a-z0-9.-]{1,20}", fullmatch=True), url_text),
    port=st.one_of(st.none(), st.integers(-5, 70000).map(str), url_text),
    where=st.sampled_from(["userinfo", "password", "path", "query", "fragment"]),
    noise=url_text,
)
def test_endpoint_never_shows_the_secret(
    scheme: str, host: str, port: str | None, where: str, noise: str
) -> None:
    user = f"{SECRET}@" if where == "userinfo" else (f"u:{SECRET}@" if where == "password" else "")
    path = f"/hooks/{SECRET}/{noise}" if where == "path" else f"/{noise}"
    query = f"?token={SECRET}" if where == "query" else ""
    frag = f"#{SECRET}" if where == "fragment" else ""
    netloc = f"{user}{host}" + (f":{port}" if port is not None else "")
    url = f"{scheme}://{netloc}{path}{query}{frag}"
    shown = endpoint(url)
    assert SECRET not in shown
    assert "\\n" not in shown


@settings(max_examples=200, deadline=None)
@given(message=st.text(max_size=50))
def test_describe_exception_never_reads_the_message(message: str) -> None:
    import requests

    secret_message = f"{message} https://u:{SECRET}@h/{SECRET}"
    for exc in (
        requests.ConnectionError(secret_message),
        requests.ConnectTimeout(secret_message),
        OSError(111, secret_message),
        ValueError(secret_message),
    ):
        assert SECRET not in describe_exception(exc)
