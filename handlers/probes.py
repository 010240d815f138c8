"""Health and dependency probes: http, tcp and command, each bounded by its timeout.

The ladder probes declared external dependencies (with
:func:`probe_with_backoff`) and checks a restarted unit's health; the listener
runs the same :func:`probe` on an interval. A probe never raises and never
takes much longer than ``spec.timeout``:

* http: ``GET`` with requests in a daemon thread (see :mod:`handlers.outbound`),
  connect and read timeout ``timeout`` each and the whole probe cut at
  ``timeout`` by ``asyncio.wait_for``. 2xx and 3xx are healthy, or the
  statuses in ``expect_status``; redirects are *not followed* (a redirect
  proves the server answers, and following it could lead anywhere). With
  ``expect_body`` the first :data:`BODY_LIMIT` bytes of the body, read raw
  within the timeout, must contain it (as UTF-8 bytes). The environment's
  proxy settings are ignored: health targets are local services.
* tcp: ``asyncio.open_connection`` under ``wait_for``; connected is healthy.
* command: :func:`handlers.procs.run_command` with ``timeout``; exit 0 is
  healthy. It runs with a minimal environment (``PATH``, ``LANG``), plus at
  most ``COMMAND_KILL_GRACE`` seconds to kill a command that overran.

``ProbeResult.detail`` names the endpoint as ``host:port`` only: a URL's
userinfo, path and query never appear in it, nor does command output.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import PurePath
from typing import TYPE_CHECKING, Literal, Protocol
from urllib.parse import urlsplit

from handlers.outbound import http_once, load_requests, run_blocking
from handlers.procs import run_command
from handlers.secrets import describe_exception, endpoint
from unitgen.errors import PolicyError

if TYPE_CHECKING:
    import random

__all__ = ["ProbeKind", "ProbeResult", "ProbeSpec", "probe", "probe_with_backoff"]

ProbeKind = Literal["http", "tcp", "command"]

DEFAULT_TIMEOUT = 2.0  # the same default as unitgen.model.Probe
MAX_TIMEOUT = 300.0
COMMAND_KILL_GRACE = 1.0
_PROBE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
}
_HOST = re.compile(r"[A-Za-z0-9._-]+")
_KEYS = ("kind", "target", "timeout", "expect_status", "expect_body")
# expect_body is looked for in this much of the body, no more: a huge or endless
# body costs one bounded read.
BODY_LIMIT = 64 * 1024


class _ProbeLike(Protocol):
    @property
    def kind(self) -> str: ...
    @property
    def target(self) -> str | tuple[str, ...]: ...
    @property
    def timeout(self) -> float: ...


@dataclass(frozen=True)
class ProbeSpec:
    kind: ProbeKind
    target: str | tuple[str, ...]  # URL, "host:port", or argv
    timeout: float = DEFAULT_TIMEOUT
    # http only: inclusive status ranges that pass (empty: 2xx and 3xx), and a text
    # the first BODY_LIMIT bytes of the body must contain.
    expect_status: tuple[tuple[int, int], ...] = ()
    expect_body: str | None = None

    @classmethod
    def from_mapping(cls, d: Mapping[str, object], *, where: str = "probe") -> ProbeSpec:
        """``{"kind": "http"|"tcp"|"command", "target": ..., "timeout": seconds}``.

        Raises :class:`PolicyError` naming ``where.key`` on bad input.
        """
        if not isinstance(d, Mapping):
            raise PolicyError(f"{where}: expected a table with kind and target")
        for key in d:
            if key not in _KEYS:
                raise PolicyError(f"{where}.{key}: unknown key (expected {', '.join(_KEYS)})")
        kind = d.get("kind")
        timeout = d.get("timeout", DEFAULT_TIMEOUT)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float):
            raise PolicyError(f"{where}.timeout: expected a number of seconds")
        if not (math.isfinite(timeout) and 0 < timeout <= MAX_TIMEOUT):
            raise PolicyError(f"{where}.timeout: expected seconds in (0, {MAX_TIMEOUT:g}]")
        target = d.get("target")
        expect_status = _check_statuses(d.get("expect_status", ()), f"{where}.expect_status")
        expect_body = d.get("expect_body")
        if expect_body is not None and (
            not isinstance(expect_body, str) or not 0 < len(expect_body.encode()) <= BODY_LIMIT
        ):
            raise PolicyError(f"{where}.expect_body: expected a non-empty string")
        if kind == "http":
            url = _check_url(target, f"{where}.target")
            return cls("http", url, float(timeout), expect_status, expect_body)
        if expect_status or expect_body is not None:
            raise PolicyError(f"{where}: expect_status and expect_body are for http probes only")
        if kind == "tcp":
            _split_host_port(target, f"{where}.target")
            assert isinstance(target, str)  # checked by _split_host_port
            return cls("tcp", target, float(timeout))
        if kind == "command":
            return cls("command", _check_argv(target, f"{where}.target"), float(timeout))
        raise PolicyError(f"{where}.kind: expected http, tcp or command, got {kind!r}")

    @classmethod
    def from_model(cls, p: _ProbeLike, *, where: str = "probe") -> ProbeSpec:
        """From a ``unitgen.model.Probe`` (or anything with kind/target/timeout)."""
        target = p.target if isinstance(p.target, str) else list(p.target)
        d: dict[str, object] = {"kind": p.kind, "target": target, "timeout": p.timeout}
        expect_status = getattr(p, "expect_status", ())
        expect_body = getattr(p, "expect_body", None)
        if expect_status:
            d["expect_status"] = expect_status
        if expect_body is not None:
            d["expect_body"] = expect_body
        return cls.from_mapping(d, where=where)

    def describe(self) -> str:
        """Safe one-line name of the probe: no URL path, query or userinfo."""
        if self.kind == "http":
            return f"http {endpoint(str(self.target))}"
        if self.kind == "tcp":
            return f"tcp {self.target}"
        return f"command {self.target[0]}"


def _check_statuses(value: object, where: str) -> tuple[tuple[int, int], ...]:
    if not isinstance(value, list | tuple):
        raise PolicyError(f"{where}: expected a list of [low, high] status ranges")
    out: list[tuple[int, int]] = []
    for item in value:
        if (
            not isinstance(item, list | tuple)
            or len(item) != 2
            or not all(type(n) is int and 100 <= n <= 599 for n in item)
            or item[0] > item[1]
        ):
            raise PolicyError(f"{where}: expected [low, high] ranges of statuses 100 to 599")
        out.append((item[0], item[1]))
    return tuple(out)


def _check_url(value: object, where: str) -> str:
    if not isinstance(value, str) or re.search(r"[\s\x00-\x1f\x7f]", value):
        raise PolicyError(f"{where}: expected an http(s) URL without whitespace")
    try:
        parts = urlsplit(value)
        host = parts.hostname
        _ = parts.port  # raises ValueError on a bad port
    except ValueError:
        raise PolicyError(f"{where}: expected an http(s) URL with a valid host and port") from None
    if parts.scheme not in ("http", "https") or not host:
        raise PolicyError(f"{where}: expected an http:// or https:// URL with a host")
    return value


def _split_host_port(value: object, where: str) -> tuple[str, int]:
    if not isinstance(value, str):
        raise PolicyError(f'{where}: expected "host:port"')
    host, sep, port_text = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        valid_host = bool(host) and re.fullmatch(r"[0-9A-Fa-f:.%A-Za-z]+", host) is not None
    else:
        valid_host = _HOST.fullmatch(host) is not None
    if not sep or not valid_host or not port_text.isascii() or not port_text.isdigit():
        raise PolicyError(f'{where}: expected "host:port" or "[ipv6]:port"')
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise PolicyError(f"{where}: port must be from 1 to 65535")
    return host, port


def _check_argv(value: object, where: str) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not value:
        raise PolicyError(f"{where}: expected a non-empty argv list")
    argv: list[str] = []
    for item in value:
        if not isinstance(item, str) or "\x00" in item:
            raise PolicyError(f"{where}: expected strings without NUL")
        argv.append(item)
    if not PurePath(argv[0]).is_absolute():
        raise PolicyError(f"{where}[0]: expected an absolute path")
    return tuple(argv)


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    detail: str  # safe to log and to publish: host:port at most
    duration: float


async def probe(spec: ProbeSpec) -> ProbeResult:
    """Run one probe; never raises (cancellation aside), bounded by ``spec.timeout``."""
    start = time.monotonic()
    try:
        if spec.kind == "http":
            ok, detail = await _probe_http(spec)
        elif spec.kind == "tcp":
            ok, detail = await _probe_tcp(spec)
        else:
            ok, detail = await _probe_command(spec)
    except Exception as exc:
        ok, detail = False, f"{spec.describe()}: {describe_exception(exc)}"
    return ProbeResult(ok, detail, time.monotonic() - start)


async def _probe_http(spec: ProbeSpec) -> tuple[bool, str]:
    url = str(spec.target)
    host = endpoint(url)
    want_body = spec.expect_body is not None
    call = partial(
        http_once,
        "GET",
        url,
        timeout=spec.timeout,
        # A compressed body would have to be inflated to be searched: ask for none.
        headers={"User-Agent": "unitgen-probe/1", "Accept-Encoding": "identity"},
        allow_redirects=False,
        trust_env=False,
        keep_body=BODY_LIMIT if want_body else 0,
    )
    await load_requests()  # once per process, outside the probe's timeout
    try:
        outcome = await asyncio.wait_for(run_blocking(call, name="probe-http"), spec.timeout)
    except TimeoutError:
        return False, f"http {host}: no answer within {spec.timeout:g}s"
    if outcome.status is None:
        return False, f"http {host}: {outcome.error}"
    status = outcome.status
    detail = f"http {host}: HTTP {status}"
    if not status_passes(status, spec.expect_status):
        wanted = f", expected {describe_statuses(spec.expect_status)}" if spec.expect_status else ""
        return False, detail + wanted
    if spec.expect_body is not None and spec.expect_body.encode() not in outcome.body:
        # Neither the expected text nor the body is shown: either may be a secret.
        return False, f"{detail}, body lacks the expected text (read {len(outcome.body)} bytes)"
    return True, detail


def status_passes(status: int, expect: tuple[tuple[int, int], ...]) -> bool:
    if not expect:
        return 200 <= status < 400
    return any(low <= status <= high for low, high in expect)


def describe_statuses(expect: tuple[tuple[int, int], ...]) -> str:
    if not expect:
        return "2xx or 3xx"
    return ", ".join(str(low) if low == high else f"{low}-{high}" for low, high in expect)


def _close_if_opened(
    task: asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]],
) -> None:
    # The connect may complete just as the deadline cancels it; never leak that socket.
    if not task.cancelled() and task.exception() is None:
        task.result()[1].close()


async def _probe_tcp(spec: ProbeSpec) -> tuple[bool, str]:
    host, port = _split_host_port(spec.target, "probe.target")
    name = f"tcp {spec.target}"
    connect = asyncio.ensure_future(asyncio.open_connection(host, port))
    try:
        _, writer = await asyncio.wait_for(asyncio.shield(connect), spec.timeout)
    except TimeoutError:
        connect.cancel()
        connect.add_done_callback(_close_if_opened)
        return False, f"{name}: no connection within {spec.timeout:g}s"
    except asyncio.CancelledError:
        connect.cancel()
        connect.add_done_callback(_close_if_opened)
        raise
    except OSError as exc:
        return False, f"{name}: {describe_exception(exc)}"
    writer.close()
    # Connected is what we wanted to know; the close is best effort.
    with contextlib.suppress(TimeoutError, OSError):
        await asyncio.wait_for(writer.wait_closed(), spec.timeout)
    return True, f"{name}: connected"


async def _probe_command(spec: ProbeSpec) -> tuple[bool, str]:
    argv = tuple(spec.target)
    result = await run_command(
        argv,
        timeout=spec.timeout,
        env=_PROBE_ENV,
        kill_grace=min(COMMAND_KILL_GRACE, spec.timeout),
        max_output=4096,
    )
    if result.ok:
        return True, f"command {argv[0]}: exit code 0"
    return False, f"command {result.describe()}"


async def probe_with_backoff(
    spec: ProbeSpec,
    *,
    attempts: int = 3,
    base: float = 1.0,
    factor: float = 2.0,
    max_delay: float = 30.0,
    jitter: float = 0.1,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    clock: Callable[[], float] = time.monotonic,
    rng: random.Random | None = None,
    run: Callable[[ProbeSpec], Awaitable[ProbeResult]] | None = None,
) -> ProbeResult:
    """Probe up to ``attempts`` times until one passes; for dependency checks.

    The wait before retry ``n`` (from 0) is ``min(max_delay, base * factor**n)``
    scaled by a random factor in ``[1 - jitter, 1 + jitter]``. The result is the
    first passing probe, or the last failing one; its ``duration`` covers all
    attempts and waits, measured on ``clock``. ``sleep``, ``clock``, ``rng`` and
    ``run`` (the single probe) are injectable for tests.
    """
    if attempts < 1:
        raise ValueError("attempts must be at least 1")
    one = run or probe
    if rng is None:
        import random

        rng = random.Random()  # noqa: S311 -- jitter, not cryptography
    start = clock()
    result = ProbeResult(False, f"{spec.describe()}: not run", 0.0)
    for n in range(attempts):
        result = await one(spec)
        if result.ok or n == attempts - 1:
            break
        delay = min(max_delay, base * factor**n)
        delay *= 1.0 + jitter * rng.uniform(-1.0, 1.0)
        await sleep(max(0.0, delay))
    tries = n + 1
    return ProbeResult(
        result.ok, f"{result.detail} (attempt {tries} of {attempts})", clock() - start
    )
