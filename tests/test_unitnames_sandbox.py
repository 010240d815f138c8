"""The recovery-instance limit of unitgen/unitnames.py, against a real user manager.

The longest service name the spec accepts still reaches ``unitgen recover``
through ``OnFailure=unitgen-recover@%n.service``; one character more and
systemd drops the dependency ("File name too long"), which is why the spec
refuses it.
"""

from __future__ import annotations

import time
from pathlib import Path

from unitgen.model import Restart, Service, Spec
from unitgen.paths import Scope
from unitgen.render import BaseDirs, RenderOptions, render
from unitgen.sandbox import Sandbox
from unitgen.unitnames import MANAGED_NAME_MAX, managed_unit_problem


def _service(unit: str) -> Service:
    return Service(
        name=unit.removesuffix(".service"),
        unit=unit,
        description="fails at once",
        exec=("/bin/false",),
        restart=Restart(policy="no"),
    )


def test_longest_accepted_names_are_recovered_and_one_more_is_not(
    user_sandbox: Sandbox, tmp_path: Path
) -> None:
    sb = user_sandbox
    log = tmp_path / "recover.log"
    fake = tmp_path / "unitgen"
    fake.write_text(f'#!/bin/sh\necho "$*" >> {log}\n')
    fake.chmod(0o755)
    plain = "ugn" + "p" * (MANAGED_NAME_MAX - 3 - len(".service")) + ".service"
    template = "ugn" + "t" * (MANAGED_NAME_MAX - 4 - len("@.service")) + "@.service"
    instance = template.replace("@.service", "@i.service")
    too_long = "ugn" + "q" * (MANAGED_NAME_MAX - 2 - len(".service")) + ".service"
    assert len(plain) == len(instance) == MANAGED_NAME_MAX == len(too_long) - 1
    assert managed_unit_problem(plain) is None and managed_unit_problem(template) is None
    assert managed_unit_problem(too_long) is not None

    options = RenderOptions(
        systemd_version=252,
        scope=Scope.USER,
        unitgen_bin=str(fake),
        policy_dir=tmp_path / "policy",
        base_dirs=BaseDirs.for_scope(Scope.USER),
    )
    spec = Spec(path="t", services={"p": _service(plain), "t": _service(template)})
    files = render(spec, options)
    # The name the spec refuses, installed by hand with the same text: what systemd
    # would have made of it had unitgen rendered it.
    files[too_long] = files[plain]
    sb.install_units(files)

    assert sb.show(too_long, "OnFailure")["OnFailure"] == ""
    assert sb.show(plain, "OnFailure")["OnFailure"] == f"unitgen-recover@{plain}.service"
    for unit in (plain, instance, too_long):
        sb.systemctl("start", unit)
    deadline = time.monotonic() + 15
    while len(log.read_text().splitlines() if log.exists() else []) < 2:
        assert time.monotonic() < deadline, sb.journal(f"unitgen-recover@{plain}.service")
        time.sleep(0.05)
    sb.wait_for(too_long, "failed")
    lines = sorted(log.read_text().splitlines())
    assert lines == sorted(f"recover --user {u}" for u in (plain, instance))
    for unit in (plain, instance, too_long):
        sb.systemctl("reset-failed", unit)
