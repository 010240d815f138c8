"""The spec file itself: each way a path can be wrong gives one clear problem, never a hang."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from unitgen import specfile
from unitgen.errors import SpecError, SpecProblem
from unitgen.specfile import MAX_SPEC_BYTES, load_spec

GOOD = '[service.api]\nexec = ["/usr/bin/api"]\n'


def the_problem(path: str | Path) -> SpecProblem:
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert len(info.value.problems) == 1, info.value.problems
    problem = info.value.problems[0]
    assert problem.file == str(path)
    assert len(str(problem).splitlines()) == 1
    return problem


def test_loads_a_path_or_a_string(tmp_path: Path) -> None:
    spec = tmp_path / "spec.toml"
    spec.write_text(GOOD)
    assert load_spec(spec).services["api"].exec == ("/usr/bin/api",)
    assert load_spec(str(spec)).path == str(spec)


def test_missing(tmp_path: Path) -> None:
    assert "does not exist" in the_problem(tmp_path / "nope.toml").message


def test_parent_not_a_directory(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    assert "does not exist" in the_problem(tmp_path / "file" / "spec.toml").message


def test_directory(tmp_path: Path) -> None:
    assert "is a directory" in the_problem(tmp_path).message


def test_fifo_does_not_hang(tmp_path: Path) -> None:
    fifo = tmp_path / "spec.fifo"
    os.mkfifo(fifo)
    assert "not a regular file" in the_problem(fifo).message


def test_device_is_not_read_forever() -> None:
    assert "not a regular file" in the_problem("/dev/zero").message


def test_unreadable_by_permission(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The tests run as root, which chmod 000 does not stop; simulate the kernel's answer.
    spec = tmp_path / "spec.toml"
    spec.write_text(GOOD)

    def denied(path: str, flags: int, mode: int = 0o777) -> int:
        raise PermissionError(errno.EACCES, "Permission denied", path)

    monkeypatch.setattr(specfile.os, "open", denied)
    assert "permission denied" in the_problem(spec).message


def test_read_error_from_a_real_file() -> None:
    # /proc/self/mem opens as a regular file and fails with EIO on read at offset 0.
    problem = the_problem("/proc/self/mem")
    assert "cannot be read" in problem.message


def test_not_utf8(tmp_path: Path) -> None:
    spec = tmp_path / "spec.toml"
    spec.write_bytes(GOOD.encode() + b"# caf\xe9\n")
    problem = the_problem(spec)
    assert "not UTF-8" in problem.message
    assert f"offset {len(GOOD) + 5}" in problem.message


def test_utf8_bom_is_accepted(tmp_path: Path) -> None:
    spec = tmp_path / "spec.toml"
    spec.write_bytes(b"\xef\xbb\xbf" + GOOD.encode())
    assert "api" in load_spec(spec).services


@pytest.mark.parametrize("content", [b"", b"\n\n  \t\n"])
def test_empty(tmp_path: Path, content: bytes) -> None:
    spec = tmp_path / "spec.toml"
    spec.write_bytes(content)
    assert "is empty" in the_problem(spec).message


def test_huge_is_refused_without_reading(tmp_path: Path) -> None:
    spec = tmp_path / "spec.toml"
    with spec.open("wb") as fh:
        fh.truncate(MAX_SPEC_BYTES + 1)  # sparse: costs no disk
    problem = the_problem(spec)
    assert f"at most {MAX_SPEC_BYTES} bytes" in problem.message


def test_dangling_symlink(tmp_path: Path) -> None:
    link = tmp_path / "spec.toml"
    link.symlink_to(tmp_path / "gone.toml")
    problem = the_problem(link)
    assert "symlink" in problem.message
    assert "gone.toml" in problem.message


def test_symlink_loop(tmp_path: Path) -> None:
    a, b = tmp_path / "a.toml", tmp_path / "b.toml"
    a.symlink_to(b)
    b.symlink_to(a)
    assert "symlink loop" in the_problem(a).message


def test_symlink_to_a_directory(tmp_path: Path) -> None:
    link = tmp_path / "spec.toml"
    link.symlink_to(tmp_path)
    assert "is a directory" in the_problem(link).message


def test_symlink_to_a_good_file_is_followed(tmp_path: Path) -> None:
    # Deployments link /etc/unitgen/spec.toml into a config checkout; that must keep working.
    real = tmp_path / "real.toml"
    real.write_text(GOOD)
    link = tmp_path / "spec.toml"
    link.symlink_to(real)
    spec = load_spec(link)
    assert spec.path == str(link)


def test_nul_in_path() -> None:
    with pytest.raises(SpecError) as info:
        load_spec("spec\x00.toml")
    (problem,) = info.value.problems
    assert problem.file == "spec\\x00.toml"
    assert "NUL" in problem.message


def test_newline_in_file_name_keeps_messages_on_one_line(tmp_path: Path) -> None:
    spec = tmp_path / "bad\nname.toml"
    spec.write_text('[service.api]\nexec = ["api"]\n')
    with pytest.raises(SpecError) as info:
        load_spec(spec)
    (problem,) = info.value.problems
    assert problem.key == "service.api.exec[0]"
    assert len(str(info.value).splitlines()) == 1
    assert "bad\\x0aname.toml" in problem.file


def test_name_too_long(tmp_path: Path) -> None:
    assert "too long" in the_problem(tmp_path / ("x" * 300)).message


def test_syntax_error_from_a_file_names_the_file(tmp_path: Path) -> None:
    spec = tmp_path / "spec.toml"
    spec.write_text('[service.api]\nexec = ["/x"]\nexec = ["/y"]\n')
    problem = the_problem(spec)
    assert "line 3" in problem.message


def test_parse_spec_bounds_text_too() -> None:
    from unitgen.specfile import parse_spec

    with pytest.raises(SpecError) as info:
        parse_spec("#" * (MAX_SPEC_BYTES + 1), "big.toml")
    (problem,) = info.value.problems
    assert "larger than" in problem.message
