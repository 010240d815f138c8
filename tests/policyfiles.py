"""Private paths and policy files for tests that run the recovery engine."""

from __future__ import annotations

from pathlib import Path

from unitgen.paths import Paths, Scope
from unitgen.policy import Policy, to_json


def private_paths(tmp_path: Path) -> Paths:
    """User-scope paths that all live under ``tmp_path``."""
    return Paths(
        scope=Scope.USER,
        policy_dir=tmp_path / "policy",
        state_dir=tmp_path / "state",
        run_dir=tmp_path / "run",
        unit_dir=tmp_path / "units",
    )


def write_policy(paths: Paths, policy: Policy) -> None:
    paths.policy_dir.mkdir(parents=True, exist_ok=True)
    (paths.policy_dir / f"{policy.unit}.json").write_text(to_json(policy))
