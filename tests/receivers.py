"""Real network endpoints for tests: a recording HTTP receiver, a hanging one, a dead port.

Everything binds 127.0.0.1 on an ephemeral port and is closed by its owner
(use them as context managers or through fixtures). No mocks: requests
really connects, really times out and really follows redirects.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str  # includes the query string
    headers: dict[str, str]
    body: bytes
    at: float = field(default_factory=time.monotonic)


# (status, extra headers, body)
Reply = tuple[int, dict[str, str], bytes]
Route = Callable[[Recorded], Reply]


def ok_route(_: Recorded) -> Reply:
    return 200, {}, b"ok"


class Receiver:
    """An HTTP server in a thread that records every request and answers via ``route``.

    ``script`` is a list of statuses to answer in order before falling back to
    ``route``; it lets a test say "500, 500, then 200".
    """

    def __init__(self, route: Route = ok_route) -> None:
        self.route = route
        self.script: list[int] = []
        self.requests: list[Recorded] = []
        self._cond = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                rec = Recorded(self.command, self.path, dict(self.headers.items()), body)
                with receiver._cond:
                    receiver.requests.append(rec)
                    scripted = receiver.script.pop(0) if receiver.script else None
                    receiver._cond.notify_all()
                if scripted is not None:
                    status, headers, payload = scripted, dict[str, str](), b"scripted"
                else:
                    status, headers, payload = receiver.route(rec)
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = _handle

            def log_message(self, format: str, *args: object) -> None:
                pass  # keep test output clean; the requests are recorded instead

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Recorded]:
        """The first ``count`` requests, waiting up to ``timeout`` for them."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.requests) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"expected {count} requests, got {len(self.requests)}")
                self._cond.wait(left)
            return list(self.requests[:count])

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)

    def __enter__(self) -> Receiver:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class HangingServer:
    """Accepts TCP connections (through the kernel backlog) and never answers."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.port = self.sock.getsockname()[1]

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> HangingServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def closed_port() -> int:
    """A port on 127.0.0.1 where nothing listens (connecting is refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port
