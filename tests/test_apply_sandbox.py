"""``unitgen apply``, ``rollback`` and ``generations`` against a booted systemd container.

Each test runs the real command *inside* the container (where systemd is PID 1),
as an operator or Ansible would on the host.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from unitgen.sandbox import Sandbox

UNITGEN = str(Path(sys.executable).with_name("unitgen"))
GOOD = [
    "/usr/bin/python3",
    "-m",
    "http.server",
    "{port}",
    "--bind",
    "127.0.0.1",
    "--directory",
    "/usr/share/doc",
]
BROKEN = ["/usr/bin/python3", "-c", "import sys; sys.exit(3)"]


def spec_text(description: str, exec_: list[str], port: int = 8471, *, health: bool = True) -> str:
    argv = ", ".join(json.dumps(a.format(port=port)) for a in exec_)
    lines = [
        # The rollback's alert: a command target that leaves the summary in a file.
        "[alert.drill]",
        'type = "command"',
        'command = ["/usr/bin/python3", "-c", "import os; open(\'/run/h15-alert\', \'w\')'
        ".write(os.environ['UNITGEN_ALERT_REASON'] + ' ' + "
        "os.environ['UNITGEN_ALERT_SUMMARY'])\"]",
        "",
        "[service.h15web]",
        'alerts = ["drill"]',
        f"description = {json.dumps(description)}",
        f"exec = [{argv}]",
        'type = "exec"',
        "dynamic_user = true",
        'restart = { policy = "on-failure", delay = "200ms", burst = 3, interval = "1min" }',
    ]
    if health:
        lines.append(
            f'health = {{ http = "http://127.0.0.1:{port}/", interval = "10s", timeout = "1s" }}'
        )
    return "\n".join(lines) + "\n"


def apply(sb: Sandbox, spec: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    res = sb.run(
        [UNITGEN, "apply", str(spec), "--json", "--settle", "1", "--timeout", "20", *extra],
        timeout=90,
    )
    assert res.stdout, res.stderr
    return res.returncode, json.loads(res.stdout)


def serving(sb: Sandbox, port: int = 8471) -> bool:
    res = sb.run(
        [
            "/usr/bin/python3",
            "-c",
            "import urllib.request,sys; "
            f"sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:{port}/', timeout=2)"
            ".status == 200 else 1)",
        ]
    )
    return res.returncode == 0


def test_apply_good_change_then_no_change_then_broken_is_rolled_back(
    fresh_system_sandbox: Sandbox, tmp_path: Path
) -> None:
    sb = fresh_system_sandbox
    spec = tmp_path / "services.toml"

    # First apply: a new unit, enabled, started, healthy.
    spec.write_text(spec_text("v1", GOOD))
    rc, out = apply(sb, spec)
    assert (rc, out["outcome"], out["generation"]) == (0, "applied", 1), out
    assert [r["unit"] for r in out["restarted"]] == ["h15web.service"]
    assert sb.run(["test", "-e", "/run/h15-alert"]).returncode != 0  # no alert when it works
    assert serving(sb)
    assert sb.systemctl("is-enabled", "h15web.service").stdout.strip() == "enabled"
    pid1 = sb.systemctl("show", "-P", "MainPID", "h15web.service").stdout.strip()

    # The same spec again: nothing changes, nothing restarts.
    rc, out = apply(sb, spec)
    assert (rc, out["outcome"], out["changed"], out["restarted"]) == (0, "unchanged", False, [])
    assert sb.systemctl("show", "-P", "MainPID", "h15web.service").stdout.strip() == pid1
    rc, out = apply(sb, spec, "--check")
    assert (rc, out["changed"], out["diff"]) == (0, False, "")

    # A good change: --check sees it and changes nothing; apply restarts the unit.
    spec.write_text(spec_text("v2", GOOD))
    rc, out = apply(sb, spec, "--check")
    assert (rc, out["changed"]) == (1, True)
    assert "-Description=v1" in out["diff"] and "+Description=v2" in out["diff"]
    assert sb.systemctl("show", "-P", "MainPID", "h15web.service").stdout.strip() == pid1
    rc, out = apply(sb, spec)
    assert (rc, out["outcome"], out["generation"], out["previous"]) == (0, "applied", 2, 1), out
    assert sb.systemctl("show", "-P", "Description", "h15web.service").stdout.strip() == "v2"
    pid2 = sb.systemctl("show", "-P", "MainPID", "h15web.service").stdout.strip()
    assert pid2 != pid1
    assert serving(sb)

    # A change whose service cannot start: rolled back, the old unit serves again.
    spec.write_text(spec_text("v3", BROKEN))
    rc, out = apply(sb, spec)
    assert (rc, out["outcome"], out["generation"], out["previous"]) == (1, "rolled-back", 3, 2), out
    assert [r["ok"] for r in out["restarted"]] == [False]
    assert [(r["unit"], r["ok"]) for r in out["rolled_back"]] == [("h15web.service", True)]
    assert sb.systemctl("show", "-P", "Description", "h15web.service").stdout.strip() == "v2"
    assert sb.systemctl("is-active", "h15web.service").stdout.strip() == "active"
    assert serving(sb)
    alert = sb.run(["cat", "/run/h15-alert"], check=True).stdout
    assert alert.startswith("apply-rolled-back unitgen apply: generation 3 failed on h15web")
    assert [a["ok"] for a in out["alerts"]] == [True]
    # The unit file is a link through the live generation (absolute inside the container).
    link = sb.unit_dir / "h15web.service"
    assert link.is_symlink()
    assert str(link.readlink()) == "/var/lib/unitgen/generations/current/units/h15web.service"
    assert "Description=v2" in sb.run(["cat", "/etc/systemd/system/h15web.service"]).stdout

    # One journal entry says so, with the catalog's MESSAGE_ID.
    entry = sb.run(
        [
            "journalctl",
            "--no-pager",
            "-o",
            "json",
            "-n",
            "1",
            "MESSAGE_ID=c3dadebf4df84bd096f8a06854e42450",
        ],
        check=True,
    ).stdout
    fields = json.loads(entry)
    assert (fields["UNITGEN_UNIT"], fields["UNITGEN_GENERATION"], fields["UNITGEN_PREVIOUS"]) == (
        "h15web.service",
        "3",
        "2",
    )

    res = sb.run([UNITGEN, "generations", "--json"])
    gens = json.loads(res.stdout)["generations"]
    assert [(g["generation"], g["status"], g["current"]) for g in gens] == [
        (1, "superseded", False),
        (2, "active", True),
        (3, "failed", False),
    ]

    # Rollback to generation 1 by hand, then the same spec (v2) again is a change.
    res = sb.run([UNITGEN, "rollback", "--to", "1", "--json", "--settle", "1"], timeout=90)
    out = json.loads(res.stdout)
    assert (res.returncode, out["outcome"], out["generation"]) == (0, "applied", 1), out
    assert sb.systemctl("show", "-P", "Description", "h15web.service").stdout.strip() == "v1"
    assert serving(sb)


def test_apply_refuses_a_unit_file_it_does_not_own(system_sandbox: Sandbox, tmp_path: Path) -> None:
    sb = system_sandbox
    (sb.unit_dir / "h15theirs.service").write_text("[Service]\nExecStart=/bin/true\n")
    spec = tmp_path / "s.toml"
    spec.write_text(spec_text("x", GOOD).replace("h15web", "h15theirs"))
    gens = tmp_path / "gens"
    try:
        res = sb.run([UNITGEN, "apply", str(spec), "--generations", str(gens)], timeout=60)
        assert res.returncode == 2, res
        assert res.stderr.strip() == (
            "unitgen: /etc/systemd/system/h15theirs.service: exists and is not managed by "
            "unitgen apply (move it aside first; nothing was changed)"
        )
        assert (sb.unit_dir / "h15theirs.service").read_text().startswith("[Service]")
        check = sb.run(
            [UNITGEN, "apply", str(spec), "--check", "--json", "--generations", str(gens)],
            timeout=60,
        )
        problems = json.loads(check.stdout)["problems"]
        assert check.returncode == 1
        assert "/etc/systemd/system/h15theirs.service: exists and is not managed" in problems[-1]
        assert not gens.exists() or not any(p.name.isdigit() for p in gens.iterdir())
    finally:
        (sb.unit_dir / "h15theirs.service").unlink()


def two_services(*, with_first: bool, description: str) -> str:
    """h15b is ordered after h15a: a change to both restarts h15a first."""
    out = []
    if with_first:
        out += [
            "[service.h15a]",
            f"description = {json.dumps(description)}",
            'exec = ["/usr/bin/sleep", "infinity"]',
            'type = "exec"',
            "dynamic_user = true",
            "",
        ]
    out += [
        "[service.h15b]",
        f"description = {json.dumps(description)}",
        'exec = ["/usr/bin/sleep", "infinity"]',
        'type = "exec"',
        "dynamic_user = true",
    ]
    if with_first:
        out.append('after = ["h15a.service"]')
    return "\n".join(out) + "\n"


def test_apply_restarts_in_dependency_order_and_removes_a_dropped_unit(
    fresh_system_sandbox: Sandbox, tmp_path: Path
) -> None:
    sb = fresh_system_sandbox
    spec = tmp_path / "two.toml"
    spec.write_text(two_services(with_first=True, description="one"))
    rc, out = apply(sb, spec)
    assert (rc, out["outcome"]) == (0, "applied"), out
    spec.write_text(two_services(with_first=True, description="two"))
    rc, out = apply(sb, spec)
    assert [r["unit"] for r in out["restarted"]] == ["h15a.service", "h15b.service"]

    spec.write_text(two_services(with_first=False, description="two"))
    rc, out = apply(sb, spec)
    assert (rc, out["outcome"]) == (0, "applied"), out
    assert [(r["unit"], r["action"]) for r in out["restarted"]] == [
        ("h15a.service", "stop"),
        ("h15b.service", "restart"),  # its After= line went
    ]
    assert not (sb.unit_dir / "h15a.service").is_symlink()
    assert not (sb.unit_dir / "multi-user.target.wants" / "h15a.service").exists()
    load = sb.systemctl("show", "-P", "LoadState", "h15a.service").stdout.strip()
    assert load == "not-found"
    assert sb.systemctl("is-active", "h15b.service").stdout.strip() == "active"


def test_a_rollback_that_fails_too_exits_3_and_says_so_in_the_alert_and_the_journal(
    fresh_system_sandbox: Sandbox, tmp_path: Path
) -> None:
    """The old generation cannot start either (what it needs went away meanwhile): the
    operator must hear that units are down, not "back on generation 1"."""
    sb = fresh_system_sandbox
    spec = tmp_path / "services.toml"
    needs_flag = [
        "/bin/sh",
        "-c",
        "test -e /etc/h15-flag && exec " + " ".join(GOOD).format(port=8472),
    ]
    sb.run(["touch", "/etc/h15-flag"], check=True)
    spec.write_text(spec_text("v1", needs_flag, port=8472))
    rc, out = apply(sb, spec)
    assert (rc, out["outcome"], out["generation"]) == (0, "applied", 1), out
    assert serving(sb, 8472)

    sb.run(["rm", "/etc/h15-flag"], check=True)
    spec.write_text(spec_text("v2", BROKEN, port=8472))
    rc, out = apply(sb, spec)
    assert (rc, out["outcome"], out["generation"], out["previous"]) == (
        3,
        "rollback-failed",
        2,
        1,
    ), out
    assert [(r["unit"], r["ok"]) for r in out["restarted"]] == [("h15web.service", False)]
    assert [(r["unit"], r["ok"]) for r in out["rolled_back"]] == [("h15web.service", False)]
    # Back on generation 1's files, even though its unit does not start.
    assert sb.systemctl("show", "-P", "Description", "h15web.service").stdout.strip() == "v1"
    assert sb.systemctl("is-active", "h15web.service").stdout.strip() != "active"
    alert = sb.run(["cat", "/run/h15-alert"], check=True).stdout
    assert alert.startswith("apply-rollback-failed unitgen apply: generation 2 failed on h15web")
    assert "the rollback to generation 1 failed too (h15web.service: " in alert
    entry = json.loads(
        sb.run(
            ["journalctl", "--no-pager", "-o", "json", "-n", "1", "UNITGEN_EVENT=Apply"],
            check=True,
        ).stdout
    )
    assert (entry["UNITGEN_OUTCOME"], entry["PRIORITY"]) == ("rollback-failed", "2")
    assert entry["MESSAGE_ID"] == "a74d3fe5f3b1457194f9a959784b701e"  # its own catalog entry
    assert "the rollback to generation 1 failed too" in entry["MESSAGE"]
    gens = json.loads(sb.run([UNITGEN, "generations", "--json"]).stdout)["generations"]
    assert [(g["generation"], g["status"], g["current"]) for g in gens] == [
        (1, "active", True),
        (2, "failed", False),
    ]


def test_apply_user_links_into_the_user_manager_and_rolls_back_there(
    fresh_user_sandbox: Sandbox, tmp_path: Path
) -> None:
    """``apply --user``: the user's own unit directory and manager, generations in its
    state directory, the same rollback; nothing of the system scope is touched."""
    sb = fresh_user_sandbox
    spec = tmp_path / "services.toml"
    port = 8473

    def user_spec(description: str, exec_: list[str]) -> str:
        # A user manager cannot run DynamicUser= services.
        return spec_text(description, exec_, port).replace("dynamic_user = true\n", "")

    spec.write_text(user_spec("v1", GOOD))
    rc, out = apply(sb, spec, "--user")
    assert (rc, out["outcome"], out["generation"]) == (0, "applied", 1), out
    assert sb.systemctl("is-active", "h15web.service").stdout.strip() == "active"
    assert serving(sb, port)
    home = sb.to_host(Path("/home/sandbox"))
    link = home / ".config/systemd/user/h15web.service"
    assert link.is_symlink(), list((home / ".config/systemd/user").iterdir())
    # Through the live generation in the user's state directory (a path inside).
    assert str(link.readlink()).startswith("/home/sandbox/"), link.readlink()
    assert "/generations/current/units/" in str(link.readlink())
    # The user sandbox shares the host's /etc: the system scope's directory is untouched.
    assert not Path("/etc/systemd/system/h15web.service").exists()

    spec.write_text(user_spec("v2", BROKEN))
    rc, out = apply(sb, spec, "--user")
    assert (rc, out["outcome"], out["generation"], out["previous"]) == (1, "rolled-back", 2, 1)
    assert sb.systemctl("show", "-P", "Description", "h15web.service").stdout.strip() == "v1"
    assert sb.systemctl("is-active", "h15web.service").stdout.strip() == "active"
    assert serving(sb, port)
    gens = json.loads(sb.run([UNITGEN, "generations", "--user", "--json"]).stdout)["generations"]
    assert [(g["generation"], g["status"], g["current"]) for g in gens] == [
        (1, "active", True),
        (2, "failed", False),
    ]
    sb.systemctl("stop", "h15web.service")
