"""Alerts: telling humans (and Alertmanager) what the ladder did, without ever blocking it.

Targets and payloads are documented in ``docs/alerts.md``; in short, a target
is a plain mapping from the rendered policy (:meth:`AlertTarget.from_mapping`),
an :class:`Alert` is a frozen value, and :meth:`Alerter.send` delivers one
alert to every target concurrently and returns one :class:`Delivery` each.
This module is the delivery; the model (re-exported here, the Alerter's own
types) is :mod:`handlers.alertmodel`, the payloads :mod:`handlers.alertpayloads`.

For the ladder (how to call this):

* ``Alerter.send`` never raises and returns within :meth:`Alerter.time_bound`
  seconds (at most ``max_send_seconds``, 30 s by default), whatever the
  endpoints do. Fire it as a task, keep a strong reference to the task, and
  await the pending ones before the ``unitgen recover`` process exits, or the
  alert is lost with the process.
* Dedupe is the caller's job, not ``send``'s: one firing alert per
  ``(incident_id, level)``, then one ``resolved`` per incident. Across
  processes (OnFailure= unit and listener) the SQLite store is the authority:
  record ``(incident_id, level, status)`` there and ask it before sending.
* Keep ``reason`` the incident's opening reason in every alert of that
  incident, including the ``resolved`` one, and put what changed into
  ``summary`` and ``level``. Alertmanager identifies an alert by its labels,
  and ``reason`` is a label: the same labels are what make ``resolved`` close
  the alert that ``firing`` opened. ``level`` is an annotation, so an
  escalation updates the open Alertmanager alert instead of opening another.
* Secrets (webhook URLs, SMTP passwords) are read from their file or variable
  at send time. They never appear in a ``Delivery``, a log line or an
  exception message: endpoints are shown as ``host:port`` only.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import socket
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Protocol

from handlers.alertmodel import (
    COMMAND_KILL_GRACE,
    DEFAULT_MAX_SEND_SECONDS,
    HTTP_GRACE,
    Alert,
    AlertTarget,
    Delivery,
    backoff_ceiling,
)
from handlers.alertpayloads import (
    alertmanager_payload,
    command_env,
    email_message,
    slack_payload,
    webhook_payload,
)
from handlers.outbound import HttpOutcome, http_once, load_requests, run_blocking
from handlers.procs import run_command
from handlers.secrets import credential_file, describe_exception, endpoint, read_secret
from unitgen.errors import AlertError

if TYPE_CHECKING:
    # Imported where used instead: the ladder imports this module on its event loop,
    # and smtplib/ssl (like requests, see handlers.outbound) cost tens of ms.
    import random
    import ssl

__all__ = [
    "Alert",
    "AlertTarget",
    "Alerter",
    "Delivery",
]

log = logging.getLogger(__name__)

_HTTP_TYPES = ("webhook", "slack", "alertmanager")


@dataclass(frozen=True)
class _Attempt:
    ok: bool
    error: str | None = None
    retryable: bool = True
    retry_after: float | None = None
    some_ok: bool = False  # an HA Alertmanager cluster: at least one member took it


class Keeper(Protocol):
    """What re-sends active Alertmanager alerts (handlers.alertkeeper.AlertKeeper)."""

    def keep(self, alerter: Alerter, target: AlertTarget, alert: Alert) -> None: ...


def alertmanager_urls(secret: str) -> list[str]:
    """The members of an Alertmanager cluster: one URL, or several separated by
    whitespace or commas, in the URL's file or variable."""
    urls = [u for u in re.split(r"[\s,]+", secret) if u]
    return list(dict.fromkeys(urls))


def _http_attempt(where: str, host: str, outcome: HttpOutcome) -> _Attempt:
    if outcome.status is None:
        error = f"{where}: POST to {host} failed: {outcome.error}"
        return _Attempt(False, error, retryable=not outcome.permanent)
    if 200 <= outcome.status < 300:
        return _Attempt(True)
    error = f"{where}: POST to {host} returned HTTP {outcome.status}"
    # 4xx means our request is wrong and will stay wrong; 429 asks us to come back.
    retryable = outcome.status == 429 or not 400 <= outcome.status < 500
    return _Attempt(False, error, retryable, outcome.retry_after)


def _smtp_once(
    target: AlertTarget,
    alert: Alert,
    password: str | None,
    context: ssl.SSLContext | None,
) -> _Attempt:
    """One SMTP session, blocking; never raises and never shows server text or secrets."""
    import smtplib
    import ssl

    host = f"{target.smtp_host}:{target.smtp_port}"
    where = f"{target.where}: SMTP to {host}"
    try:
        msg = email_message(alert, target)
        # local_hostname given: the default calls getfqdn(), a DNS lookup that may hang.
        with smtplib.SMTP(
            target.smtp_host or "",
            target.smtp_port,
            local_hostname=socket.gethostname() or "localhost",
            timeout=target.timeout,
        ) as smtp:
            if target.starttls:
                smtp.ehlo()
                # Loading the trust store reads files: done here, off the event loop.
                smtp.starttls(context=context or ssl.create_default_context())
                smtp.ehlo()
            if target.username is not None and password is not None:
                smtp.login(target.username, password)
            smtp.send_message(msg, from_addr=target.from_addr, to_addrs=list(target.to))
        return _Attempt(True)
    except smtplib.SMTPRecipientsRefused:
        return _Attempt(False, f"{where} failed: every recipient refused", retryable=False)
    except smtplib.SMTPResponseException as exc:
        # 4xx is "try again later" in SMTP too; 5xx will not get better.
        retryable = 400 <= exc.smtp_code < 500
        name = type(exc).__name__
        return _Attempt(False, f"{where} failed: {name} {exc.smtp_code}", retryable)
    except smtplib.SMTPNotSupportedError:
        return _Attempt(False, f"{where} failed: server lacks STARTTLS or AUTH", retryable=False)
    except ssl.SSLCertVerificationError:
        return _Attempt(False, f"{where} failed: TLS certificate not trusted", retryable=False)
    except Exception as exc:
        return _Attempt(False, f"{where} failed: {describe_exception(exc)}")


class Alerter:
    """Sends each alert to every target concurrently, within a bounded time; never raises."""

    def __init__(
        self,
        targets: Sequence[AlertTarget],
        *,
        env: Mapping[str, str] | None = None,
        max_send_seconds: float = DEFAULT_MAX_SEND_SECONDS,
        ssl_context: ssl.SSLContext | None = None,
        rng: random.Random | None = None,
        keeper: Keeper | None = None,
    ) -> None:
        """``env`` is where ``url_env``/``password_env`` are looked up (default: os.environ).

        ``ssl_context`` verifies the SMTP server's certificate on STARTTLS
        (default: the system trust store, with hostname checking).
        ``keeper`` re-sends the firing alerts of alertmanager targets every
        ``resend_interval`` (a long-lived process passes one; see alertkeeper).
        """
        self.targets = tuple(targets)
        self.keeper = keeper
        self._env = env
        self.max_send_seconds = max_send_seconds
        self._ssl_context = ssl_context
        if rng is None:
            import random

            rng = random.Random()  # noqa: S311 -- jitter, not cryptography
        self._rng = rng

    def time_bound(self) -> float:
        """Seconds within which :meth:`send` returns, whatever the endpoints do."""
        return max((t.time_bound(self.max_send_seconds) for t in self.targets), default=0.0)

    async def send(self, alert: Alert) -> list[Delivery]:
        """Deliver ``alert`` to every target that wants it; one Delivery per target tried.

        Targets with ``send_resolved = false`` are skipped for resolved alerts
        and get no Delivery.
        """
        chosen = [t for t in self.targets if alert.status == "firing" or t.send_resolved]
        if self.keeper is not None:
            for target in self.targets:
                if target.type == "alertmanager":
                    # Resolved too: it replaces the firing one, and is then let go.
                    self.keeper.keep(self, target, alert)
        deliveries = await asyncio.gather(*(self._deliver_bounded(t, alert) for t in chosen))
        return list(deliveries)

    async def resend(self, target: AlertTarget, alert: Alert) -> Delivery:
        """One more send of a firing alert to one target (the keeper's), logged at debug
        when it arrives."""
        return await self._deliver_bounded(target, alert, again=True)

    async def _deliver_bounded(
        self, target: AlertTarget, alert: Alert, *, again: bool = False
    ) -> Delivery:
        start = time.monotonic()
        bound = target.time_bound(self.max_send_seconds)
        try:
            # The inner loop keeps to the bound by itself; this is the backstop.
            delivery = await asyncio.wait_for(self._deliver(target, alert, start, bound), bound + 1)
        except TimeoutError:
            delivery = Delivery(
                target.name, False, f"{target.where}: gave up after {bound:.1f}s", 0, bound
            )
        except Exception as exc:
            # A bug here must not take the other targets (or the ladder) down with it.
            # No traceback: exception text from HTTP libraries may hold the URL.
            log.error("alert %s: internal error %s", target.name, type(exc).__name__)  # noqa: TRY400
            delivery = Delivery(
                target.name,
                False,
                f"{target.where}: internal error {type(exc).__name__}",
                0,
                time.monotonic() - start,
            )
        if delivery.ok:
            log.log(
                logging.DEBUG if again else logging.INFO,
                "alert %s %s for %s delivered to %s (%d attempt(s), %.2fs)",
                alert.status,
                alert.level,
                alert.unit,
                target.name,
                delivery.attempts,
                delivery.duration,
            )
        else:
            log.warning(
                "alert %s for %s not delivered: %s", alert.status, alert.unit, delivery.error
            )
        return delivery

    async def _secret(
        self,
        target: AlertTarget,
        kind: str,
        file: str | None,
        env_name: str | None,
        credential: str | None = None,
    ) -> str:
        """The secret from its file (read in a thread, bounded), credential or variable."""
        environ = os.environ if self._env is None else self._env
        key_file = f"{kind}_file"
        if credential is not None:
            # A credential is a file systemd put in the unit's private credentials dir.
            file = credential_file(target.where, f"{kind}_credential", credential, environ)
            key_file = f"{kind}_credential"
        read = partial(
            read_secret,
            owner=target.where,
            key_file=key_file,
            key_env=f"{kind}_env",
            file=file,
            env_name=env_name,
            environ=environ,
        )
        if file is None:
            return read()
        try:
            # A file on a hung network mount must not hold the alert past its bound.
            return await asyncio.wait_for(
                run_blocking(read, name=f"alert-{target.name}"), target.timeout
            )
        except TimeoutError as exc:
            raise AlertError(
                f"{target.where}: {key_file} {file}: not readable within {target.timeout:g}s"
            ) from exc

    async def _prepare(
        self, target: AlertTarget, alert: Alert
    ) -> Callable[[], Awaitable[_Attempt]]:
        """Read secrets and build the payload once; return the attempt to repeat."""
        if target.type == "alertmanager":
            return await self._prepare_alertmanager(target, alert)
        if target.type in _HTTP_TYPES:
            url = await self._secret(
                target, "url", target.url_file, target.url_env, target.url_credential
            )
            if not url.lower().startswith(("http://", "https://")):
                raise AlertError(f"{target.where}: the configured URL is not http(s)")
            host = endpoint(url)
            await load_requests()
            body_obj: object
            if target.type == "webhook":
                body_obj = webhook_payload(alert)
            elif target.type == "slack":
                body_obj = slack_payload(alert)
            else:
                url = url.rstrip("/") + "/api/v2/alerts"
                body_obj = alertmanager_payload(alert, target.labels)
            body = json.dumps(body_obj).encode("ascii")
            call = partial(
                http_once,
                "POST",
                url,
                timeout=target.timeout,
                body=body,
                headers={"Content-Type": "application/json", "User-Agent": "unitgen-alerts/1"},
            )

            async def http_attempt() -> _Attempt:
                outcome = await run_blocking(call, name=f"alert-{target.name}")
                return _http_attempt(target.where, host, outcome)

            return http_attempt
        if target.type == "email":
            password = None
            if target.username is not None:
                password = await self._secret(
                    target,
                    "password",
                    target.password_file,
                    target.password_env,
                    target.password_credential,
                )
            # The message is built in the thread too: the email package is slow to import.
            smtp_call = partial(_smtp_once, target, alert, password, self._ssl_context)

            async def smtp_attempt() -> _Attempt:
                return await run_blocking(smtp_call, name=f"alert-{target.name}")

            return smtp_attempt
        env = command_env(alert, target.name)

        async def command_attempt() -> _Attempt:
            result = await run_command(
                target.command, timeout=target.timeout, env=env, kill_grace=COMMAND_KILL_GRACE
            )
            if result.ok:
                return _Attempt(True)
            return _Attempt(False, f"{target.where}: {result.describe()}")

        return command_attempt

    async def _prepare_alertmanager(
        self, target: AlertTarget, alert: Alert
    ) -> Callable[[], Awaitable[_Attempt]]:
        """POST to every member of the cluster at once; a retry goes to those that did
        not take it. Each member is its own daemon thread bounded by the attempt's
        timeout, so a dead or hanging member delays none of the others."""
        secret = await self._secret(target, "url", target.url_file, target.url_env)
        urls = alertmanager_urls(secret)
        if not urls or not all(u.lower().startswith(("http://", "https://")) for u in urls):
            raise AlertError(f"{target.where}: a configured URL is not http(s)")
        await load_requests()
        body = json.dumps(
            alertmanager_payload(
                alert,
                target.labels,
                resend_interval=target.resend_interval,
                generator=target.generator_url,
            )
        ).encode("ascii")
        headers = {"Content-Type": "application/json", "User-Agent": "unitgen-alerts/1"}
        pending = {u: endpoint(u) for u in urls}
        accepted: list[str] = []

        async def member(url: str, host: str) -> _Attempt:
            call = partial(
                http_once,
                "POST",
                url.rstrip("/") + "/api/v2/alerts",
                timeout=target.timeout,
                body=body,
                headers=headers,
            )
            try:
                outcome = await asyncio.wait_for(
                    # Inside the attempt's own bound, so what the others did is kept.
                    run_blocking(call, name=f"alert-{target.name}"),
                    2 * target.timeout + HTTP_GRACE / 2,
                )
            except TimeoutError:
                return _Attempt(False, f"{target.where}: no answer from {host}")
            result = _http_attempt(target.where, host, outcome)
            if result.ok:
                pending.pop(url, None)
                accepted.append(host)
            return result

        async def cluster_attempt() -> _Attempt:
            results = await asyncio.gather(*(member(u, h) for u, h in list(pending.items())))
            failed = [r for r in results if not r.ok]
            if not failed:
                return _Attempt(True)
            return _Attempt(
                False,
                "; ".join(r.error or target.where for r in failed),
                retryable=any(r.retryable for r in failed),
                retry_after=max((r.retry_after or 0.0 for r in failed), default=None) or None,
                some_ok=bool(accepted),
            )

        return cluster_attempt

    async def _deliver(
        self, target: AlertTarget, alert: Alert, start: float, bound: float
    ) -> Delivery:
        deadline = start + bound
        try:
            attempt = await self._prepare(target, alert)
        except AlertError as exc:
            return Delivery(target.name, False, str(exc), 0, time.monotonic() - start)
        attempts = 0
        error = f"{target.where}: no attempt fitted in {bound:.1f}s"
        some_ok = False
        for n in range(target.retries + 1):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            attempts += 1
            limit = min(remaining, target.attempt_bound())
            try:
                result = await asyncio.wait_for(attempt(), limit)
            except TimeoutError:
                result = _Attempt(False, f"{target.where}: no answer within {limit:.1f}s")
            if result.ok:
                return Delivery(target.name, True, None, attempts, time.monotonic() - start)
            error = result.error or f"{target.where}: failed"
            some_ok = some_ok or result.some_ok
            log.debug("alert %s attempt %d failed: %s", target.name, attempts, error)
            if not result.retryable or n == target.retries:
                break
            delay = backoff_ceiling(n) * self._rng.uniform(0.5, 1.0)
            if result.retry_after is not None:
                delay = max(delay, result.retry_after)
            if time.monotonic() + delay >= deadline:
                break  # the next attempt could not start in time anyway
            await asyncio.sleep(delay)
        if some_ok:
            # The cluster's members gossip alerts: one that took it is a delivery.
            return Delivery(
                target.name,
                True,
                f"{error} (other members took it)",
                attempts,
                time.monotonic() - start,
            )
        return Delivery(
            target.name,
            False,
            f"{error} (after {attempts} attempt(s))",
            attempts,
            time.monotonic() - start,
        )
