"""HTTP probes that match the status and a body text, against real local servers.

Hostile bodies included: huge, dripping one byte at a time, not UTF-8.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from receivers import Receiver, Recorded, Reply

from handlers.probes import BODY_LIMIT, ProbeSpec, probe, status_passes
from unitgen.errors import PolicyError
from unitgen.model import Probe


def spec(url: str, timeout: float = 2.0, **expect: object) -> ProbeSpec:
    return ProbeSpec.from_mapping({"kind": "http", "target": url, "timeout": timeout, **expect})


def replying(status: int, body: bytes) -> Receiver:
    def route(_: Recorded) -> Reply:
        return status, {}, body

    return Receiver(route)


class DripServer:
    """Sends a 200 with a long Content-Length, then one body byte every ``every`` s."""

    def __init__(self, every: float = 0.05) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.every = every
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            with conn:
                conn.recv(65536)
                head = b"HTTP/1.1 200 OK\r\nContent-Length: 10000000\r\n\r\n"
                try:
                    conn.sendall(head)
                    while not self.stop.wait(self.every):
                        conn.sendall(b"x")
                except OSError:
                    continue  # the probe hung up: what it should do

    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


@pytest.fixture
def drip() -> Iterator[DripServer]:
    server = DripServer()
    yield server
    server.close()


@pytest.mark.asyncio
async def test_expect_status_list_and_range() -> None:
    with replying(204, b"") as r:
        assert (await probe(spec(r.url(), expect_status=[[200, 200], [204, 204]]))).ok
        wrong = await probe(spec(r.url(), expect_status=[[200, 200]]))
        assert not wrong.ok
        assert wrong.detail == f"http 127.0.0.1:{r.port}: HTTP 204, expected 200"
    with replying(503, b"") as r:
        # Without expect_status a 503 fails; a maintenance page may be declared healthy.
        assert not (await probe(spec(r.url()))).ok
        assert (await probe(spec(r.url(), expect_status=[[500, 599]]))).ok


@pytest.mark.asyncio
async def test_expect_body_found_and_missing_never_shows_the_body() -> None:
    with replying(200, b'{"status": "UP", "token": "s3cret"}') as r:
        assert (await probe(spec(r.url(), expect_body='"status": "UP"'))).ok
        missing = await probe(spec(r.url(), expect_body="DOWN"))
    assert not missing.ok
    assert "s3cret" not in missing.detail and "DOWN" not in missing.detail
    assert "body lacks the expected text" in missing.detail
    assert r.requests[0].headers.get("Accept-Encoding") == "identity"


@pytest.mark.asyncio
async def test_non_utf8_body_is_matched_as_bytes() -> None:
    with replying(200, b"\xff\xfe\x80 ready \xc3\x28" + "é".encode()) as r:
        assert (await probe(spec(r.url(), expect_body="ready"))).ok
        assert (await probe(spec(r.url(), expect_body="é"))).ok
        assert not (await probe(spec(r.url(), expect_body="\ufffd"))).ok


@pytest.mark.asyncio
async def test_huge_body_is_read_only_up_to_the_limit() -> None:
    near = b"a" * 100 + b"NEEDLE" + b"a" * (BODY_LIMIT * 40)
    far = b"a" * (BODY_LIMIT + 10) + b"NEEDLE" + b"a" * 1000
    with replying(200, near) as r:
        result = await probe(spec(r.url(), expect_body="NEEDLE"))
        assert result.ok
    with replying(200, far) as r:
        result = await probe(spec(r.url(), expect_body="NEEDLE"))
        assert not result.ok
        assert f"read {BODY_LIMIT} bytes" in result.detail


@pytest.mark.asyncio
async def test_slow_drip_body_is_cut_at_the_timeout(drip: DripServer) -> None:
    started = time.monotonic()
    result = await probe(spec(drip.url(), timeout=0.5, expect_body="NEEDLE"))
    took = time.monotonic() - started
    assert not result.ok
    assert took < 1.5, took
    # The read itself stops at its deadline too: no thread is left draining the drip.
    deadline = time.monotonic() + 3.0
    while any(t.name == "probe-http" for t in threading.enumerate()):
        assert time.monotonic() < deadline, "the probe's reader thread is still reading"
        await asyncio.sleep(0.05)


def test_expect_keys_refused_for_other_kinds_and_bad_ranges() -> None:
    with pytest.raises(PolicyError, match="http probes only"):
        ProbeSpec.from_mapping({"kind": "tcp", "target": "h:1", "expect_status": [[200, 200]]})
    with pytest.raises(PolicyError, match="expect_status"):
        ProbeSpec.from_mapping({"kind": "http", "target": "http://h/", "expect_status": [[3, 9]]})
    with pytest.raises(PolicyError, match="expect_body"):
        ProbeSpec.from_mapping({"kind": "http", "target": "http://h/", "expect_body": ""})
    model = Probe("http", "http://h/", expect_status=((200, 299),), expect_body="ok")
    assert ProbeSpec.from_model(model).expect_status == ((200, 299),)


@given(st.integers(100, 599), st.lists(st.tuples(st.integers(100, 599), st.integers(0, 99))))
@settings(max_examples=200, deadline=None)
def test_status_passes_is_membership(status: int, raw: list[tuple[int, int]]) -> None:
    ranges = tuple((low, min(599, low + width)) for low, width in raw)
    default = 200 <= status < 400
    expected = any(low <= status <= high for low, high in ranges) if ranges else default
    assert status_passes(status, ranges) is expected
