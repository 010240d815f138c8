"""Cost of one probe and one alert, and the alert time bound against a hanging endpoint.

Run: /opt/unitgen/bin/python bench/bench_probes_alerts.py [--trials 200]

All endpoints are on loopback: an HTTP server and an accepting TCP server run
in a child process (so their CPU is not counted here), /bin/true, and a
socket that accepts and never answers. For each probe kind and for a webhook
alert it reports min / median / p95 / max wall latency and the CPU time this
process spent per call (user + system, all threads), which is what the
listener pays per health check. The kinds are measured in alternation, trial
by trial, so machine noise hits them alike.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from receivers import HangingServer

from handlers.alerts import Alert, Alerter, AlertTarget
from handlers.probes import ProbeSpec, probe

SERVERS = """
import socket, sys, threading
sys.path.insert(0, sys.argv[1])
from receivers import Receiver
tcp = socket.create_server(("127.0.0.1", 0), backlog=128)
def accept():
    while True:
        conn, _ = tcp.accept()
        conn.close()
threading.Thread(target=accept, daemon=True).start()
with Receiver() as recv:
    print(recv.port, tcp.getsockname()[1], flush=True)
    sys.stdin.read()
"""


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {
        "min_ms": ordered[0] * 1e3,
        "median_ms": statistics.median(ordered) * 1e3,
        "p95_ms": p95 * 1e3,
        "max_ms": ordered[-1] * 1e3,
    }


async def main(trials: int, http_port: int, tcp_port: int) -> dict[str, object]:
    alert = Alert(
        unit="bench.service",
        incident_id="bench",
        level="restart",
        status="firing",
        reason="exit-code",
        summary="bench",
        attempts=1,
        started_at=time.time(),
        ended_at=None,
        host="bench",
        labels={},
    )
    results: dict[str, object] = {}
    base = f"http://127.0.0.1:{http_port}"
    with HangingServer() as hang:
        tmp = Path(tempfile.mkdtemp())
        (tmp / "hook.url").write_text(f"{base}/hook")
        (tmp / "hang.url").write_text(hang.url())
        alerter = Alerter(
            [
                AlertTarget.from_mapping(
                    {"name": "hook", "type": "webhook", "url_file": str(tmp / "hook.url")}
                )
            ]
        )
        cases: dict[str, Callable[[], Awaitable[object]]] = {
            "probe_http": lambda: probe(ProbeSpec("http", f"{base}/health", 2.0)),
            "probe_tcp": lambda: probe(ProbeSpec("tcp", f"127.0.0.1:{tcp_port}", 2.0)),
            "probe_command": lambda: probe(ProbeSpec("command", ("/bin/true",), 2.0)),
            "alert_webhook": lambda: alerter.send(alert),
        }
        wall: dict[str, list[float]] = {k: [] for k in cases}
        cpu: dict[str, list[float]] = {k: [] for k in cases}
        for _ in range(trials):
            for name, call in cases.items():
                c0, t0 = time.process_time(), time.perf_counter()
                await call()
                wall[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
        for name in cases:
            results[name] = summary(wall[name]) | {
                "cpu_ms_per_call": statistics.mean(cpu[name]) * 1e3
            }
        slow = Alerter(
            [
                AlertTarget.from_mapping(
                    {
                        "name": "hang",
                        "type": "webhook",
                        "url_file": str(tmp / "hang.url"),
                        "timeout": 1.0,
                        "retries": 2,
                    }
                )
            ]
        )
        t0 = time.perf_counter()
        (delivery,) = await slow.send(alert)
        results["alert_hanging_endpoint"] = {
            "bound_s": slow.time_bound(),
            "took_s": time.perf_counter() - t0,
            "attempts": delivery.attempts,
            "ok": delivery.ok,
        }
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=200)
    args = parser.parse_args()
    tests_dir = str(Path(__file__).resolve().parent.parent / "tests")
    servers = subprocess.Popen(
        [sys.executable, "-c", SERVERS, tests_dir],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert servers.stdout is not None and servers.stdin is not None
    ports = [int(p) for p in servers.stdout.readline().split()]
    try:
        print(json.dumps(asyncio.run(main(args.trials, *ports)), indent=2))
    finally:
        servers.stdin.close()
        servers.wait(10)
