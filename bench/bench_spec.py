"""How long load_spec takes on a spec of N services (default 1,000).

    /opt/unitgen/bin/python bench/bench_spec.py [--services N] [--repeat R]

Generates a spec in a temporary directory where every service uses most keys
(restart, limits, health, depends, cleanup, disk, recovery, hardening, a
dependency chain), then times load_spec (read + TOML parse + validate + build
the model) R times and prints the best and the median.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import tomllib
from pathlib import Path

from unitgen.specfile import load_spec

SERVICE = """
[service.svc{i}]
description = "Benchmark service {i}"
exec = ["/usr/bin/python3", "-m", "http.server", "{port}"]
user = "svc{i}"
requires = [{requires}]
after = ["network-online.target"{after}]
wants = ["network-online.target"]
state_directory = "svc{i}"
environment = {{ PORT = "{port}", MODE = "100% prod; \\"quoted\\"" }}
restart = {{ policy = "on-failure", delay = "5s", burst = 10, interval = "30min" }}
limits = {{ memory_max = "1G", memory_high = "80%", cpu_quota = "80%", tasks_max = 256 }}
health = {{ http = "http://127.0.0.1:{port}/", interval = "10s", timeout = "2s", failures = 3 }}
depends = [{{ tcp = "127.0.0.1:6379", timeout = "2s" }}]
cleanup = {{ pidfile = "/run/svc{i}/svc.pid", temp = ["/var/tmp/svc{i}"], older_than = "1h" }}
disk = {{ paths = ["/var/lib/svc{i}"], min_free = ["10%", "1G"], cleanup = ["/var/log/svc{i}"] }}
validate = ["/usr/bin/python3", "-c", "pass"]
recovery = {{ max_attempts = 5, window = "10min", backoff = {{ base = "5s", max = "5min" }} }}
hardening = {{ profile = "strict", disable = ["MemoryDenyWriteExecute"], \
read_write_paths = ["/srv/svc{i}"] }}
"""

HEADER = """
[defaults]
hardening = "strict"
alerts = ["ops"]

[alert.ops]
type = "webhook"
url_file = "/etc/unitgen/ops.url"
"""


def generate(n: int) -> str:
    parts = [HEADER]
    for i in range(n):
        prev = f'"svc{i - 1}.service"' if i else ""
        parts.append(
            SERVICE.format(
                i=i,
                port=10000 + i,
                requires=prev,
                after=f", {prev}" if prev else "",
            )
        )
    return "".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    text = generate(args.services)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "spec.toml"
        path.write_text(text)
        # CPU time as well as wall time: on a shared box the wall clock measures the
        # neighbours, the process clock mostly this process.
        times: list[tuple[float, float]] = []
        toml_times: list[tuple[float, float]] = []
        for _ in range(args.repeat):
            wall, cpu = time.perf_counter(), time.process_time()
            tomllib.loads(path.read_text())
            toml_times.append((time.perf_counter() - wall, time.process_time() - cpu))
            wall, cpu = time.perf_counter(), time.process_time()
            spec = load_spec(path)
            times.append((time.perf_counter() - wall, time.process_time() - cpu))
        assert len(spec.services) == args.services
    print(f"{args.services} services, {len(text) / 1024:.0f} KiB, {args.repeat} runs")
    for label, runs in (("load_spec", times), ("tomllib.loads alone", toml_times)):
        walls, cpus = [w for w, _ in runs], [c for _, c in runs]
        print(
            f"  {label}: wall best {min(walls) * 1000:.0f} ms, median "
            f"{statistics.median(walls) * 1000:.0f} ms; cpu best {min(cpus) * 1000:.0f} ms"
        )


if __name__ == "__main__":
    main()
