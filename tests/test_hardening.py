"""Hardening profiles: the data is sound, and systemd's own scoring agrees with the goal."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from unitgen.hardening import (
    EXPOSURE_CEILING,
    PROFILES,
    RECOVER_HARDENING,
    directives_for,
    known_directive_names,
)
from unitgen.model import Hardening, Service, Spec
from unitgen.paths import Scope
from unitgen.render import RenderOptions, render
from unitgen.verify import exposure, verify
from unitgen.writetrees import write_trees

WEB = Service(
    name="web",
    unit="web.service",
    description="plain network daemon",
    exec=("/usr/bin/python3", "-m", "http.server", "8080"),
)


def test_profiles_are_nested_and_documented() -> None:
    names = {p: {d.name for d in ds} for p, ds in PROFILES.items()}
    assert names["off"] == set()
    assert names["minimal"] < names["standard"] < names["strict"]
    for profile, directives in PROFILES.items():
        for d in directives:
            assert d.note, f"{profile}: {d.name} has no note"
            assert 1 <= d.min_version <= 260, d


@pytest.mark.parametrize(
    "name",
    [
        "MemoryDenyWriteExecute",
        "ProtectHome",
        "SystemCallFilter",
        "PrivateUsers",
        "RestrictAddressFamilies",
        "CapabilityBoundingSet",
        "ProtectSystem",
        "ProcSubset",
    ],
)
def test_known_breakers_say_how_they_break(name: str) -> None:
    assert any(d.breaks for d in PROFILES["strict"] if d.name == name), name


def test_syscall_filter_comes_with_eperm() -> None:
    for profile in ("strict", "standard"):
        pairs = directives_for(profile, systemd_version=252)
        if any(k == "SystemCallFilter" for k, _ in pairs):
            assert ("SystemCallErrorNumber", "EPERM") in pairs


def test_disable_removes_every_line_of_a_directive() -> None:
    pairs = directives_for("strict", disable=["SystemCallFilter"], systemd_version=252)
    assert not [k for k, _ in pairs if k == "SystemCallFilter"]
    assert len(pairs) == len(directives_for("strict", systemd_version=252)) - 2
    assert "DynamicUser" in known_directive_names()


def test_user_scope_leaves_out_what_needs_pid1() -> None:
    system = {k for k, _ in directives_for("strict", systemd_version=252)}
    user = {k for k, _ in directives_for("strict", scope=Scope.USER, systemd_version=252)}
    assert system - user == {"ProtectHome", "ProtectKernelTunables", "ProtectKernelLogs"}
    assert not [d for d in RECOVER_HARDENING if d.name in {"PrivateTmp", "CapabilityBoundingSet"}]


def _score(tmp_path: Path, svc: Service, scope: Scope = Scope.SYSTEM) -> float:
    options = RenderOptions(systemd_version=252, scope=scope)
    files = render(Spec(path="t", services={svc.name: svc}), options)
    write_trees([(tmp_path, files)])
    report = verify(tmp_path, list(files), scope)
    assert not report.errors, report.errors
    return exposure(tmp_path, svc.unit, scope)


@pytest.mark.parametrize(
    "variant",
    [WEB, dataclasses.replace(WEB, user="www-data"), dataclasses.replace(WEB, dynamic_user=True)],
    ids=["no-user", "user", "dynamic-user"],
)
def test_strict_meets_the_goal_with_real_systemd_analyze(tmp_path: Path, variant: Service) -> None:
    assert _score(tmp_path, variant) <= 1.5


@pytest.mark.parametrize("profile", ["strict", "standard", "minimal", "off"])
@pytest.mark.parametrize("scope", [Scope.SYSTEM, Scope.USER], ids=["system", "user"])
def test_profiles_score_in_order_and_under_their_ceiling(
    tmp_path: Path, profile: str, scope: Scope
) -> None:
    svc = dataclasses.replace(WEB, hardening=Hardening(profile=profile))  # type: ignore[arg-type]
    score = _score(tmp_path, svc, scope)
    assert score <= EXPOSURE_CEILING[scope][profile]  # type: ignore[index]
    if profile != "strict":
        stricter = {"standard": "strict", "minimal": "standard", "off": "minimal"}[profile]
        other = dataclasses.replace(WEB, hardening=Hardening(profile=stricter))  # type: ignore[arg-type]
        (tmp_path / "o").mkdir()
        assert _score(tmp_path / "o", other, scope) < score


def test_disabling_costs_exposure(tmp_path: Path) -> None:
    loose = dataclasses.replace(
        WEB, hardening=Hardening(disable=("PrivateDevices", "ProtectSystem", "SystemCallFilter"))
    )
    (tmp_path / "a").mkdir()
    assert _score(tmp_path, WEB) < _score(tmp_path / "a", loose)
