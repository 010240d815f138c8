"""``unitgen harden`` on real Debian daemons in the booted container.

The daemons are the host's (install.sh installs nginx-light and redis-server).
Each search runs for real: every trial starts the daemon under a candidate
drop-in. The results are then installed in a *fresh* container, so the first
start happens under the drop-in, and the daemon must serve.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from sandboxlib import unavailable

from unitgen import systemd_version
from unitgen.cli import main
from unitgen.harden import (
    HARDEN_DROPIN,
    HardenOptions,
    HardenResult,
    fresh_trial,
    harden,
    parse_probe,
    render_dropin,
)
from unitgen.paths import Scope
from unitgen.render import DROPIN_NAME, RenderOptions, render
from unitgen.sandbox import probe
from unitgen.specfile import parse_spec

pytestmark = [pytest.mark.sandbox, pytest.mark.system]

# Measured in docs/hardening.md: redis-server 1.2 -> 1.1, nginx 9.6 -> 3.9.
REDIS_CEILING = 2.0
# nginx starts as root and drops to www-data itself: it keeps CAP_SETUID/SETGID and
# the setuid system calls, and runs as root (docs/hardening.md explains the floor).
NGINX_CEILING = 3.9
# Trials, not seconds: time is measured in bench/bench_harden.py. Bisection keeps
# the count near (culprits x log2(directives)); trying every subset would be 2**n.
MAX_TRIALS = 40


def _need(unit: str) -> None:
    reason = probe(Scope.SYSTEM)
    if reason:
        unavailable(reason)
    if not (Path("/lib/systemd/system") / unit).exists():
        unavailable(f"{unit} is not installed (install.sh installs it)")


def _serves(result: HardenResult, probe_arg: str) -> None:
    """A fresh container, the drop-in (comments and all) installed before the first
    start: the daemon starts, stays up, serves, reloads and serves again."""
    verdict, props = fresh_trial(
        result.unit,
        parse_probe(probe_arg),
        HardenOptions(),
        Path("/nonexistent"),
        result.dropin,
        probe_window=15.0,
    )
    assert HARDEN_DROPIN in props["DropInPaths"]
    assert verdict.ok, verdict.reason


def _verifies(result: HardenResult, tmp_path: Path) -> None:
    """systemd-analyze verify takes the vendor unit with the drop-in, without a word."""
    from unitgen.verify import verify

    name = f"{result.unit}.d/{HARDEN_DROPIN}"
    (tmp_path / name).parent.mkdir(parents=True)
    (tmp_path / name).write_text(result.dropin)
    report = verify(tmp_path, [name], Scope.SYSTEM)
    assert not report.errors, report.errors


def _snippet_renders_the_dropin(result: HardenResult) -> None:
    spec = parse_spec(result.snippet, "snippet.toml")
    version = systemd_version.resolve(None)
    rendered = render(spec, RenderOptions(systemd_version=version))
    text = rendered[f"{result.unit}.d/{DROPIN_NAME}"]
    ours = render_dropin(result.unit, spec.overrides[result.unit].hardening, version)  # type: ignore[arg-type]

    def service_lines(t: str) -> list[str]:
        body = t.split("[Service]", 1)[1]
        return [line for line in body.splitlines() if line and not line.startswith("#")]

    assert service_lines(text) == service_lines(ours) == service_lines(result.dropin)


def test_harden_redis(tmp_path: Path) -> None:
    _need("redis-server.service")
    result = harden(
        "redis-server.service",
        parse_probe("cmd /usr/bin/redis-cli -h 127.0.0.1 ping"),
        systemd_version=systemd_version.resolve(None),
    )
    assert len(result.search.trials) <= MAX_TRIALS
    assert result.after <= REDIS_CEILING
    assert result.after < result.before
    _snippet_renders_the_dropin(result)
    _verifies(result, tmp_path)
    _serves(result, "cmd /usr/bin/redis-cli -h 127.0.0.1 ping")


@pytest.mark.timeout(300)
def test_harden_nginx(tmp_path: Path) -> None:
    _need("nginx.service")
    result = harden(
        "nginx.service",
        parse_probe("http://127.0.0.1/"),
        systemd_version=systemd_version.resolve(None),
    )
    assert result.has_reload  # nginx's ExecReload= ran in every passing trial
    assert len(result.search.trials) <= MAX_TRIALS
    assert result.before > 9.0
    assert result.after <= NGINX_CEILING, result.dropin
    # What nginx really needs: binding :80, dropping to www-data, its root-owned logs.
    assert "PrivateUsers" in result.search.dropped
    assert result.hardening.capabilities is not None
    assert {"CAP_NET_BIND_SERVICE", "CAP_SETUID", "CAP_SETGID"} <= set(
        result.hardening.capabilities
    )
    # Every directive left off says why, in the drop-in itself.
    for item in result.search.dropped:
        assert item in result.dropin.split("[Service]", 1)[0]
    _snippet_renders_the_dropin(result)
    _verifies(result, tmp_path)
    _serves(result, "http://127.0.0.1/")


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["harden", "ugh-nope.service"], "ugh-nope.service: no such unit"),
        (["harden", "bad name"], "unit 'bad name': expected"),
        (["harden", "nginx.service", "--probe", "ftp://x"], "--probe 'ftp://x': expected"),
        (
            ["harden", "nginx.service", "--probe", "tcp:127.0.0.1:1"],
            "--probe never passed against nginx.service",
        ),
        (["harden", "ugh-fails.service"], "ugh-fails.service fails without any hardening"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    argv: list[str],
    expected: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _need("nginx.service")
    units = tmp_path / "etc-systemd-system"
    units.mkdir()
    (units / "ugh-fails.service").write_text("[Service]\nExecStart=/bin/false\n")
    monkeypatch.setattr("unitgen.harden.HOST_UNIT_DIR", units)
    out = tmp_path / "out"
    assert main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("unitgen: "), err
    assert expected in err
    assert not out.exists()  # nothing written


def _mounts() -> list[str]:
    # mount ids and peer groups change with every mount; compare where and what
    return sorted(
        " ".join(line.split()[4:5] + line.split(" - ")[1:])
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
    )


def test_out_is_the_only_thing_written(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """redis-server: the drop-in lands in --out; the host's /var, unit dirs and mounts
    are as they were; --json says what was tried."""
    _need("redis-server.service")
    watched = [Path("/var/lib/redis"), Path("/var/log/redis"), Path("/etc/systemd/system")]
    before = {p: sorted(x.name for x in p.iterdir()) for p in watched if p.is_dir()}
    mounts = _mounts()
    out = tmp_path / "out"
    code = main(["harden", "redis-server.service", "--settle", "0.5", "--out", str(out), "--json"])
    assert code == 0
    assert sorted(p.name for p in out.rglob("*")) == [HARDEN_DROPIN, "redis-server.service.d"]
    assert {p: sorted(x.name for x in p.iterdir()) for p in before} == before
    assert _mounts() == mounts
    payload = json.loads(capsys.readouterr().out)
    assert payload["written"] == [str(out / "redis-server.service.d" / HARDEN_DROPIN)]
    assert payload["trials"][0]["ok"] is True
    assert payload["dropin"] == (out / "redis-server.service.d" / HARDEN_DROPIN).read_text()
    assert payload["exposure_after"] <= payload["exposure_before"]
    shutil.rmtree(out)


def test_a_oneshot_is_judged_by_its_result(tmp_path: Path) -> None:
    """A oneshot is done, not down, when it has run: success is its verdict.

    Under strict it cannot write /etc: the shell says "Read-only file system", so
    ProtectSystem=strict comes back with ReadWritePaths=/etc, and nothing stays off.
    """
    _need("redis-server.service")
    units = tmp_path / "etc-systemd-system"
    units.mkdir()
    (units / "ugh-once.service").write_text(
        "[Service]\nType=oneshot\nExecStart=/bin/sh -c 'echo x > /etc/ugh-once'\n"
    )
    result = harden(
        "ugh-once.service",
        None,
        systemd_version=systemd_version.resolve(None),
        options=HardenOptions(settle=0.5),
        host_unit_dir=units,
    )
    assert result.search.dropped == {}
    assert result.hardening.read_write_paths == ("/etc",)
    assert 'ReadWritePaths="/etc"' in result.dropin
    assert [t.change for t in result.search.trials if t.change.startswith("+ProtectSystem,")] == [
        "+ProtectSystem, ReadWritePaths=/etc"
    ]
    assert not Path("/etc/ugh-once").exists()
