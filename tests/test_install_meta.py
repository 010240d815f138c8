"""The README's set-up commands, .ci/run and install.sh agree with each other."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    return re.findall(r"```sh\n(.*?)\n```", text, flags=re.S)


def test_readme_opens_with_the_two_setup_commands() -> None:
    text = (REPO / "README.md").read_text()
    first_block = text.index("```")
    # Only the title and one sentence come before the commands.
    assert len(text[:first_block].strip().splitlines()) <= 3
    commands = _readme_commands()
    assert commands[:2] == [
        "./install.sh --demo",
        "./install.sh --dev && /opt/unitgen/bin/python -m pytest",
    ]


def test_ci_runs_exactly_the_readme_test_command() -> None:
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert ci[0] == "#!/usr/bin/env bash"
    assert "set -euo pipefail" in ci
    assert "export CI=true" in ci
    assert ci[-1] == _readme_commands()[1]
    assert os.access(REPO / ".ci" / "run", os.X_OK)


def test_install_sh_is_strict_bash_and_parses() -> None:
    script = REPO / "install.sh"
    lines = script.read_text().splitlines()
    assert lines[0] == "#!/usr/bin/env bash"
    assert "set -euo pipefail" in lines
    assert os.access(script, os.X_OK)
    res = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr


def test_install_sh_help_lists_every_mode() -> None:
    res = subprocess.run(
        ["bash", str(REPO / "install.sh"), "--help"], capture_output=True, text=True, check=True
    )
    for flag in ("--user", "--prefix", "--dest", "--uninstall", "--dev", "--demo", "--spec"):
        assert flag in res.stdout
