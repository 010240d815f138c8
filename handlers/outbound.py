"""Blocking outbound HTTP, run off the event loop, with bounded time and no secrets in text.

Alerts and health probes both use requests, which blocks. Each request runs
in its own *daemon* thread (:func:`run_blocking`), not in
``asyncio.to_thread``, for two reasons measured against the alternatives:

* asyncio's default executor has ``min(32, cpus + 4)`` workers, six on a
  2-core box, shared with every other ``to_thread`` user. A few hanging alert
  endpoints would starve the ladder's own blocking calls.
* ``asyncio.run`` joins the default executor at exit, so a request stuck in
  a slow-drip server would hold ``unitgen recover`` open after the ladder is
  done. A daemon thread is abandoned instead; the awaiting coroutine has long
  since returned, bounded by ``asyncio.wait_for``.

requests' ``timeout=(t, t)`` bounds the connect and *each* socket read, not
the whole request, so the caller's ``wait_for`` is what makes the wall-clock
bound hold; the abandoned thread ends on its own socket timeout.

Every function here returns an :class:`HttpOutcome` instead of raising, and
the only failure text it carries comes from
:func:`handlers.secrets.describe_exception`, which never reads the exception
message (where requests puts the full URL).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from handlers.secrets import describe_exception, install_log_redaction

__all__ = ["MAX_REDIRECTS", "HttpOutcome", "http_once", "load_requests", "run_blocking"]

T = TypeVar("T")

MAX_REDIRECTS = 3
_DRAIN_LIMIT = 64 * 1024

install_log_redaction()


_requests_loaded = threading.Event()


def _load_requests() -> None:
    import requests  # noqa: F401 -- the import is the point

    _requests_loaded.set()


async def load_requests() -> None:
    """Import requests in a worker thread, once; a no-op afterwards.

    Callers await this before starting a timed request, so that the import
    (100 ms and more on a busy machine) neither blocks the event loop nor eats
    into a probe's timeout.
    """
    if not _requests_loaded.is_set():
        await run_blocking(_load_requests, name="import-requests")


async def run_blocking(fn: Callable[[], T], *, name: str) -> T:
    """Run ``fn`` in a fresh daemon thread and await its result.

    Cancelling the await (``wait_for`` expiring) does not stop the thread; its
    late result is dropped. ``fn`` should not raise: if it does, the exception
    is re-raised here, and callers in this package only pass functions that
    catch everything.
    """
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[T] = loop.create_future()

    def settle(value: T | None, error: BaseException | None) -> None:
        # The awaiting side may have been cancelled by its deadline: then nobody wants this.
        if fut.done():
            return
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(value)  # type: ignore[arg-type]

    def worker() -> None:
        value: T | None = None
        error: BaseException | None = None
        try:
            value = fn()
        except BaseException as exc:
            error = exc
        # A closed loop means the process is shutting down and nobody awaits us.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, value, error)

    threading.Thread(target=worker, name=name, daemon=True).start()
    return await fut


@dataclass(frozen=True)
class HttpOutcome:
    """One HTTP exchange: a status, or a safe description of why there was none."""

    status: int | None
    error: str | None = None
    retry_after: float | None = None  # seconds, from a numeric Retry-After header
    permanent: bool = False  # retrying cannot help: a redirect loop, a malformed URL
    body: bytes = b""  # the body's first keep_body bytes, when asked for


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None  # HTTP-date form: not worth parsing for a bounded retry loop
    return seconds if seconds >= 0 else None


def _read_bounded(raw: Any, limit: int, deadline: float) -> bytes:
    """At most ``limit`` bytes, read until ``deadline``: a slow-drip body is cut there.

    Each read blocks at most the socket timeout, so a thread this runs in ends
    soon after the caller has stopped waiting for it.
    """
    # read1 returns what one socket read gave; read(n) would wait for all n bytes.
    read = getattr(raw, "read1", None) or raw.read
    chunks: list[bytes] = []
    size = 0
    with contextlib.suppress(Exception):
        while size < limit and time.monotonic() < deadline:
            chunk = read(min(4096, limit - size), decode_content=False)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    return b"".join(chunks)


def http_once(
    method: str,
    url: str,
    *,
    timeout: float,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    allow_redirects: bool = True,
    trust_env: bool = True,
    keep_body: int = 0,
) -> HttpOutcome:
    """One request, blocking; never raises. Run it through :func:`run_blocking`.

    Redirects are followed at most :data:`MAX_REDIRECTS` times. Only the
    status matters; a body with a Content-Length of at most 64 KiB is read and
    dropped, so that a normal small response is consumed and the connection
    closes cleanly. With ``keep_body``, up to that many bytes of the body are
    read (raw: no decoding) and returned, within about ``timeout`` in all.
    """
    # Imported here, in the worker thread (normally already done by load_requests):
    # importing requests on the event loop would stall it.
    import requests
    from requests.adapters import HTTPAdapter

    session = requests.Session()
    session.max_redirects = MAX_REDIRECTS
    session.trust_env = trust_env
    # No urllib3-level retries: the caller's loop retries with backoff and a deadline.
    adapter = HTTPAdapter(max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    try:
        response = session.request(
            method,
            url,
            data=body,
            headers=dict(headers or {}),
            timeout=(timeout, timeout),
            allow_redirects=allow_redirects,
            stream=True,
        )
        try:
            outcome = HttpOutcome(
                status=response.status_code,
                retry_after=_retry_after(response.headers.get("Retry-After")),
            )
            if keep_body > 0:
                body = _read_bounded(response.raw, keep_body, time.monotonic() + timeout)
                return dataclasses.replace(outcome, body=body)
            # Read a small body before closing: closing with unread data makes the
            # kernel send RST, which servers log as an error on every health check.
            # The status is already known, so a failure here changes nothing.
            # Only a body of known, small length: a streamed one could hold us up.
            length = response.headers.get("Content-Length", "")
            if length.isdigit() and int(length) <= _DRAIN_LIMIT:
                with contextlib.suppress(Exception):
                    response.raw.read(int(length))
            return outcome
        finally:
            response.close()
    except (requests.ConnectionError, requests.Timeout) as exc:
        return HttpOutcome(status=None, error=describe_exception(exc))
    except Exception as exc:
        # TooManyRedirects, InvalidURL, and what urllib3 and idna raise for odd URLs:
        # the same request will fail the same way.
        return HttpOutcome(status=None, error=describe_exception(exc), permanent=True)
    finally:
        session.close()
