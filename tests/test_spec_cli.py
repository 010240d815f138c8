"""`unitgen schema`, and how spec problems reach the operator through the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from unitgen.cli import main, report
from unitgen.errors import SpecError
from unitgen.schema import build_schema
from unitgen.specfile import load_spec


def test_schema_command_prints_the_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert json.loads(out) == build_schema()


def test_schema_json_flag_is_the_same_output(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    plain = capsys.readouterr().out
    assert main(["schema", "--json"]) == 0
    assert capsys.readouterr().out == plain


def test_python_dash_m_unitgen_schema() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "unitgen", "schema"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["$schema"].endswith("2020-12/schema")


def _spec_error(tmp_path: Path) -> SpecError:
    spec = tmp_path / "spec.toml"
    spec.write_text(
        '[service.api]\nexec = ["api"]\nrestart = { delay = "soon" }\ndescription = "a\\nb"\n'
    )
    with pytest.raises(SpecError) as info:
        load_spec(spec)
    return info.value


def test_spec_problems_print_one_line_each(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    exc = _spec_error(tmp_path)
    assert exc.exit_code == 2
    report(exc, as_json=False)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == len(exc.problems) == 3
    assert any(
        "service.api.restart.delay: expected a duration like '5s' or '1min 30s', got 'soon'" in ln
        for ln in lines
    )
    assert all(line.startswith(f"unitgen: {tmp_path / 'spec.toml'}: ") for line in lines)


def test_spec_problems_as_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    exc = _spec_error(tmp_path)
    report(exc, as_json=True)
    payload = json.loads(capsys.readouterr().err)
    assert payload["error"] == "SpecError"
    assert {p["key"] for p in payload["problems"]} == {
        "service.api.exec[0]",
        "service.api.restart.delay",
        "service.api.description",
    }


def test_the_example_passes_unitgen_check(capsys: pytest.CaptureFixture[str]) -> None:
    # The example's header promises this; it runs the real systemd-analyze verify/security.
    example = Path(__file__).resolve().parent.parent / "examples" / "example.toml"
    code = main(["check", str(example)])
    out, err = capsys.readouterr()
    assert code == 0, out + err
    assert "api.service" in out
