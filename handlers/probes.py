"""Health and dependency probes: http, tcp and command, each bounded by its timeout.

The ladder probes declared external dependencies (with
:func:`probe_with_backoff`) and checks a restarted unit's health; the listener
runs the same :func:`probe` on an interval. A probe never raises and never
takes much longer than ``spec.timeout``:

* http: ``GET`` with requests in a daemon thread (see :mod:`handlers.outbound`),
  connect and read timeout ``timeout`` each and the whole probe cut at
  ``timeout`` by ``asyncio.wait_for``. 2xx and 3xx are healthy; redirects are
  *not followed* (a redirect proves the server answers, and following it could
  lead anywhere). The environment's proxy settings are ignored: health
  targets are local services.
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

    @classmethod
    def from_mapping(cls, d: Mapping[str, object], *, where: str = "probe") -> ProbeSpec:
        """``{"kind": "http"|"tcp"|"command", "target": ..., "timeout": seconds}``.

        Raises :class:`PolicyError` naming ``where.key`` on bad input.
        """
        if not isinstance(d, Mapping):
            raise PolicyError(f"{where}: expected a table with kind and target")
        for key in d:
            if key not in ("kind", "target", "timeout"):
                raise PolicyError(f"{where}.{key}: unknown key (expected kind, target, timeout)")
        kind = d.get("kind")
        timeout = d.get("timeout", DEFAULT_TIMEOUT)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float):
            raise PolicyError(f"{where}.timeout: expected a number of seconds")
        if not (math.isfinite(timeout) and 0 < timeout <= MAX_TIMEOUT):
            raise PolicyError(f"{where}.timeout: expected seconds in (0, {MAX_TIMEOUT:g}]")
        target = d.get("target")
        if kind == "http":
            return cls("http", _check_url(target, f"{where}.target"), float(timeout))
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
        return cls.from_mapping(
            {"kind": p.kind, "target": target, "timeout": p.timeout}, where=where
        )

    def describe(self) -> str:
        """Safe one-line name of the probe: no URL path, query or userinfo."""
        if self.kind == "http":
            return f"http {endpoint(str(self.target))}"
        if self.kind == "tcp":
            return f"tcp {self.target}"
        return f"command {self.target[0]}"


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
    call = partial(
        http_once,
        "GET",
        url,
        timeout=spec.timeout,
        headers={"User-Agent": "unitgen-probe/1"},
        allow_redirects=False,
        trust_env=False,
    )
    await load_requests()  # once per process, outside the probe's timeout
    try:
        outcome = await asyncio.wait_for(run_blocking(call, name="probe-http"), spec.timeout)
    except TimeoutError:
        return False, f"http {host}: no answer within {spec.timeout:g}s"
    if outcome.status is None:
        return False, f"http {host}: {outcome.error}"
    return 200 <= outcome.status < 400, f"http {host}: HTTP {outcome.status}"


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
