"""The render, check and diff commands end to end, with the real systemd-analyze."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from sandboxlib import unavailable

from unitgen.cli import main
from unitgen.paths import Scope
from unitgen.verify import verify

GOLDEN_SPEC = Path(__file__).resolve().parent / "golden" / "spec.toml"

SPEC = """
[service.web]
description = "web"
exec = ["/usr/bin/python3", "-m", "http.server", "8080"]
state_directory = "web"

[override."nginx.service"]
restart = { policy = "on-failure", delay = "2s" }
hardening = "standard"
"""


@pytest.fixture
def spec(tmp_path: Path) -> Path:
    path = tmp_path / "spec.toml"
    path.write_text(SPEC)
    return path


def _render_args(spec: Path, out: Path, policies: Path) -> list[str]:
    return ["render", str(spec), "--out", str(out), "--policy-dir", str(policies)]


def test_render_lists_what_it_wrote(
    spec: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, pol = tmp_path / "out", tmp_path / "pol"
    assert main([*_render_args(spec, out, pol), "--systemd-version", "254"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        f"wrote {out}/web.service",
        f"wrote {out}/nginx.service.d/70-unitgen.conf",
        f"wrote {out}/unitgen-recover@.service",
        f"wrote {pol}/web.service.json",
        f"wrote {pol}/nginx.service.json",
    ]
    assert "RestartMode=direct" in (out / "web.service").read_text()
    recover = (out / "unitgen-recover@.service").read_text()
    assert f'"UNITGEN_POLICY_DIR={pol}"' in recover
    assert f'ExecStart="{Path(sys.executable).parent}/unitgen" "recover" %i' in recover


def test_render_json(spec: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, pol = tmp_path / "out", tmp_path / "pol"
    assert main([*_render_args(spec, out, pol), "--json", "--systemd-version", "252"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["systemd_version"] == 252
    assert payload["units"][0] == str(out / "web.service")
    assert all(Path(p).is_file() for p in payload["units"] + payload["policies"])


def test_render_bad_out_dir_is_one_line_exit_2(
    spec: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("keep\n")
    assert main(_render_args(spec, blocker / "out", tmp_path / "pol")) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert blocker.read_text() == "keep\n"
    assert not (tmp_path / "pol").exists() or not any((tmp_path / "pol").iterdir())


def _in_private_mounts(script: str) -> subprocess.CompletedProcess[str]:
    """``sh -c script`` in a private mount namespace (for its tmpfs mounts)."""
    if shutil.which("unshare") is None:
        unavailable("unshare not installed")
    res = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if "mount:" in res.stderr and "rc=" not in res.stdout:
        unavailable(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    return res


def test_render_on_a_full_disk_writes_nothing(spec: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "web.service").write_text("old\n")
    # A 12 KiB tmpfs in a private mount namespace: the policies fit nowhere.
    script = (
        f"mount -t tmpfs -o size=12k tmpfs {out} && echo old > {out}/web.service && "
        f"head -c 8192 /dev/zero > {out}/filler; "
        f"{sys.executable} -m unitgen render {spec} --out {out} --policy-dir {out}/pol "
        f"--systemd-version 252; echo rc=$?; ls -A {out}; cat {out}/web.service"
    )
    res = _in_private_mounts(script)
    assert "rc=1" in res.stdout, res.stdout + res.stderr
    err = [line for line in res.stderr.splitlines() if line.startswith("unitgen:")]
    assert len(err) == 1 and "No space left" in err[0], res.stderr
    listing = res.stdout.split("rc=1", 1)[1].split()
    # The policy dir may exist (created before staging), but nothing was renamed in.
    assert "web.service" in listing and "unitgen-recover@.service" not in listing
    assert res.stdout.rstrip().endswith("old")


def test_render_into_a_read_only_dir_is_bad_input(spec: Path, tmp_path: Path) -> None:
    out = tmp_path / "ro"
    out.mkdir()
    script = (
        f"mount -t tmpfs -o size=64k tmpfs {out} && echo old > {out}/web.service && "
        f"mount -o remount,ro {out} && "
        f"{sys.executable} -m unitgen render {spec} --out {out} --policy-dir {tmp_path}/pol "
        f"--systemd-version 252; echo rc=$?; cat {out}/web.service; ls -A {tmp_path}/pol"
    )
    res = _in_private_mounts(script)
    assert "rc=2" in res.stdout, res.stdout + res.stderr
    err = [line for line in res.stderr.splitlines() if line.startswith("unitgen:")]
    assert len(err) == 1 and "Read-only file system" in err[0], res.stderr
    after = res.stdout.split("rc=2", 1)[1].split()
    assert after == ["old"]  # web.service untouched, nothing staged in the policy dir


def test_check_passes_a_good_spec(spec: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(spec), "--systemd-version", "252", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    units = {u["file"]: u for u in payload["units"]}
    assert units["web.service"]["exposure"] <= 1.5
    assert units["web.service"]["limit"] == 1.5
    assert units["nginx.service.d/70-unitgen.conf"]["limit"] == 5.0
    assert units["unitgen-recover@.service"]["limit"] is None
    assert all(u["ok"] and not u["verify"] for u in payload["units"])
    assert units["web.service"]["worst_case"]  # handlers.budget's figure


def test_check_fails_above_max_exposure(spec: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(spec), "--systemd-version", "252", "--max-exposure", "0.5"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "web.service" in out
    assert main(["check", str(spec), "--max-exposure", "11"]) == 2


def test_check_golden_spec_verifies_clean(capsys: pytest.CaptureFixture[str]) -> None:
    # Every construct of the golden spec (quoting, drop-ins, templates) passes verify.
    rc = main(["check", str(GOLDEN_SPEC), "--systemd-version", "252", "--json"])
    payload = json.loads(capsys.readouterr().out)
    assert not [u for u in payload["units"] if u["verify"]], payload
    assert not payload["verify_errors"]
    assert rc == 0, payload


def test_bad_spec_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[service.x]\nexec = ["relative"]\n')
    assert main(["check", str(bad)]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_verify_treats_warnings_as_errors(tmp_path: Path) -> None:
    (tmp_path / "a.service").write_text(
        "[Service]\nExecStart=/bin/true\nNoSuchKey=1\nRestart=sometimes\n"
    )
    (tmp_path / "b.service").write_text("[Service]\nExecStart=/bin/true\n")
    report = verify(tmp_path, ["a.service", "b.service"], Scope.SYSTEM)
    assert report.returncode == 0  # what systemd-analyze itself says
    joined = "\n".join(report.errors["a.service"])
    assert "NoSuchKey" in joined and "restart specifier" in joined
    assert "b.service" not in report.errors


def test_diff_exit_codes(spec: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, pol = tmp_path / "out", tmp_path / "pol"
    out.mkdir()
    base = ["diff", str(spec), "--against", str(out), "--policy-dir", str(pol)]
    assert main([*base, "--systemd-version", "252"]) == 1
    first = capsys.readouterr().out
    assert f"+++ {out}/web.service" in first and "--- /dev/null" in first
    assert main([*_render_args(spec, out, pol), "--systemd-version", "252"]) == 0
    capsys.readouterr()
    assert main([*base, "--systemd-version", "252", "--policies"]) == 0
    assert capsys.readouterr().out == ""
    assert main([*base, "--systemd-version", "254", "--json"]) == 1
    payload = json.loads(capsys.readouterr().out)
    assert {c["status"] for c in payload["changes"]} == {"changed"}
    assert "+RestartMode=direct" in payload["diff"]
    assert main(["diff", str(spec), "--against", str(tmp_path / "missing")]) == 2


def test_check_says_when_this_machine_lacks_pid1_nodes(
    spec: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import unitgen.hardening

    monkeypatch.setattr(unitgen.hardening, "INACCESSIBLE_DIR", str(tmp_path / "missing"))
    main(["check", str(spec), "--systemd-version", "252", "--json"])
    notes = json.loads(capsys.readouterr().out)["environment_notes"]
    assert len(notes) == 1 and "ProtectHome" in notes[0] and "226/NAMESPACE" in notes[0]
    main(["check", str(spec), "--systemd-version", "252", "--json", "--user"])
    assert json.loads(capsys.readouterr().out)["environment_notes"] == []
    monkeypatch.setattr(unitgen.hardening, "INACCESSIBLE_DIR", str(tmp_path))
    main(["check", str(spec), "--systemd-version", "252", "--json"])
    assert json.loads(capsys.readouterr().out)["environment_notes"] == []
