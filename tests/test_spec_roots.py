"""System directories as cleanup roots: refused by check/render at their key, and by the ladder.

cleanup.temp and disk.cleanup name directories whose old files the ladder
deletes as root. ``/``, ``/usr``, ``/var/tmp``... are refused, exactly those
(unitgen/sysroots.py): their subdirectories stay allowed.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from spec_toml import dumps

from handlers.cleanup import free_space, remove_old_files
from unitgen.errors import SpecError
from unitgen.specfile import parse_spec
from unitgen.sysroots import SYSTEM_ROOTS, is_system_root

SRC = "spec.toml"


def _spec(cleanup: object = None, disk: object = None, section: str = "service") -> str:
    unit: dict[str, object] = {}
    if section == "service":
        unit["exec"] = ["/usr/bin/api"]
    if cleanup is not None:
        unit["cleanup"] = cleanup
    if disk is not None:
        unit["disk"] = disk
    name = "api" if section == "service" else '"nginx.service"'
    return dumps({section: {name.strip('"'): unit}})


def _problems(text: str) -> list[tuple[str, str]]:
    with pytest.raises(SpecError) as info:
        parse_spec(text, SRC)
    return [(p.key, p.message) for p in info.value.problems]


@pytest.mark.parametrize(
    "root", ["/", "/usr", "/etc", "/var", "/var/tmp", "/home", "/lib", "/boot", "/run"]
)
def test_cleanup_temp_refuses_a_system_directory(root: str) -> None:
    [(key, message)] = _problems(_spec(cleanup={"temp": ["/var/tmp/api", root]}))
    assert key == "service.api.cleanup.temp[1]"
    assert "system directory" in message and "\n" not in message


@pytest.mark.parametrize("spelled", ["/", "//", "/usr/", "/usr/./", "//etc", "/var//tmp/"])
def test_disk_cleanup_refuses_every_spelling_of_a_system_directory(spelled: str) -> None:
    [(key, message)] = _problems(_spec(disk={"cleanup": [spelled]}))
    assert key == "service.api.disk.cleanup[0]"
    assert "system directory" in message


def test_overrides_are_checked_too() -> None:
    [(key, _)] = _problems(_spec(cleanup={"temp": ["/var/log"]}, section="override"))
    assert key == 'override."nginx.service".cleanup.temp[0]'


@pytest.mark.parametrize(
    "path", ["/var/tmp/api", "/var/lib/api/cache", "/srv/app", "/usr/local/app", "/tmpx", "/home/u"]
)
def test_a_services_own_directory_stays_allowed(path: str) -> None:
    spec = parse_spec(_spec(cleanup={"temp": [path]}, disk={"cleanup": [path]}), SRC)
    assert spec.services["api"].cleanup.temp == (path,)


def test_check_exits_2_with_one_line_naming_the_key(tmp_path: Path) -> None:
    spec = tmp_path / "spec.toml"
    spec.write_text(_spec(cleanup={"temp": ["/"]}, disk={"cleanup": ["/usr"]}))
    for command in ("check", "render"):
        extra = ["--out", str(tmp_path / "out")] if command == "render" else []
        proc = subprocess.run(
            [sys.executable, "-m", "unitgen", command, str(spec), "--user", *extra],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.splitlines()
        assert len(lines) == 2, lines
        assert "service.api.cleanup.temp[0]" in lines[0]
        assert "service.api.disk.cleanup[0]" in lines[1]
        assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("root", sorted(SYSTEM_ROOTS))
def test_the_ladder_refuses_the_same_list(root: str) -> None:
    # A policy written by hand (or by an older unitgen) reaches the ladder unchecked.
    # Dry runs: were the refusal missing, nothing would be deleted from the host anyway.
    old = remove_old_files(root, older_than=0, dry_run=True)
    assert old.refused == [(root, "refusing to clean a system directory")]
    assert not old.removed
    freed = free_space([root], enough=lambda: False, dry_run=True)
    assert freed.refused == [(root, "refusing to clean a system directory")]
    assert not freed.removed


def test_subdirectories_are_not_system_roots() -> None:
    assert is_system_root("/usr/../var/")
    assert not is_system_root("/var/tmp/app")
    assert not is_system_root("/usr/lib/app")
