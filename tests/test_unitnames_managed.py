"""One rule for every unit unitgen manages: spec, render, check, recover, locks, D-Bus API.

unitgen/unitnames.py:managed_unit_problem is systemd's rule plus what unitgen
itself needs: no leading '.' or '-', and a recovery instance
``unitgen-recover@NAME.service`` that fits systemd's 255 characters (proven
against a real manager in tests/test_unitnames_sandbox.py).
"""

from __future__ import annotations

import string
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from spec_toml import dumps

from handlers.locks import UnitLock, check_unit_name
from unitgen.errors import RenderError, SpecError, UsageError
from unitgen.model import Override, Service, Spec
from unitgen.paths import Scope
from unitgen.render import RenderOptions, render
from unitgen.specfile import parse_spec
from unitgen.unitnames import (
    MANAGED_NAME_MAX,
    UNIT_NAME_MAX,
    UnitNameKind,
    managed_unit_problem,
    recovery_instance,
    unit_name_problem,
)

SRC = "spec.toml"
OPTIONS = RenderOptions(systemd_version=252, scope=Scope.USER, unitgen_bin="/bin/false")


def _service_spec(key: str) -> str:
    return dumps({"service": {key: {"exec": ["/bin/true"]}}})


def _override_spec(unit: str) -> str:
    return dumps({"override": {unit: {"hardening": "standard"}}})


def _spec_problem(text: str) -> tuple[str, str]:
    with pytest.raises(SpecError) as info:
        parse_spec(text, SRC)
    [problem] = info.value.problems
    return problem.key, problem.message


def _accepted_everywhere(unit: str) -> bool:
    """What recover/reset/history, the engine and the D-Bus API say of ``unit``."""
    try:
        check_unit_name(unit)
    except UsageError:
        assert managed_unit_problem(unit) is not None
        return False
    assert managed_unit_problem(unit) is None
    return True


def test_the_limit_is_systemds_minus_the_recovery_instance() -> None:
    assert MANAGED_NAME_MAX == 231
    longest = "a" * (MANAGED_NAME_MAX - len(".service")) + ".service"
    assert len(recovery_instance(longest)) == UNIT_NAME_MAX


@pytest.mark.parametrize(
    ("unit", "fragment"),
    [
        ("a" * (MANAGED_NAME_MAX + 1 - 8) + ".service", "recovery unit"),  # 232: unrecoverable
        ("a" * (UNIT_NAME_MAX - 8) + ".service", "recovery unit"),  # 255: systemd's own limit
        ("a" * (UNIT_NAME_MAX + 1 - 8) + ".service", "at most 255"),
        ("a" * (MANAGED_NAME_MAX - 9) + "@.service", "template whose instances"),  # 231
        ("api.servic", "type suffix"),
        ("api.bogus", "type suffix"),
        ("..service", "not starting with '.'"),
        ("...service", "not starting with '.'"),
        (".api.service", "not starting with '.'"),
        ("-api.service", "not starting with '-'"),
        ("@api.service", "prefix before '@'"),
    ],
)
def test_boundaries_refused_by_every_part(unit: str, fragment: str) -> None:
    problem = managed_unit_problem(unit)
    assert problem is not None and fragment in problem
    assert "\n" not in problem
    assert not _accepted_everywhere(unit)
    with pytest.raises(UsageError):
        UnitLock(Path("/nonexistent"), unit)


@pytest.mark.parametrize(
    "unit",
    [
        "a" * (MANAGED_NAME_MAX - 8) + ".service",  # 231: its recovery instance is 255
        "a" * (MANAGED_NAME_MAX - 10) + "@.service",  # 230: its shortest instance is 231
        "worker@.service",  # template without instance: the listener's policy scan needs it
        "worker@3.service",
        "a.b.service",
        "x\\x2dy.service",
        "api.socket",
    ],
)
def test_boundaries_accepted_by_every_part(unit: str) -> None:
    assert _accepted_everywhere(unit)


def test_dependencies_keep_systemds_own_rule() -> None:
    # Units the spec only refers to are never recovered or locked by unitgen.
    assert unit_name_problem("-.mount") is None
    spec = parse_spec(
        dumps({"service": {"api": {"exec": ["/bin/true"], "after": ["-.mount"]}}}), SRC
    )
    assert spec.services["api"].after == ("-.mount",)


@pytest.mark.parametrize(
    ("key", "shown"),
    [
        (".", 'service."."'),
        ("..", 'service.".."'),
        ("-x", "service.-x"),
        ("a" * 224, "service." + "a" * 224),
    ],
)
def test_spec_refuses_at_the_service_key(key: str, shown: str) -> None:
    where, message = _spec_problem(_service_spec(key))
    assert where == shown
    assert "/tmp" not in message and "\n" not in message


def test_spec_accepts_the_longest_recoverable_service() -> None:
    key = "a" * (MANAGED_NAME_MAX - len(".service"))
    spec = parse_spec(_service_spec(key), SRC)
    assert spec.services[key].unit == key + ".service"


@pytest.mark.parametrize(
    "unit", ["..service", "-x.service", "a" * (MANAGED_NAME_MAX - 7) + ".service"]
)
def test_spec_refuses_at_the_override_key(unit: str) -> None:
    where, _ = _spec_problem(_override_spec(unit))
    assert where.startswith("override.")


def test_render_refuses_a_spec_built_without_the_loader() -> None:
    # Anything calling render() directly gets the same rule and the same key.
    dotted = Service(name=".", unit="..service", description="x", exec=("/bin/true",))
    with pytest.raises(RenderError) as info:
        render(Spec(path="t.toml", services={".": dotted}), OPTIONS)
    assert str(info.value).startswith('t.toml: service."."')
    assert info.value.exit_code == 2
    long = "b" * (MANAGED_NAME_MAX - 7) + ".service"
    with pytest.raises(RenderError, match="recovery unit") as info:
        render(Spec(path="t.toml", overrides={long: Override(unit=long)}), OPTIONS)
    assert info.value.exit_code == 2


@pytest.mark.parametrize("command", ["render", "check"])
@pytest.mark.parametrize("key", [".", "a" * 224])
def test_render_and_check_refuse_alike(tmp_path: Path, command: str, key: str) -> None:
    spec = tmp_path / "spec.toml"
    spec.write_text(_service_spec(key))
    extra = ["--out", str(tmp_path / "out")] if command == "render" else []
    proc = subprocess.run(
        [sys.executable, "-m", "unitgen", command, str(spec), "--user", *extra],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    [line] = proc.stderr.splitlines()
    assert f"{spec}: service." in line
    assert "unitgen-check-" not in line and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


_ALPHABET = string.ascii_letters + string.digits + ":-_.\\@" + " /%é\n"


@given(
    st.one_of(
        st.text(alphabet=_ALPHABET, min_size=0, max_size=12),
        st.integers(MANAGED_NAME_MAX - 12, UNIT_NAME_MAX).map(lambda n: "k" * n),
        st.tuples(st.sampled_from(["", ".", "-", "@", "a@"]), st.integers(215, 235)).map(
            lambda t: t[0] + "z" * t[1]
        ),
    )
)
def test_every_service_the_spec_accepts_can_be_recovered(key: str) -> None:
    try:
        spec = parse_spec(_service_spec(key), SRC)
    except SpecError:
        return
    unit = spec.services[key].unit
    assert _accepted_everywhere(unit)
    UnitLock(Path("/nonexistent"), unit)  # the lock file name is derived without error
    if "@" in unit.removesuffix(".service") and unit.endswith("@.service"):
        unit = unit.replace("@.service", "@i.service")  # the shortest instance
    instance = recovery_instance(unit)
    assert unit_name_problem(instance, UnitNameKind.INSTANCE) is None
    assert len(instance) <= UNIT_NAME_MAX


def test_verify_lines_name_the_file_not_checks_temporary_directory(tmp_path: Path) -> None:
    from unitgen.verify import verify

    (tmp_path / "bad.service").write_text("[Service]\nExecStart=/bin/true\nNoSuchKey=1\n")
    report = verify(tmp_path, ["bad.service"], Scope.USER)
    [line] = report.errors["bad.service"]
    assert line.startswith("bad.service:3:") and "NoSuchKey" in line
    assert str(tmp_path) not in line
