"""The typed alert model: a target as validated from the policy, an alert, a delivery.

What :mod:`handlers.alerts` sends and :mod:`handlers.alertpayloads` formats.
A target's time bounds are here with it: :mod:`handlers.alerts` keeps to them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from unitgen.alertconfig import alert_config

__all__ = [
    "ALERTMANAGER_FIRING_TTL",
    "COMMAND_KILL_GRACE",
    "DEFAULT_MAX_SEND_SECONDS",
    "DEFAULT_RESEND_INTERVAL",
    "ENDS_AFTER_INTERVALS",
    "HTTP_GRACE",
    "Alert",
    "AlertStatus",
    "AlertTarget",
    "AlertType",
    "Delivery",
    "backoff_ceiling",
]

AlertType = Literal["webhook", "slack", "alertmanager", "email", "command"]
AlertStatus = Literal["firing", "resolved"]

# A firing alert carries endsAt this many resend intervals ahead, as Alertmanager's
# clients are meant to: re-sent every interval while it fires (handlers/alertkeeper.py),
# it survives an Alertmanager restart and a lost POST or two, and if unitgen dies it
# resolves by itself minutes later instead of firing for a day.
ENDS_AFTER_INTERVALS = 4
DEFAULT_RESEND_INTERVAL = 60.0
ALERTMANAGER_FIRING_TTL = ENDS_AFTER_INTERVALS * DEFAULT_RESEND_INTERVAL

BACKOFF_BASE = 0.5  # seconds before the first retry
BACKOFF_CAP = 4.0
HTTP_GRACE = 0.5  # on top of connect + read timeout, for thread start and TLS set-up
COMMAND_KILL_GRACE = 1.0
DEFAULT_MAX_SEND_SECONDS = 30.0


# -- configuration -------------------------------------------------------------------


@dataclass(frozen=True)
class AlertTarget:
    """One alert destination, as validated from the policy mapping (see docs/alerts.md).

    Built by :meth:`from_mapping`, which fills in the defaults from the spec's
    key table; ``smtp_port`` and ``starttls`` keep theirs here only for the
    types that have no such key.
    """

    name: str
    type: AlertType
    timeout: float  # connect timeout and read timeout, each
    retries: int  # retries after the first attempt
    send_resolved: bool
    url_file: str | None = None
    url_env: str | None = None
    url_credential: str | None = None  # a systemd credential: $CREDENTIALS_DIRECTORY/NAME
    labels: Mapping[str, str] = field(default_factory=dict)
    smtp_host: str | None = None
    smtp_port: int = 25
    starttls: bool = False
    from_addr: str | None = None  # the "from" key
    to: tuple[str, ...] = ()
    username: str | None = None
    password_file: str | None = None
    password_env: str | None = None
    password_credential: str | None = None
    command: tuple[str, ...] = ()
    resend_interval: float = DEFAULT_RESEND_INTERVAL  # alertmanager: seconds between re-sends
    generator_url: str | None = None  # alertmanager: generatorURL; None: a unitgen:// URI

    @classmethod
    def from_mapping(
        cls, d: Mapping[str, object], *, name: str | None = None, source: str = ""
    ) -> AlertTarget:
        """Validate one target mapping with the spec's key table (unitgen.alertconfig).

        Raises :class:`PolicyError` naming ``source`` and the bad key. ``name``
        is used when the mapping has no ``name`` key (the spec keys targets by
        table name, ``[alert.ops]``).
        """
        fields = alert_config(d, name=name, source=source)
        if "from" in fields:
            fields["from_addr"] = fields.pop("from")
        return cls(**fields)

    @property
    def where(self) -> str:
        return f"{self.type} {self.name}"

    def attempt_bound(self) -> float:
        """Wall-clock seconds one attempt may take before it is abandoned."""
        if self.type == "email":
            # connect, banner, EHLO, STARTTLS, AUTH, MAIL..DATA: several reads, each <= timeout
            return 4 * self.timeout + HTTP_GRACE
        if self.type == "command":
            return self.timeout + COMMAND_KILL_GRACE + 1.0
        return 2 * self.timeout + HTTP_GRACE

    def time_bound(self, cap: float = DEFAULT_MAX_SEND_SECONDS) -> float:
        """Upper bound on one send to this target: every attempt plus every backoff, capped."""
        backoffs = sum(backoff_ceiling(n) for n in range(self.retries))
        return min(cap, (self.retries + 1) * self.attempt_bound() + backoffs)


def backoff_ceiling(n: int) -> float:
    """The longest wait before retry ``n + 1``; the actual wait is 50-100 % of it."""
    return min(BACKOFF_CAP, BACKOFF_BASE * (2.0**n))


# -- the alert and its outcome -------------------------------------------------------


@dataclass(frozen=True)
class Alert:
    unit: str
    incident_id: str
    level: str
    status: AlertStatus
    reason: str  # the incident's opening reason; keep it the same for every alert of it
    summary: str
    attempts: int
    started_at: float  # wall clock, epoch seconds
    ended_at: float | None
    host: str
    labels: Mapping[str, str] = field(default_factory=dict)
    # An incident group's alert: every unit it covers (handlers/correlation.py).
    members: tuple[str, ...] = ()
    # The flapping alert's crashes (time, result, exit status...), oldest first.
    digest: tuple[Mapping[str, str | int | float | bool], ...] = ()


@dataclass(frozen=True)
class Delivery:
    target: str
    ok: bool
    error: str | None  # safe to log: host:port at most, never a URL or a secret
    attempts: int
    duration: float
