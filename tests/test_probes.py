"""Probes against real listeners: HTTP servers, TCP sockets and real commands."""

from __future__ import annotations

import asyncio
import random
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from clocks import FakeClock
from hypothesis import given, settings
from hypothesis import strategies as st
from receivers import HangingServer, Receiver, closed_port

from handlers.probes import ProbeResult, ProbeSpec, probe, probe_with_backoff
from unitgen.errors import PolicyError
from unitgen.model import Probe

SECRET = "probe-S3CRET-tok"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


def http(url: str, timeout: float = 2.0) -> ProbeSpec:
    return ProbeSpec.from_mapping({"kind": "http", "target": url, "timeout": timeout})


# -- parsing -------------------------------------------------------------------------


def test_from_mapping_kinds() -> None:
    assert http("http://127.0.0.1:8080/healthz") == ProbeSpec(
        "http", "http://127.0.0.1:8080/healthz", 2.0
    )
    assert ProbeSpec.from_mapping({"kind": "tcp", "target": "[::1]:80"}) == ProbeSpec(
        "tcp", "[::1]:80", 2.0
    )
    assert ProbeSpec.from_mapping(
        {"kind": "command", "target": ["/bin/true", "x"], "timeout": 3}
    ) == ProbeSpec("command", ("/bin/true", "x"), 3.0)
    model = Probe(kind="command", target=("/usr/bin/redis-cli", "ping"), timeout=1.5)
    assert ProbeSpec.from_model(model) == ProbeSpec("command", ("/usr/bin/redis-cli", "ping"), 1.5)


@pytest.mark.parametrize(
    ("mapping", "key"),
    [
        ({"kind": "icmp", "target": "x"}, "dep.kind"),
        ({"kind": "http", "target": "ftp://x/"}, "dep.target"),
        ({"kind": "http", "target": "http:///nohost"}, "dep.target"),
        ({"kind": "http", "target": "http://h:99999/"}, "dep.target"),
        ({"kind": "http", "target": "http://h/ x"}, "dep.target"),
        ({"kind": "tcp", "target": "host"}, "dep.target"),
        ({"kind": "tcp", "target": "host:0"}, "dep.target"),
        ({"kind": "tcp", "target": "::1:80"}, "dep.target"),
        ({"kind": "tcp", "target": "ho st:80"}, "dep.target"),
        ({"kind": "tcp", "target": ["h", "80"]}, "dep.target"),
        ({"kind": "command", "target": ["true"]}, "dep.target[0]"),
        ({"kind": "command", "target": []}, "dep.target"),
        ({"kind": "command", "target": "/bin/true"}, "dep.target"),
        ({"kind": "tcp", "target": "h:1", "timeout": "2s"}, "dep.timeout"),
        ({"kind": "tcp", "target": "h:1", "timeout": -1}, "dep.timeout"),
        ({"kind": "tcp", "target": "h:1", "interval": 5}, "dep.interval"),
    ],
)
def test_from_mapping_rejects(mapping: dict[str, object], key: str) -> None:
    with pytest.raises(PolicyError) as info:
        ProbeSpec.from_mapping(mapping, where="dep")
    assert key in str(info.value)


@settings(max_examples=300, deadline=None)
@given(target=st.one_of(st.text(max_size=30), st.from_regex(r"\[?[0-9a-f:.]{0,12}\]?:\d{1,6}")))
def test_tcp_target_parsing_never_crashes(target: str) -> None:
    try:
        spec = ProbeSpec.from_mapping({"kind": "tcp", "target": target})
    except PolicyError as exc:
        assert "\n" not in str(exc)
    else:
        port = int(spec.target.rpartition(":")[2])  # type: ignore[union-attr]
        assert 1 <= port <= 65535


# -- http ----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_http_200_and_500(receiver: Receiver) -> None:
    receiver.script = [200, 500, 302]
    good = await probe(http(receiver.url("/healthz")))
    bad = await probe(http(receiver.url("/healthz")))
    redirect = await probe(http(receiver.url("/healthz")))
    assert (good.ok, good.detail) == (True, f"http 127.0.0.1:{receiver.port}: HTTP 200")
    assert (bad.ok, bad.detail) == (False, f"http 127.0.0.1:{receiver.port}: HTTP 500")
    assert (redirect.ok, redirect.detail) == (True, f"http 127.0.0.1:{receiver.port}: HTTP 302")
    recs = receiver.wait_for(3)
    assert [(r.method, r.path) for r in recs] == [("GET", "/healthz")] * 3
    time.sleep(0.1)  # noqa: ASYNC251 -- a followed redirect would have arrived by now
    assert len(receiver.requests) == 3  # the redirect was not followed


@pytest.mark.asyncio
async def test_http_detail_hides_userinfo_path_and_query(receiver: Receiver) -> None:
    receiver.script = [503]
    url = receiver.url(f"/h/{SECRET}?key={SECRET}").replace("//", f"//u:{SECRET}@", 1)
    result = await probe(http(url))
    assert not result.ok
    assert SECRET not in result.detail
    assert result.detail == f"http 127.0.0.1:{receiver.port}: HTTP 503"
    assert SECRET not in http(url).describe()


@pytest.mark.asyncio
async def test_http_refused() -> None:
    port = closed_port()
    result = await probe(http(f"http://127.0.0.1:{port}/?t={SECRET}"))
    assert not result.ok
    assert result.detail.startswith(f"http 127.0.0.1:{port}: ConnectionError")
    assert "connection refused" in result.detail
    assert SECRET not in result.detail


@pytest.mark.asyncio
async def test_http_hanging_bounded_by_timeout() -> None:
    with HangingServer() as hang:
        start = time.monotonic()
        result = await probe(http(hang.url(f"/?t={SECRET}"), timeout=0.5))
        elapsed = time.monotonic() - start
    assert not result.ok
    assert elapsed < 0.5 + 2.0  # generous for a loaded 2-core box
    assert elapsed >= 0.45
    assert f"127.0.0.1:{hang.port}" in result.detail
    assert SECRET not in result.detail


@pytest.mark.asyncio
async def test_http_probes_run_concurrently() -> None:
    with HangingServer() as hang:
        spec = http(hang.url(), timeout=1.0)
        start = time.monotonic()
        results = await asyncio.gather(*(probe(spec) for _ in range(20)))
        elapsed = time.monotonic() - start
    assert not any(r.ok for r in results)
    # Twenty 1 s probes did not queue behind a small thread pool.
    assert elapsed < 1.0 + 3.0


# -- tcp -----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_tcp_open_and_closed() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        up = await probe(ProbeSpec("tcp", f"127.0.0.1:{port}", 2.0))
    down_port = closed_port()
    down = await probe(ProbeSpec("tcp", f"127.0.0.1:{down_port}", 2.0))
    assert (up.ok, up.detail) == (True, f"tcp 127.0.0.1:{port}: connected")
    assert not down.ok
    assert down.detail.startswith(f"tcp 127.0.0.1:{down_port}: ConnectionRefusedError")


def ipv6_loopback() -> bool:
    try:
        with socket.create_server(("::1", 0), family=socket.AF_INET6):
            return True
    except OSError:
        return False


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback on this machine")
@pytest.mark.asyncio
async def test_tcp_ipv6_brackets() -> None:
    with socket.create_server(("::1", 0), family=socket.AF_INET6) as server:
        port = server.getsockname()[1]
        result = await probe(ProbeSpec.from_mapping({"kind": "tcp", "target": f"[::1]:{port}"}))
    assert result.ok, result.detail


@pytest.mark.asyncio
async def test_tcp_unroutable_bounded() -> None:
    # 192.0.2.0/24 is TEST-NET-1: with only loopback, connect fails fast or hangs;
    # either way the probe ends within its timeout.
    start = time.monotonic()
    result = await probe(ProbeSpec("tcp", "192.0.2.1:9", 0.5))
    assert not result.ok
    assert time.monotonic() - start < 0.5 + 2.0


# -- command -------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_command_ok_fail_timeout(tmp_path: Path) -> None:
    ok = await probe(ProbeSpec("command", ("/bin/true",), 2.0))
    fail = await probe(ProbeSpec("command", ("/bin/sh", "-c", "echo secret-output; exit 4"), 2.0))
    start = time.monotonic()
    slow = await probe(ProbeSpec("command", ("/bin/sleep", "30"), 0.5))
    elapsed = time.monotonic() - start
    missing = await probe(ProbeSpec("command", (str(tmp_path / "nope"),), 1.0))
    assert (ok.ok, ok.detail) == (True, "command /bin/true: exit code 0")
    assert (fail.ok, fail.detail) == (False, "command /bin/sh: exit code 4")
    assert "secret-output" not in fail.detail
    assert not slow.ok
    assert "timed out" in slow.detail
    assert elapsed < 0.5 + 1.0 + 2.0
    assert not missing.ok
    assert "not found" in missing.detail


# -- backoff -------------------------------------------------------------------------


def scripted(
    outcomes: list[bool],
) -> tuple[list[int], Callable[[ProbeSpec], Awaitable[ProbeResult]]]:
    calls: list[int] = []

    async def run(spec: ProbeSpec) -> ProbeResult:
        calls.append(1)
        ok = outcomes[len(calls) - 1]
        return ProbeResult(ok, f"try {len(calls)}", 0.0)

    return calls, run


@pytest.mark.asyncio
async def test_backoff_delays_and_cap() -> None:
    clock = FakeClock()
    calls, run = scripted([False] * 6)
    result = await probe_with_backoff(
        ProbeSpec("tcp", "h:1", 1.0),
        attempts=6,
        base=1.0,
        factor=3.0,
        max_delay=10.0,
        jitter=0.0,
        sleep=clock.sleep,
        clock=clock,
        run=run,
    )
    assert clock.sleeps == [1.0, 3.0, 9.0, 10.0, 10.0]
    assert len(calls) == 6
    assert not result.ok
    assert result.detail == "try 6 (attempt 6 of 6)"
    assert result.duration == pytest.approx(33.0)


@pytest.mark.asyncio
async def test_backoff_stops_at_first_success_with_jitter_bounds() -> None:
    clock = FakeClock()
    calls, run = scripted([False, False, True, False])
    result = await probe_with_backoff(
        ProbeSpec("tcp", "h:1", 1.0),
        attempts=4,
        base=2.0,
        factor=2.0,
        max_delay=30.0,
        jitter=0.25,
        sleep=clock.sleep,
        clock=clock,
        rng=random.Random(7),
        run=run,
    )
    assert result.ok
    assert result.detail == "try 3 (attempt 3 of 4)"
    assert len(calls) == 3
    assert len(clock.sleeps) == 2
    assert 1.5 <= clock.sleeps[0] <= 2.5
    assert 3.0 <= clock.sleeps[1] <= 5.0


@pytest.mark.asyncio
async def test_backoff_real_probe(receiver: Receiver) -> None:
    receiver.script = [500, 500]
    clock = FakeClock()
    result = await probe_with_backoff(
        http(receiver.url("/dep")), attempts=3, base=0.01, sleep=clock.sleep
    )
    assert result.ok
    assert result.detail.endswith("HTTP 200 (attempt 3 of 3)")
    assert len(receiver.wait_for(3)) == 3


def test_backoff_rejects_zero_attempts() -> None:
    with pytest.raises(ValueError, match="attempts"):
        asyncio.run(probe_with_backoff(ProbeSpec("tcp", "h:1", 1.0), attempts=0))


def test_importing_alerts_and_probes_loads_no_heavy_library() -> None:
    """requests, smtplib and email load in worker threads, never on the ladder's loop."""
    import subprocess
    import sys

    code = (
        "import sys, handlers.alerts, handlers.probes; "
        "print(sorted(m for m in ('requests', 'urllib3', 'smtplib', 'email.message') "
        "if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"


@pytest.mark.asyncio
async def test_load_requests_marks_requests_loaded(receiver: Receiver) -> None:
    from handlers import outbound

    await outbound.load_requests()
    assert outbound._requests_loaded.is_set()
    await outbound.load_requests()  # the second call is a no-op, no thread
    result = await probe(http(receiver.url("/"), timeout=0.5))
    assert result.ok
