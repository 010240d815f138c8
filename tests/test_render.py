"""Rendering: structure under hostile input, the view rules, and the all-or-nothing writer."""

from __future__ import annotations

import dataclasses
import errno
import os
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import unitgen.writetrees as writetrees_module
from unitgen.errors import RenderError
from unitgen.model import Hardening, Override, Restart, Service, Spec
from unitgen.paths import Scope
from unitgen.quoting import unquote
from unitgen.render import RECOVER_UNIT, RenderOptions, render, render_policies
from unitgen.writetrees import write_trees

OPTIONS = RenderOptions(systemd_version=252, unitgen_bin="/opt/unitgen/bin/unitgen")
KEY = re.compile(r"[A-Z][A-Za-z0-9]*")


def parse_unit(text: str) -> list[tuple[str, str, str]]:
    """A unit file as systemd's line reader sees it: (section, key, raw value) triples.

    Strict on purpose: a continuation line, a key that is not a directive name or a
    line outside any section fails the test instead of being skipped.
    """
    section = ""
    out: list[tuple[str, str, str]] = []
    for raw in text.split("\n"):
        line = raw.strip(" \t")  # systemd's WHITESPACE, not Python's idea of it
        if not line or line.startswith(("#", ";")):
            continue
        trailing = len(line) - len(line.rstrip("\\"))
        assert trailing % 2 == 0, f"line continues onto the next one: {line!r}"
        if line.startswith("["):
            assert re.fullmatch(r"\[(Unit|Service|Install)\]", line), line
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        assert sep and section, f"not a directive in a section: {line!r}"
        assert KEY.fullmatch(key.strip(" \t")), f"bad key {key!r}"
        out.append((section, key.strip(" \t"), value.strip(" \t")))
    return out


def spec_of(*services: Service, overrides: tuple[Override, ...] = ()) -> Spec:
    return Spec(
        path="/etc/unitgen/spec.toml",
        services={s.name: s for s in services},
        overrides={o.unit: o for o in overrides},
    )


# Anything the validator could let through, and more: no line breakers (the
# validator and quote() both refuse them), surrogates excluded (not UTF-8).
hostile = st.text(
    alphabet=st.one_of(
        st.sampled_from(list("\\\"'%$;[]=# \t{}`\x0b\x0c\x85\u2028\u2029")),
        st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r\x00"),
    ),
    max_size=25,
)
hostile_path = hostile.map(lambda s: "/" + s.strip())
hostile_dir = hostile.filter(lambda s: s and ":" not in s and not s.startswith("/"))


def _service(
    description: str,
    args: list[str],
    env: list[str],
    path: str,
    dirs: list[str],
) -> Service:
    return Service(
        name="h",
        unit="h.service",
        description=description,
        exec=("/bin/prog", *args),
        exec_start_pre=(("/bin/pre", *args),),
        exec_reload=("/bin/reload", *args),
        environment=tuple((f"K{i}", v) for i, v in enumerate(env)),
        environment_files=(path,),
        working_directory=path,
        pidfile=path,
        state_directory=tuple(dirs),
        logs_directory=tuple(dirs),
        hardening=Hardening(read_write_paths=(path,)),
    )


def _benign(svc: Service) -> Service:
    return _service(
        "d",
        ["a"] * (len(svc.exec) - 1),
        ["v"] * len(svc.environment),
        "/p",
        ["s"] * len(svc.state_directory),
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    description=hostile,
    args=st.lists(hostile, max_size=4),
    env=st.lists(hostile, max_size=3),
    path=hostile_path,
    dirs=st.lists(hostile_dir, min_size=1, max_size=2),
)
def test_hostile_values_cannot_change_the_structure(
    description: str, args: list[str], env: list[str], path: str, dirs: list[str]
) -> None:
    svc = _service(description, args, env, path, dirs)
    try:
        text = render(spec_of(svc), OPTIONS)["h.service"]
    except RenderError as exc:
        # The only refusals: values systemd cannot hold faithfully (documented).
        assert description.strip(" \t").endswith("\\") or path.endswith("\\"), str(exc)
        return
    got = parse_unit(text)
    expected = parse_unit(render(spec_of(_benign(svc)), OPTIONS)["h.service"])
    assert [(s, k) for s, k, _ in got] == [(s, k) for s, k, _ in expected]
    values: dict[str, list[str]] = {}
    for _, key, value in got:
        values.setdefault(key, []).append(value)
    assert unquote(values["Description"][0], "text") == description.strip(" \t")
    assert unquote(values["ExecStart"][0], "exec") == svc.exec
    assert unquote(values["ExecStartPre"][0], "exec") == svc.exec_start_pre[0]
    assert unquote(values["ExecReload"][0], "exec") == svc.exec_reload
    assert tuple(unquote(v, "env") for v in values.get("Environment", [])) == svc.environment
    assert unquote(values["WorkingDirectory"][0], "path") == path
    assert unquote(values["PIDFile"][0], "path") == path
    assert unquote(values["EnvironmentFile"][0], "path") == path
    assert unquote(values["ReadWritePaths"][0], "paths") == (path,)
    assert unquote(values["StateDirectory"][0], "dirs") == tuple(dirs)


def test_sections_and_mandatory_lines() -> None:
    svc = Service(name="a", unit="a.service", description="A", exec=("/bin/true",))
    got = parse_unit(render(spec_of(svc), OPTIONS)["a.service"])
    keys = {(s, k): v for s, k, v in got}
    assert keys[("Unit", "StartLimitIntervalSec")] == "10s"
    assert keys[("Unit", "StartLimitBurst")] == "5"
    assert keys[("Unit", "OnFailure")] == "unitgen-recover@%n.service"
    assert ("Service", "StartLimitIntervalSec") not in keys  # never the deprecated spelling
    assert ("Service", "StartLimitBurst") not in keys
    assert keys[("Service", "Restart")] == "on-failure"
    assert keys[("Service", "RestartSec")] == "100ms"
    assert keys[("Install", "WantedBy")] == "multi-user.target"
    # strict, system scope, no user named: a dynamic user.
    assert keys[("Service", "DynamicUser")] == "yes"
    assert ("Service", "RestartMode") not in keys


def test_user_scope_rules() -> None:
    svc = Service(
        name="a", unit="a.service", description="A", exec=("/bin/true",), user="api", group="g"
    )
    user = dataclasses.replace(OPTIONS, scope=Scope.USER)
    got = {(s, k): v for s, k, v in parse_unit(render(spec_of(svc), user)["a.service"])}
    assert got[("Install", "WantedBy")] == "default.target"
    # A user manager cannot switch users; these would fail at start.
    for key in ("User", "Group", "DynamicUser"):
        assert ("Service", key) not in got
    # They need /run/systemd/inaccessible from PID 1 and die with 226/NAMESPACE without it.
    for key in ("ProtectHome", "ProtectKernelTunables", "ProtectKernelLogs"):
        assert ("Service", key) not in got
    assert got[("Service", "ProtectSystem")] == "strict"


def test_disable_and_explicit_user() -> None:
    svc = Service(
        name="a",
        unit="a.service",
        description="A",
        exec=("/bin/true",),
        hardening=Hardening(disable=("SystemCallFilter", "DynamicUser", "PrivateUsers")),
    )
    lines = render(spec_of(svc), OPTIONS)["a.service"].splitlines()
    assert not [line for line in lines if line.startswith("SystemCallFilter=")]
    assert "DynamicUser=yes" not in lines
    assert "PrivateUsers=yes" not in lines
    assert "SystemCallErrorNumber=EPERM" in lines
    with_user = dataclasses.replace(svc, hardening=Hardening(), user="api")
    lines = render(spec_of(with_user), OPTIONS)["a.service"].splitlines()
    assert "User=api" in lines and "DynamicUser=yes" not in lines


def test_refused_value_names_the_unit_and_directive() -> None:
    svc = Service(name="a", unit="a.service", description="ends in \\", exec=("/bin/true",))
    with pytest.raises(RenderError) as info:
        render(spec_of(svc), OPTIONS)
    message = str(info.value)
    assert message.startswith("/etc/unitgen/spec.toml: a.service: Description=: ")
    assert "continuation" in message and "\n" not in message
    assert info.value.exit_code == 2


def test_unknown_disable_name_is_bad_input() -> None:
    svc = Service(
        name="a",
        unit="a.service",
        description="A",
        exec=("/bin/true",),
        hardening=Hardening(disable=("MemoryDenyWriteExecut",)),
    )
    with pytest.raises(RenderError, match="MemoryDenyWriteExecut") as info:
        render(spec_of(svc), OPTIONS)
    assert info.value.exit_code == 2


def test_versions_filter_directives() -> None:
    svc = Service(name="a", unit="a.service", description="A", exec=("/bin/true",))
    old = render(spec_of(svc), dataclasses.replace(OPTIONS, systemd_version=241))["a.service"]
    assert "ProtectClock=yes" not in old  # 245
    assert "ProtectProc=invisible" not in old  # 247
    assert "ProtectHostname=yes" not in old  # 242
    assert "LockPersonality=yes" in old  # 235
    new = render(spec_of(svc), dataclasses.replace(OPTIONS, systemd_version=254))["a.service"]
    assert "RestartMode=direct" in new.splitlines()


def test_dropin_has_only_what_the_override_sets() -> None:
    ovr = Override(unit="nginx.service")
    text = render(spec_of(overrides=(ovr,)), OPTIONS)["nginx.service.d/70-unitgen.conf"]
    assert [(s, k) for s, k, _ in parse_unit(text)] == [
        ("Unit", "OnFailure"),
        ("Unit", "OnFailureJobMode"),
    ]
    quiet = dataclasses.replace(ovr, on_failure=False, restart=Restart(delay=2.0))
    text = render(spec_of(overrides=(quiet,)), OPTIONS)["nginx.service.d/70-unitgen.conf"]
    keys = [k for _, k, _ in parse_unit(text)]
    assert "OnFailure" not in keys
    assert keys == ["StartLimitIntervalSec", "StartLimitBurst", "Restart", "RestartSec"]
    hardened = dataclasses.replace(ovr, hardening=Hardening(profile="strict"))
    text = render(spec_of(overrides=(hardened,)), OPTIONS)["nginx.service.d/70-unitgen.conf"]
    assert "DynamicUser" not in text  # the vendor's unit decides its user


def test_policies_carry_absolute_directories_and_alerts() -> None:
    svc = Service(
        name="a",
        unit="a.service",
        description="A",
        exec=("/bin/true",),
        state_directory=("a",),
        logs_directory=("a",),
    )
    text = render_policies(spec_of(svc), OPTIONS)["a.service.json"]
    assert '"/var/lib/a"' in text and '"/var/log/a"' in text
    bad = dataclasses.replace(svc, alerts=("nope",))
    with pytest.raises(RenderError, match="nope"):
        render_policies(spec_of(bad), OPTIONS)


def test_recovery_unit_is_always_rendered() -> None:
    files = render(spec_of(), OPTIONS)
    assert list(files) == [RECOVER_UNIT]


def test_recovery_name_is_reserved() -> None:
    svc = Service(
        name="unitgen-recover@", unit="unitgen-recover@.service", description="x", exec=("/x",)
    )
    with pytest.raises(RenderError, match="reserved") as info:
        render(spec_of(svc), OPTIONS)
    assert info.value.exit_code == 2
    with pytest.raises(RenderError, match="reserved"):
        render(spec_of(overrides=(Override(unit="unitgen-recover@a.service"),)), OPTIONS)


# -- the writer -----------------------------------------------------------------------


def test_write_replaces_and_leaves_no_stage(tmp_path: Path) -> None:
    out = tmp_path / "out"
    write_trees([(out, {"a.service": "one\n", "b.service.d/70-unitgen.conf": "x\n"})])
    write_trees([(out, {"a.service": "two\n"})])
    assert (out / "a.service").read_text() == "two\n"
    assert (out / "b.service.d" / "70-unitgen.conf").read_text() == "x\n"
    assert sorted(p.name for p in out.iterdir()) == ["a.service", "b.service.d"]


def test_failure_while_staging_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    policies = tmp_path / "policies"
    write_trees([(out, {"a.service": "old\n"})])
    flushed: list[Path] = []

    # Every file is staged; flushing them to disk is what finds the disk full.
    def full_disk(stages: list[Path], files: list[Path]) -> None:
        flushed.extend(files)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writetrees_module, "_sync_staged", full_disk)
    with pytest.raises(RenderError, match="No space left") as info:
        write_trees(
            [
                (out, {"a.service": "new\n", "b.service": "new\n"}),
                (policies, {"a.service.json": "{}\n"}),
            ]
        )
    assert info.value.exit_code == 1  # a full disk is a run-time failure, not bad input
    assert (out / "a.service").read_text() == "old\n"
    assert sorted(p.name for p in out.iterdir()) == ["a.service"]
    assert not policies.exists()  # created for the write, removed with it
    assert len(flushed) == 3


def test_bad_out_dir_is_bad_input(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    with pytest.raises(RenderError) as info:
        write_trees([(not_a_dir, {"a.service": "x\n"})])
    assert info.value.exit_code == 2
    assert "\n" not in str(info.value)
    assert not_a_dir.read_text() == ""


@pytest.mark.parametrize("name", ["../x.service", "/etc/x.service", "a/b/c.conf", ""])
def test_writer_refuses_names_outside_the_tree(tmp_path: Path, name: str) -> None:
    with pytest.raises(RenderError, match="refusing"):
        write_trees([(tmp_path, {name: "x"})])
    assert not any(tmp_path.iterdir())


def test_without_syncfs_each_staged_file_is_fsynced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_libc(*args: object, **kwargs: object) -> None:
        raise OSError("no libc here")

    synced: list[int] = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(writetrees_module.ctypes, "CDLL", no_libc)
    monkeypatch.setattr(os, "fsync", counting_fsync)
    out = tmp_path / "out"
    written = write_trees([(out, {"a.service": "a\n", "b.service": "b\n"})])
    assert sorted(p.name for p in written) == ["a.service", "b.service"]
    assert (out / "b.service").read_text() == "b\n"
    # Two staged files, then the directory holding the renames.
    assert len(synced) == 3


def test_capabilities_replace_or_add_the_bounding_set() -> None:
    strict = Service(
        name="a",
        unit="a.service",
        description="A",
        exec=("/bin/true",),
        hardening=Hardening(capabilities=("CAP_DAC_OVERRIDE", "CAP_FOWNER")),
    )
    lines = render(spec_of(strict), OPTIONS)["a.service"].splitlines()
    bounding = [line for line in lines if line.startswith("CapabilityBoundingSet=")]
    # Replaced; the empty line first resets whatever an earlier file set (a drop-in's case).
    assert bounding == [
        "CapabilityBoundingSet=",
        "CapabilityBoundingSet=CAP_DAC_OVERRIDE CAP_FOWNER",
    ]
    assert "AmbientCapabilities=" in lines  # the rest of the profile stays
    # A profile that keeps every capability gets the line added; [] keeps none.
    standard = dataclasses.replace(strict, hardening=Hardening("standard", capabilities=()))
    lines = render(spec_of(standard), OPTIONS)["a.service"].splitlines()
    assert [line for line in lines if line.startswith("CapabilityBoundingSet")] == [
        "CapabilityBoundingSet="
    ]
    plain = dataclasses.replace(strict, hardening=Hardening("standard"))
    assert "CapabilityBoundingSet" not in render(spec_of(plain), OPTIONS)["a.service"]
