"""Render 1,000 services (units + policies) and report the time. Goal: well under 1 s.

    /opt/unitgen/bin/python bench/bench_render.py [--services N] [--repeat R]

Services are built as model objects (the spec loader has its own bench), each
with dependencies, environment, directories, limits and the strict profile, so
every template branch and every quoting kind runs. Reports min and median of R
runs, wall clock and this process's CPU time (the latter is what to compare on
a shared, loaded machine), after one warm-up run that loads the templates.
"""

from __future__ import annotations

import argparse
import statistics
import time

from unitgen.model import Hardening, Limits, Override, Restart, Service, Spec
from unitgen.render import RenderOptions, render, render_policies


def build(n: int) -> Spec:
    services = {}
    for i in range(n):
        name = f"svc{i}"
        services[name] = Service(
            name=name,
            unit=f"{name}.service",
            description=f'Service {i}: 100% "hostile" $HOME ;',
            exec=("/usr/bin/python3", "-m", "http.server", str(8000 + i % 1000), ";", "$X"),
            requires=("redis-server.service",),
            after=("network-online.target", "redis-server.service"),
            wants=("network-online.target",),
            environment=(("A", "x y"), ("B", 'q"uote\\')),
            state_directory=(name,),
            logs_directory=(name,),
            restart=Restart("on-failure", 5.0, 10, 1800.0),
            limits=Limits(memory_max=1 << 30, cpu_quota="80%", tasks_max=256),
            hardening=Hardening(read_write_paths=(f"/srv/{name}",)),
        )
    overrides = {"nginx.service": Override(unit="nginx.service", restart=Restart(delay=2.0))}
    return Spec(path="bench.toml", services=services, overrides=overrides)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    spec = build(args.services)
    options = RenderOptions(systemd_version=252, unitgen_bin="/opt/unitgen/bin/unitgen")
    render(spec, options)  # warm-up: template compilation
    units: list[float] = []
    both: list[float] = []
    units_cpu: list[float] = []
    both_cpu: list[float] = []
    for _ in range(args.repeat):
        c0, t0 = time.process_time(), time.perf_counter()
        files = render(spec, options)
        c1, t1 = time.process_time(), time.perf_counter()
        policies = render_policies(spec, options)
        c2, t2 = time.process_time(), time.perf_counter()
        units.append(t1 - t0)
        both.append(t2 - t0)
        units_cpu.append(c1 - c0)
        both_cpu.append(c2 - c0)
    size = sum(len(t) for t in files.values()) + sum(len(t) for t in policies.values())
    print(
        f"{args.services} services -> {len(files)} unit files + {len(policies)} policies "
        f"({size / 1e6:.1f} MB)"
    )
    for label, wall, cpu in (
        ("units only:      ", units, units_cpu),
        ("units + policies:", both, both_cpu),
    ):
        print(
            f"{label} wall min {min(wall):.3f} s median {statistics.median(wall):.3f} s; "
            f"cpu min {min(cpu):.3f} s median {statistics.median(cpu):.3f} s"
        )


if __name__ == "__main__":
    main()
