"""What each kind of alert target receives: the JSON bodies, the mail, the hook's environment.

Pure functions of an :class:`~handlers.alertmodel.Alert` (and, for the mail,
its target); the formats are documented in ``docs/alerts.md``.
:mod:`handlers.alerts` sends them.
"""

from __future__ import annotations

import json
import re
import time
import unicodedata
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from handlers.alertmodel import DEFAULT_RESEND_INTERVAL, ENDS_AFTER_INTERVALS, Alert, AlertTarget

if TYPE_CHECKING:
    # Imported where used instead: the email package costs tens of ms (see handlers.alerts).
    from email.message import EmailMessage

__all__ = [
    "ALERTNAME",
    "PAYLOAD_VERSION",
    "alertmanager_labels",
    "alertmanager_payload",
    "command_env",
    "email_message",
    "email_subject",
    "generator_url",
    "slack_payload",
    "webhook_payload",
]

PAYLOAD_VERSION = 1
ALERTNAME = "UnitgenRecovery"


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def webhook_payload(alert: Alert) -> dict[str, Any]:
    """The generic JSON webhook body (version 1); ``digest`` only when the alert has one."""
    payload: dict[str, Any] = {
        "version": PAYLOAD_VERSION,
        "source": "unitgen",
        "status": alert.status,
        "unit": alert.unit,
        "incident_id": alert.incident_id,
        "level": alert.level,
        "reason": alert.reason,
        "summary": alert.summary,
        "attempts": alert.attempts,
        "host": alert.host,
        "started_at": alert.started_at,
        "started_at_iso": _iso(alert.started_at),
        "ended_at": alert.ended_at,
        "ended_at_iso": _iso(alert.ended_at) if alert.ended_at is not None else None,
        "labels": dict(alert.labels),
        **({"members": list(alert.members)} if alert.members else {}),
    }
    if alert.digest:
        payload["digest"] = [dict(d) for d in alert.digest]
    return payload


def _slack_escape(text: str, limit: int) -> str:
    # Slack's mrkdwn treats these three as control characters, nothing else.
    escaped = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return escaped if len(escaped) <= limit else escaped[: limit - 1] + "…"


def slack_payload(alert: Alert) -> dict[str, Any]:
    """A Slack incoming-webhook body: ``text`` (the notification) and ``blocks``."""
    icon = ":rotating_light:" if alert.status == "firing" else ":white_check_mark:"
    head = f"{icon} [{alert.status.upper()}] {alert.unit} on {alert.host}"
    text = _slack_escape(f"{head}: {alert.summary}", 2900)

    def fld(label: str, value: str) -> dict[str, str]:
        return {"type": "mrkdwn", "text": f"*{label}*\n{_slack_escape(value, 1900)}"}

    return {
        "text": text,
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": text}},
            {
                "type": "section",
                "fields": [
                    fld("Level", alert.level),
                    fld("Reason", alert.reason),
                    fld("Attempts", str(alert.attempts)),
                    fld("Incident", alert.incident_id),
                    fld("Started", _iso(alert.started_at)),
                ],
            },
        ],
    }


def _label_name(name: str) -> str:
    clean = re.sub(r"[^A-Za-z0-9_]", "_", name)
    return clean if clean and not clean[0].isdigit() else f"_{clean}"


def alertmanager_labels(alert: Alert, target_labels: Mapping[str, str]) -> dict[str, str]:
    """The identity of the alert in Alertmanager; identical for firing and resolved."""
    labels: dict[str, str] = {"severity": "critical"}
    for k, v in alert.labels.items():
        labels[_label_name(k)] = v
    labels.update(target_labels)
    labels.update(
        {
            "alertname": ALERTNAME,
            "unit": alert.unit,
            "instance": alert.host,
            "incident": alert.incident_id,
            "reason": alert.reason,
        }
    )
    return labels


def generator_url(alert: Alert, configured: str | None = None) -> str:
    """Where the alert came from: the target's ``generator_url``, else a unitgen:// URI
    naming the host, the unit and the incident (what ``unitgen status`` shows)."""
    if configured:
        return configured

    def part(text: str) -> str:
        return quote(text.encode("utf-8", "replace"), safe="")  # lone surrogates too

    return f"unitgen://{part(alert.host)}/{part(alert.unit)}?incident={part(alert.incident_id)}"


def alertmanager_payload(
    alert: Alert,
    target_labels: Mapping[str, str] | None = None,
    *,
    now: float | None = None,
    resend_interval: float = DEFAULT_RESEND_INTERVAL,
    generator: str | None = None,
) -> list[dict[str, Any]]:
    """The body of ``POST /api/v2/alerts``: a list holding one alert.

    Firing: ``endsAt`` is ``now + ENDS_AFTER_INTERVALS * resend_interval``.
    Resolved: ``endsAt`` is ``ended_at`` (or now), never before ``startsAt``,
    which is in the past and so resolves the alert with the same labels.
    """
    current = time.time() if now is None else now
    if alert.status == "firing":
        ends = current + ENDS_AFTER_INTERVALS * resend_interval
    else:
        ends = alert.ended_at if alert.ended_at is not None else current
        ends = min(max(ends, alert.started_at), current)
    description = (
        f"{alert.unit} on {alert.host}: level {alert.level}, {alert.attempts} attempt(s), "
        f"reason {alert.reason}, incident {alert.incident_id}"
    )
    return [
        {
            "labels": alertmanager_labels(alert, target_labels or {}),
            "annotations": {
                "summary": alert.summary,
                "description": description,
                "level": alert.level,
                "attempts": str(alert.attempts),
                "status": alert.status,
                **({"members": " ".join(alert.members)[:4000]} if alert.members else {}),
            },
            "startsAt": _iso(alert.started_at),
            "endsAt": _iso(ends),
            "generatorURL": generator_url(alert, generator),
        }
    ]


def _header_text(text: str, limit: int = 200) -> str:
    """One header-safe line: every control/format character and line break becomes a space."""
    text = text.encode("utf-8", "replace").decode("utf-8")  # lone surrogates
    chars = [" " if unicodedata.category(c)[0] in "CZ" else c for c in text]
    line = " ".join("".join(chars).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def email_subject(alert: Alert) -> str:
    return _header_text(
        f"[unitgen] {alert.status.upper()} {alert.unit} on {alert.host} "
        f"({alert.level}): {alert.summary}"
    )


def email_message(alert: Alert, target: AlertTarget) -> EmailMessage:
    """A plain-text message; every header value is reduced to one safe line."""
    import email.policy
    import email.utils
    from email.message import EmailMessage

    msg = EmailMessage(policy=email.policy.SMTP)
    msg["From"] = target.from_addr or ""
    msg["To"] = ", ".join(target.to)
    msg["Subject"] = email_subject(alert)
    msg["Date"] = email.utils.formatdate(usegmt=True)
    # An explicit domain: the default calls getfqdn(), a DNS lookup that may hang.
    msg["Message-ID"] = email.utils.make_msgid("unitgen", domain="unitgen.invalid")
    msg["X-Unitgen-Status"] = alert.status
    msg["X-Unitgen-Incident"] = _header_text(alert.incident_id)
    ended = _iso(alert.ended_at) if alert.ended_at is not None else "-"
    body = "\n".join(
        [
            f"Status:   {alert.status}",
            f"Unit:     {alert.unit}",
            f"Host:     {alert.host}",
            f"Level:    {alert.level}",
            f"Reason:   {alert.reason}",
            f"Attempts: {alert.attempts}",
            f"Incident: {alert.incident_id}",
            f"Started:  {_iso(alert.started_at)}",
            f"Ended:    {ended}",
            "",
            alert.summary,
            "",
        ]
    )
    msg.set_content(body.encode("utf-8", "replace").decode("utf-8"))
    return msg


def _env_value(text: str) -> str:
    return text.replace("\x00", "")


def command_env(alert: Alert, target_name: str) -> dict[str, str]:
    """The whole environment of a command hook: a minimal base plus the alert.

    ``UNITGEN_ALERT`` is the webhook JSON; the other variables repeat its main
    fields for shell scripts. Nothing else is inherited, so secrets in
    unitgen's own environment (``url_env``...) never reach the hook.
    """
    return {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": "C.UTF-8",
        "UNITGEN_ALERT": json.dumps(webhook_payload(alert), sort_keys=True),
        "UNITGEN_ALERT_TARGET": _env_value(target_name),
        "UNITGEN_ALERT_STATUS": alert.status,
        "UNITGEN_ALERT_UNIT": _env_value(alert.unit),
        "UNITGEN_ALERT_INCIDENT": _env_value(alert.incident_id),
        "UNITGEN_ALERT_LEVEL": _env_value(alert.level),
        "UNITGEN_ALERT_REASON": _env_value(alert.reason),
        "UNITGEN_ALERT_SUMMARY": _env_value(alert.summary),
        "UNITGEN_ALERT_ATTEMPTS": str(alert.attempts),
        "UNITGEN_ALERT_HOST": _env_value(alert.host),
    }
