"""Golden files: tests/golden/spec.toml rendered for systemd 252, 254 and a user manager.

Regenerate after an intended change, then review the diff like code:
    UNITGEN_UPDATE_GOLDEN=1 /opt/unitgen/bin/python -m pytest tests/test_render_golden.py
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from unitgen.paths import Scope
from unitgen.render import BaseDirs, RenderOptions, render, render_policies
from unitgen.specfile import load_spec

GOLDEN = Path(__file__).resolve().parent / "golden"
SPEC = GOLDEN / "spec.toml"
UPDATE = os.environ.get("UNITGEN_UPDATE_GOLDEN") == "1"

USER_DIRS = BaseDirs(
    state="/home/u/.local/state",
    logs="/home/u/.local/state/log",
    cache="/home/u/.cache",
    runtime="/run/user/1000",
)

CASES = {
    "v252": RenderOptions(systemd_version=252, unitgen_bin="/opt/unitgen/bin/unitgen"),
    "v254": RenderOptions(systemd_version=254, unitgen_bin="/opt/unitgen/bin/unitgen"),
    "user252": RenderOptions(
        systemd_version=252,
        scope=Scope.USER,
        unitgen_bin="/opt/unitgen/bin/unitgen",
        policy_dir=Path("/home/u/.config/unitgen/policy.d"),
        base_dirs=USER_DIRS,
    ),
}


def _rendered(case: str) -> dict[str, str]:
    spec = load_spec(SPEC)
    # The spec path is printed in a comment; keep it stable wherever the repo lives.
    spec = type(spec)(
        path="tests/golden/spec.toml",
        defaults=spec.defaults,
        services=spec.services,
        overrides=spec.overrides,
        alerts=spec.alerts,
    )
    options = CASES[case]
    files = dict(render(spec, options))
    files.update({f"policy/{k}": v for k, v in render_policies(spec, options).items()})
    return files


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_golden(case: str) -> None:
    files = _rendered(case)
    root = GOLDEN / case
    if UPDATE:
        for name, text in files.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_text(text, encoding="utf-8")
    on_disk = {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
    assert on_disk == set(files), "golden file set differs; UNITGEN_UPDATE_GOLDEN=1 regenerates"
    for name, text in files.items():
        assert (root / name).read_text(encoding="utf-8") == text, f"{case}/{name} differs"


def test_versions_differ_only_where_they_should() -> None:
    old, new = _rendered("v252"), _rendered("v254")
    assert old.keys() == new.keys()
    for name in old:
        added = set(new[name].splitlines()) - set(old[name].splitlines())
        removed = set(old[name].splitlines()) - set(new[name].splitlines())
        assert not removed, name
        assert added <= {"RestartMode=direct"}, name
    # Every unit wired to OnFailure= gets RestartMode=direct on 254 (docs/recovery.md).
    for name, text in new.items():
        lines = text.splitlines()
        if any(line.startswith("OnFailure=") for line in lines):
            assert "RestartMode=direct" in lines, name


@pytest.mark.parametrize("case", sorted(CASES))
def test_recovery_unit_never_recovers_itself(case: str) -> None:
    text = _rendered(case)["unitgen-recover@.service"]
    assert not [line for line in text.splitlines() if line.startswith("OnFailure")]
    exec_line = next(line for line in text.splitlines() if line.startswith("ExecStart="))
    assert exec_line.endswith(" %i")
    assert ('"--user"' in exec_line) == (case == "user252")
