"""Rendered units in a real systemd (the user-manager sandbox of tests/conftest.py).

What only a real manager can prove: hostile values come out of systemd exactly as
the spec wrote them, a strict unit starts and serves, and OnFailure= reaches the
recovery template with a template instance's full name intact.
"""

from __future__ import annotations

import dataclasses
import json
import random
import socket
import time
from pathlib import Path

from unitgen.model import Hardening, Override, Restart, Service, Spec
from unitgen.paths import Scope
from unitgen.render import BaseDirs, RenderOptions, render
from unitgen.sandbox import Sandbox

NASTY = [
    'double "quotes" and \\backslash\\',
    "single 'quotes'",
    ";",
    "a;b",
    "\\;",
    "100% %n %i %% %",
    "$HOME ${HOME} $$ $",
    "trailing backslash \\",
    "\ttab\tand  spaces ",
    "",
    "=",
    "[Service]",
    "#comment",
    "ExecStartPost=/bin/false",
    "unicode: ünï €",
    "\\x41 \\n \\t",
]


def _random_values(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    pool = "\\\"'%$;[]=# \t{}`ab01é€\x0b\x0c"
    return ["".join(rng.choice(pool) for _ in range(rng.randint(0, 12))) for _ in range(count)]


def _options(tmp_path: Path, **kw: object) -> RenderOptions:
    base = RenderOptions(
        systemd_version=252,
        scope=Scope.USER,
        unitgen_bin="/bin/false",
        policy_dir=tmp_path / "policy",
        base_dirs=BaseDirs.for_scope(Scope.USER),
    )
    return dataclasses.replace(base, **kw)  # type: ignore[arg-type]


def _busctl(sb: Sandbox, unit: str, prop: str, interface: str = "Service") -> object:
    path = (
        sb.run(
            [
                "busctl",
                "--user",
                "call",
                "org.freedesktop.systemd1",
                "/org/freedesktop/systemd1",
                "org.freedesktop.systemd1.Manager",
                "LoadUnit",
                "s",
                unit,
            ],
            check=True,
        )
        .stdout.split()[1]
        .strip('"')
    )
    res = sb.run(
        [
            "busctl",
            "--user",
            "get-property",
            "--json=short",
            "org.freedesktop.systemd1",
            path,
            f"org.freedesktop.systemd1.{interface}",
            prop,
        ],
        check=True,
    )
    return json.loads(res.stdout)["data"]


def test_hostile_values_round_trip_through_systemd(user_sandbox: Sandbox, tmp_path: Path) -> None:
    values = NASTY + _random_values(24, seed=20261123)
    recorder = tmp_path / "record.py"
    recorder.write_text(
        "import json, os, sys\n"
        "out = {'argv': sys.argv[1:], 'env': {k: v for k, v in os.environ.items()"
        " if k.startswith('H_')}}\n"
        "open(sys.argv[1], 'w').write(json.dumps(out))\n"
    )
    services = []
    chunks = [values[i : i + 8] for i in range(0, len(values), 8)]
    for n, chunk in enumerate(chunks):
        out = tmp_path / f"out{n}.json"
        services.append(
            Service(
                name=f"hostile{n}",
                unit=f"ugq-hostile{n}.service",
                # Odd chunks put a hostile value first and last: a Description that
                # starts and ends with quotes or '#' must stay as it is.
                description=(
                    f"d{n} " + " | ".join(chunk) + " |"
                    if n % 2 == 0
                    else f'"{chunk[0]}" ' + " | ".join(chunk) + ' "'
                ),
                exec=("/usr/bin/python3", str(recorder), str(out), *chunk),
                type="exec",
                environment=tuple((f"H_{i}", v) for i, v in enumerate(chunk)),
                restart=Restart(policy="no"),
                # Strict, except that the recorder must reach tmp_path in the real /tmp.
                hardening=Hardening(disable=("PrivateTmp",), read_write_paths=(str(tmp_path),)),
            )
        )
    spec = Spec(path="t", services={s.name: s for s in services})
    files = render(spec, _options(tmp_path))
    user_sandbox.install_units(files)
    for n, svc in enumerate(services):
        # What systemd parsed (before it expands $VAR at exec time: $$ is still doubled).
        exec_start = _busctl(user_sandbox, svc.unit, "ExecStart")
        assert exec_start[0][1] == [w.replace("$", "$$") for w in svc.exec]  # type: ignore[index]
        env = _busctl(user_sandbox, svc.unit, "Environment")
        assert env == [f"{k}={v}" for k, v in svc.environment]
        # busctl, not `systemctl show`: str.splitlines() would split at \x0b and \x0c.
        desc = _busctl(user_sandbox, svc.unit, "Description", "Unit")
        assert desc == svc.description.strip(" \t")
        # And what the program really got.
        user_sandbox.systemctl("start", svc.unit, check=True)
        out = tmp_path / f"out{n}.json"
        deadline = time.monotonic() + 10
        while not out.exists() or not out.read_text():
            assert time.monotonic() < deadline, user_sandbox.journal(svc.unit)
            time.sleep(0.02)
        got = json.loads(out.read_text())
        assert got["argv"] == list(svc.exec[2:])
        assert got["env"] == dict(svc.environment)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_strict_unit_starts_and_serves(fresh_user_sandbox: Sandbox, tmp_path: Path) -> None:
    sb = fresh_user_sandbox
    port = _free_port()
    web = Service(
        name="ugq-web",
        unit="ugq-web.service",
        description="plain network daemon",
        exec=("/usr/bin/python3", "-m", "http.server", "--bind", "127.0.0.1", str(port)),
        type="exec",
        state_directory=("ugq-web",),
    )
    files = render(Spec(path="t", services={"w": web}), _options(tmp_path))
    assert "ProtectSystem=strict" in files[web.unit]
    sb.install_units(files)
    sb.systemctl("start", web.unit, check=True)
    sb.wait_for(web.unit, "running", prop="SubState")
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
                conn.sendall(b"GET / HTTP/1.0\r\n\r\n")
                assert conn.recv(64).startswith(b"HTTP/1.0 200")
                break
        except OSError:
            assert time.monotonic() < deadline, sb.journal(web.unit)
            time.sleep(0.05)
    props = sb.show(web.unit, "ProtectSystem", "NoNewPrivileges", "SubState")
    assert props == {"ProtectSystem": "strict", "NoNewPrivileges": "yes", "SubState": "running"}
    sb.systemctl("stop", web.unit, check=True)


def test_on_failure_reaches_recovery_with_the_instance_name(
    fresh_user_sandbox: Sandbox, tmp_path: Path
) -> None:
    sb = fresh_user_sandbox
    log = tmp_path / "recover.log"
    fake = tmp_path / "unitgen"
    fake.write_text(f'#!/bin/sh\necho "$*|$MONITOR_UNIT" >> {log}\n')
    fake.chmod(0o755)
    worker = Service(
        name="ugq-worker@",
        unit="ugq-worker@.service",
        description="fails at once",
        exec=("/bin/false",),
        restart=Restart(policy="no"),
    )
    files = render(
        Spec(path="t", services={"w": worker}), _options(tmp_path, unitgen_bin=str(fake))
    )
    sb.install_units(files)
    instances = ["ugq-worker@3.service", "ugq-worker@a\\x2db.service"]
    for unit in instances:
        sb.systemctl("start", unit)
    deadline = time.monotonic() + 15
    while len(log.read_text().splitlines() if log.exists() else []) < len(instances):
        assert time.monotonic() < deadline, sb.journal(
            "unitgen-recover@ugq-worker@3.service.service"
        )
        time.sleep(0.05)
    lines = sorted(log.read_text().splitlines())
    assert lines == sorted(f"recover --user {u}|{u}" for u in instances)


def test_strict_system_unit_starts_and_serves_in_a_booted_container(
    system_sandbox: Sandbox, tmp_path: Path
) -> None:
    """System scope: every strict directive (ProtectHome, ProtectKernel*, DynamicUser) applies."""
    sb = system_sandbox
    web = Service(
        name="ugq-sysweb",
        unit="ugq-sysweb.service",
        description="plain network daemon",
        exec=("/usr/bin/python3", "-m", "http.server", "--bind", "127.0.0.1", "8088"),
        type="exec",
        state_directory=("ugq-sysweb",),
    )
    options = dataclasses.replace(
        _options(tmp_path), scope=Scope.SYSTEM, base_dirs=BaseDirs.for_scope(Scope.SYSTEM)
    )
    files = render(Spec(path="t", services={"w": web}), options)
    text = files[web.unit]
    for line in ("DynamicUser=yes", "ProtectHome=yes", "ProtectKernelTunables=yes"):
        assert line in text.splitlines()
    sb.install_units(files)
    sb.systemctl("start", web.unit, check=True)
    sb.wait_for(web.unit, "running", prop="SubState")
    fetch = (
        "import sys, time, urllib.request\n"
        "end = time.monotonic() + 10\n"
        "while True:\n"
        "    try:\n"
        "        r = urllib.request.urlopen('http://127.0.0.1:8088/', timeout=1)\n"
        "        print(r.status); break\n"
        "    except OSError:\n"
        "        if time.monotonic() > end: raise\n"
        "        time.sleep(0.05)\n"
    )
    # The container has its own network namespace: fetch from inside it.
    res = sb.run(["nsenter", "--target=1", "--net", "--", "/usr/bin/python3", "-c", fetch])
    assert res.stdout.strip() == "200", res.stderr + sb.journal(web.unit)
    props = sb.show(web.unit, "DynamicUser", "ProtectHome", "SubState")
    assert props == {"DynamicUser": "yes", "ProtectHome": "yes", "SubState": "running"}
    sb.systemctl("stop", web.unit, check=True)


def test_dropins_harden_real_debian_daemons(system_sandbox: Sandbox, tmp_path: Path) -> None:
    """nginx (starts as root, drops to www-data) under 'standard'; redis under 'strict'."""
    sb = system_sandbox
    overrides = (
        Override(
            unit="nginx.service",
            restart=Restart(delay=2.0),
            hardening=Hardening(profile="standard"),
        ),
        Override(unit="redis-server.service", hardening=Hardening(profile="strict")),
    )
    options = dataclasses.replace(
        _options(tmp_path), scope=Scope.SYSTEM, base_dirs=BaseDirs.for_scope(Scope.SYSTEM)
    )
    files = render(Spec(path="t", overrides={o.unit: o for o in overrides}), options)
    for ovr in overrides:
        if sb.show(ovr.unit, "LoadState")["LoadState"] != "loaded":
            raise AssertionError(f"{ovr.unit} is not installed in the container image")
    # The container starts with an empty /var: give the daemons what their packages would.
    for argv in (
        ["mkdir", "-p", "/var/lib/nginx", "/var/log/nginx", "/var/lib/redis", "/var/log/redis"],
        ["chown", "redis:redis", "/var/lib/redis", "/var/log/redis"],
    ):
        sb.run(argv, check=True)
    # Baseline: each daemon starts without our drop-in, so a failure below is ours.
    for ovr in overrides:
        sb.systemctl("start", ovr.unit, check=True)
        sb.systemctl("stop", ovr.unit, check=True)
    sb.install_units(files)
    for ovr in overrides:
        sb.systemctl("restart", ovr.unit, check=True)
        props = sb.wait_for(ovr.unit, "running", prop="SubState", timeout=20)
        assert props["ActiveState"] == "active", sb.journal(ovr.unit)
        dropins = sb.show(ovr.unit, "DropInPaths")["DropInPaths"]
        assert "70-unitgen.conf" in dropins
    assert sb.show("nginx.service", "ProtectSystem")["ProtectSystem"] == "full"
    assert sb.show("redis-server.service", "ProtectSystem")["ProtectSystem"] == "strict"
    for ovr in overrides:
        sb.systemctl("stop", ovr.unit)


def test_system_recovery_unit_runs_under_its_hardening(
    system_sandbox: Sandbox, tmp_path: Path
) -> None:
    """The root recovery unit starts in system scope and can write where cleanup must."""
    sb = system_sandbox
    log = tmp_path / "recover.log"
    stale = Path("/var/tmp/ugq-stale")  # what a cleanup step would delete: real /var/tmp
    fake = tmp_path / "unitgen"
    fake.write_text(
        # rm first: the log line is what the test waits for.
        f'#!/bin/sh\nrm -f {stale}\necho "$*|$MONITOR_UNIT|$UNITGEN_POLICY_DIR" >> {log}\n'
    )
    fake.chmod(0o755)
    failing = Service(
        name="ugq-sysfail",
        unit="ugq-sysfail.service",
        description="fails at once",
        exec=("/bin/false",),
        restart=Restart(policy="no"),
    )
    options = dataclasses.replace(
        _options(tmp_path, unitgen_bin=str(fake)),
        scope=Scope.SYSTEM,
        base_dirs=BaseDirs.for_scope(Scope.SYSTEM),
    )
    sb.install_units(render(Spec(path="t", services={"f": failing}), options))
    sb.run(["touch", str(stale)], check=True)
    sb.systemctl("start", failing.unit)
    deadline = time.monotonic() + 15
    while not (log.exists() and log.read_text()):
        assert time.monotonic() < deadline, sb.journal(
            "unitgen-recover@ugq-sysfail.service.service"
        )
        time.sleep(0.05)
    assert log.read_text().splitlines() == [
        f"recover ugq-sysfail.service|ugq-sysfail.service|{tmp_path / 'policy'}"
    ]
    assert sb.run(["test", "-e", str(stale)]).returncode == 1


def test_a_dropin_capability_list_is_the_whole_bounding_set(
    user_sandbox: Sandbox, tmp_path: Path
) -> None:
    """systemd ORs CapabilityBoundingSet= lines; the drop-in resets first, so only ours stay."""
    sb = user_sandbox
    vendor = f"capvendor-{time.monotonic_ns() % 100000}"
    body = "[Service]\nExecStart=/bin/sleep infinity\nCapabilityBoundingSet=CAP_KILL CAP_CHOWN\n"
    ovr = Override(
        unit=f"{vendor}.service",
        hardening=Hardening(profile="off", capabilities=("CAP_DAC_OVERRIDE",)),
    )
    files = render(Spec(path="t", overrides={ovr.unit: ovr}), _options(tmp_path))
    # What the reset is for: a drop-in with the list alone adds to the vendor's set.
    naive = f"{vendor}-naive.service"
    sb.install_units(
        {
            **files,
            f"{vendor}.service": body,
            naive: body,
            f"{naive}.d/50-naive.conf": "[Service]\nCapabilityBoundingSet=CAP_DAC_OVERRIDE\n",
        }
    )
    ours = sb.show(ovr.unit, "CapabilityBoundingSet")["CapabilityBoundingSet"]
    theirs = sb.show(naive, "CapabilityBoundingSet")["CapabilityBoundingSet"]
    assert ours == "cap_dac_override", files
    assert set(theirs.split()) == {"cap_chown", "cap_kill", "cap_dac_override"}, theirs
