"""``unitgen import``: unit files to spec entries, nothing dropped silently.

The real Debian units round-trip through render and ``systemd-analyze verify``
here; tests/test_import_sandbox.py starts them.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from unitgen import systemd_version
from unitgen.cli import main
from unitgen.importunits import import_unit, parse_unit_text, to_toml
from unitgen.paths import Scope
from unitgen.render import RenderOptions, render
from unitgen.specfile import parse_spec
from unitgen.verify import verify

VENDOR = Path("/lib/systemd/system")
# ssh and cron are not installed on the dev VM (and install.sh does not install them).
DEBIAN_UNITS = ["nginx.service", "redis-server.service", "systemd-timesyncd.service"]


def _write(tmp: Path, name: str, text: str) -> Path:
    path = tmp / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _render_and_verify(spec_text: str, out: Path) -> dict[str, str]:
    spec = parse_spec(spec_text, "imported.toml")
    options = dataclasses.replace(
        RenderOptions(systemd_version=systemd_version.resolve(None)), policy_dir=out / "policy"
    )
    files = render(spec, options)
    for name, text in files.items():
        _write(out, name, text)
    report = verify(out, list(files), Scope.SYSTEM)
    assert not report.errors, report.errors
    return files


@pytest.mark.parametrize("unit", DEBIAN_UNITS)
def test_debian_units_round_trip_through_render_and_verify(unit: str, tmp_path: Path) -> None:
    path = VENDOR / unit
    if not path.exists():
        pytest.skip(f"{unit} is not installed here")
    imported = import_unit(path)
    files = _render_and_verify(to_toml([imported]), tmp_path)
    text = files[unit]
    assert "ExecStart=" in text
    # Every line of the vendor's [Service] either made it into the rendered unit or is listed.
    rendered = set(re.findall(r"^(\w+)=", text, re.MULTILINE))
    listed = " ".join(u.line for u in imported.unrepresented)
    for key in re.findall(r"^(\w+)=", path.read_text(), re.MULTILINE):
        if key in ("ReadWriteDirectories",):
            assert "ReadWritePaths" in rendered
            continue
        assert key in rendered or f"{key}=" in listed, key


def test_what_each_debian_unit_loses_is_listed() -> None:
    if not (VENDOR / "nginx.service").exists():
        pytest.skip("nginx is not installed here")
    nginx = import_unit(VENDOR / "nginx.service")
    lines = [u.line for u in nginx.unrepresented]
    assert any(line.startswith("Service: ExecStop=-/sbin/start-stop-daemon") for line in lines)
    assert "Service: KillMode=mixed" in lines
    assert nginx.entry["restart"] == {"policy": "no"}  # systemd's default, said out loud
    assert nginx.entry["hardening"] == {"profile": "off"}


def test_redis_sandboxing_becomes_strict_with_escape_hatches() -> None:
    if not (VENDOR / "redis-server.service").exists():
        pytest.skip("redis-server is not installed here")
    redis = import_unit(VENDOR / "redis-server.service")
    hard = redis.entry["hardening"]
    assert isinstance(hard, dict)
    assert hard["profile"] == "strict"
    assert "ProtectSystem" not in hard["disable"] and "DynamicUser" not in hard["disable"]
    assert hard["read_write_paths"] == [
        "/var/lib/redis",
        "/var/log/redis",
        "/var/run/redis",
        "/etc/redis",
    ]
    assert redis.entry["limits"] == {"nofile": 65535}
    why = {u.line: u.why for u in redis.unrepresented}
    assert "duration above zero" in why["Service: TimeoutStopSec=0"]  # the spec's own words
    assert "Service: UMask=007" in why


def test_dropins_override_in_name_order_and_reset_lists(tmp_path: Path) -> None:
    unit = _write(
        tmp_path,
        "web.service",
        "[Unit]\nDescription=first\nAfter=a.service\n[Service]\nExecStart=/bin/false\n"
        "Environment=A=1\n",
    )
    _write(tmp_path, "web.service.d/20-b.conf", "[Service]\nExecStart=\nExecStart=/bin/true x\n")
    _write(
        tmp_path, "web.service.d/10-a.conf", "[Unit]\nDescription=second\nAfter=\nAfter=b.service\n"
    )
    _write(tmp_path, "web.service.d/30-c.conf", '[Service]\nEnvironment="B=two words" \\\n  C=3\n')
    imported = import_unit(unit)
    assert imported.entry["description"] == "second"
    assert imported.entry["after"] == ["b.service"]
    assert imported.entry["exec"] == ["/bin/true", "x"]
    assert imported.entry["environment"] == {"A": "1", "B": "two words", "C": "3"}
    assert [Path(f).name for f in imported.files] == [
        "web.service",
        "10-a.conf",
        "20-b.conf",
        "30-c.conf",
    ]


def test_exec_prefixes_and_expansions_are_listed(tmp_path: Path) -> None:
    unit = _write(
        tmp_path,
        "x.service",
        "[Service]\nExecStart=-/bin/echo $HOME %n\nExecStartPre=+/bin/true\nType=oneshot\n",
    )
    imported = import_unit(unit)
    whys = " | ".join(u.why for u in imported.unrepresented)
    for expected in ("exec prefix '-'", "exec prefix '+'", "$VAR", "% specifiers", "simple, exec"):
        assert expected in whys


_KEYS = st.sampled_from(
    ["Description", "ExecStop", "KillMode", "Nice", "User", "Type", "Restart", "FooBar", "Alias"]
)
_VALUES = st.text(
    st.characters(min_codepoint=33, max_codepoint=126, blacklist_characters="\\\"'%$#;["),
    min_size=1,
    max_size=12,
)


@given(lines=st.lists(st.tuples(st.sampled_from(["Unit", "Service", "Install"]), _KEYS, _VALUES)))
@settings(max_examples=100, deadline=None)
def test_no_line_is_dropped_silently(
    lines: list[tuple[str, str, str]], tmp_path_factory: pytest.TempPathFactory
) -> None:
    tmp = tmp_path_factory.mktemp("u")
    body = "\n".join(f"[{section}]\n{key}={value}" for section, key, value in lines)
    unit = _write(tmp, "h.service", f"[Service]\nExecStart=/bin/true\n{body}\n")
    try:
        imported = import_unit(unit)
    except Exception as exc:  # only the documented one-line error
        from unitgen.errors import UsageError

        assert isinstance(exc, UsageError)
        return
    text = to_toml([imported])
    parse_spec(text, "t.toml")  # whatever is carried is a valid spec
    assignments: dict[str, dict[str, list[str]]] = {}
    parse_unit_text(unit.read_text(), assignments, "h.service")
    listed = {u.line for u in imported.unrepresented}
    carried_keys = {"Description", "User", "Type", "Restart", "ExecStart"}
    for section, keys in assignments.items():
        for key, values in keys.items():
            for value in values:
                line = f"{section}: {key}={value}"
                # a key the spec does carry, in its own section, may be carried; the rest is listed
                assert line in listed or (key in carried_keys and section in ("Unit", "Service")), (
                    line
                )


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        (["/nonexistent/x.service"], "/nonexistent/x.service: no such unit file"),
        (["TMP/t@.service"], "expected a plain NAME.service unit file"),
        (["TMP/n.service"], "no ExecStart= the spec can carry"),
        (["TMP/g.service"], "expected 'Key=value' inside a [Section]"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    files: list[str], expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write(tmp_path, "t@.service", "[Service]\nExecStart=/bin/true\n")
    _write(tmp_path, "n.service", "[Unit]\nDescription=nothing to run\n")
    _write(tmp_path, "g.service", "[Service]\nthis is not an assignment\n")
    argv = ["import", *(f.replace("TMP", str(tmp_path)) for f in files)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err, err


_LINE = st.one_of(
    st.text(max_size=40),
    st.builds(lambda k, v: f"{k}={v}", _KEYS, st.text(max_size=30)),
    st.sampled_from(["[Unit]", "[Service]", "[Install]", "\\", "#c", "ExecStart=", "Type="]),
)


@given(start=st.booleans(), lines=st.lists(_LINE, max_size=12))
@settings(max_examples=300, deadline=None)
def test_any_unit_text_imports_or_is_refused_in_one_line(
    start: bool, lines: list[str], tmp_path_factory: pytest.TempPathFactory
) -> None:
    from unitgen.errors import UsageError

    head = "[Service]\nExecStart=/bin/true\n" if start else ""
    text = head + "\n".join(lines)
    unit = _write(tmp_path_factory.mktemp("h"), "h.service", text)
    try:
        imported = import_unit(unit)
    except UsageError as exc:
        assert "\n" not in str(exc).strip()
        return
    parse_spec(to_toml([imported]), "t.toml")


def test_json_lists_what_is_not_carried(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    if not (VENDOR / "nginx.service").exists():
        pytest.skip("nginx is not installed here")
    assert main(["import", str(VENDOR / "nginx.service"), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    (unit,) = payload["units"]
    assert unit["service"] == "nginx"
    assert {"line": "Service: KillMode=mixed", "why": "the spec has no key for it"} in unit[
        "unrepresented"
    ]
    assert parse_spec(payload["spec"], "t.toml").services["nginx"].type == "forking"
