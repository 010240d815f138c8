"""systemd version detection and what the version changes in the output."""

from __future__ import annotations

from pathlib import Path

import pytest

from unitgen import systemd_version
from unitgen.cli import main
from unitgen.errors import SystemdError, UsageError

GOLDEN_SPEC = Path(__file__).resolve().parent / "golden" / "spec.toml"


def test_parse_version_output() -> None:
    text = "systemd 252 (252.39-1~deb12u2)\n+PAM +AUDIT -GNUTLS\n"
    assert systemd_version.parse_version_output(text) == 252
    assert systemd_version.parse_version_output("systemd 256 (256.7-1)") == 256
    for bad in ("", "not systemd", "systemd x"):
        with pytest.raises(SystemdError):
            systemd_version.parse_version_output(bad)


def test_detect_matches_the_installed_systemctl() -> None:
    import subprocess

    first = subprocess.run(
        ["systemctl", "--version"], capture_output=True, text=True, check=True
    ).stdout.split()[1]
    assert systemd_version.detect() == int(first)
    assert systemd_version.resolve(None) == int(first)


def test_resolve_refuses_too_old() -> None:
    assert systemd_version.resolve(254) == 254
    with pytest.raises(UsageError, match="230"):
        systemd_version.resolve(229)


def test_units_for_a_newer_systemd_fail_check_here(capsys: pytest.CaptureFixture[str]) -> None:
    # RestartMode= is 254+: this 252 host's verify must flag it, and check must fail.
    if systemd_version.detect() >= systemd_version.RESTART_MODE_SINCE:
        pytest.skip("the installed systemd knows RestartMode=")
    assert main(["check", str(GOLDEN_SPEC), "--systemd-version", "254"]) == 1
    out = capsys.readouterr().out
    assert "Unknown key 'RestartMode'" in out
    assert main(["check", str(GOLDEN_SPEC), "--systemd-version", "252"]) == 0
