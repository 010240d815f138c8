"""Man pages and shell completion, generated from the parser and the key table."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from unitgen.cli import COMMANDS
from unitgen.speckeys import SPEC

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("docs")
    subprocess.run(
        [sys.executable, str(REPO / "packaging" / "gen_docs.py"), str(out)],
        check=True,
        capture_output=True,
        env={"SOURCE_DATE_EPOCH": "0", "PATH": "/usr/bin:/bin"},
    )
    return out


def rendered(page: Path) -> str:
    """The page through groff with every warning on: a roff mistake fails the test."""
    res = subprocess.run(
        ["groff", "-man", "-Tutf8", "-ww", "-z", str(page)], capture_output=True, text=True
    )
    assert res.returncode == 0 and not res.stderr, res.stderr
    return subprocess.run(
        ["man", "-l", str(page)],
        capture_output=True,
        text=True,
        check=True,
        env={"MANWIDTH": "200", "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
    ).stdout


@pytest.mark.skipif(shutil.which("groff") is None, reason="needs groff (man-db)")
def test_unitgen_1_documents_every_command_and_its_options(generated: Path) -> None:
    text = rendered(generated / "man" / "unitgen.1")
    assert '"1970\\-01\\-01"' in (generated / "man" / "unitgen.1").read_text()  # SOURCE_DATE_EPOCH
    for name in COMMANDS:
        assert f"unitgen {name}" in text, name
    for option in ("--check", "--generations", "--settle", "--max-exposure", "--to"):
        assert option in text, option
    assert "EXIT STATUS" in text and "FILES" in text and "unitgen.toml(5)" in text


@pytest.mark.skipif(shutil.which("groff") is None, reason="needs groff (man-db)")
def test_unitgen_toml_5_has_every_top_level_key(generated: Path) -> None:
    text = rendered(generated / "man" / "unitgen.toml.5")
    for key in SPEC.fields:
        assert f"[{key}" in text, key
    # a nested key with its directive, as docs/spec.md shows it
    assert "systemd RestartSec=" in text


def test_bash_completion_completes_commands_and_options(generated: Path) -> None:
    script = generated / "completion" / "unitgen.bash"

    def complete(*words: str) -> list[str]:
        line = " ".join(words)
        res = subprocess.run(
            [
                "bash",
                "-c",
                f"source {script}; COMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; "
                'COMP_LINE="' + line + '"; COMP_POINT=${#COMP_LINE}; _shtab_unitgen; '
                'printf "%s\\n" "${COMPREPLY[@]}"',
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        return res.stdout.split()

    assert complete("unitgen", "ap") == ["apply"]
    assert "--settle" in complete("unitgen", "apply", "--se")
    assert "rollback" in complete("unitgen", "")


def test_zsh_completion_is_generated(generated: Path) -> None:
    text = (generated / "completion" / "_unitgen").read_text()
    assert text.startswith("#compdef unitgen")
    assert "apply" in text and "--generations" in text
