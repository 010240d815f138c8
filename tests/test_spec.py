"""Spec validation: every problem found at once, each at its key, and the typed model."""

from __future__ import annotations

import copy
import itertools
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from spec_toml import dumps

from unitgen.errors import SpecError, SpecProblem
from unitgen.model import (
    Backoff,
    Hardening,
    Health,
    Probe,
    Restart,
    Threshold,
)
from unitgen.specfile import load_spec, parse_spec

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "example.toml"
SRC = "spec.toml"


def base() -> dict[str, Any]:
    return {
        "alert": {"ops": {"type": "webhook", "url_file": "/etc/unitgen/ops.url"}},
        "service": {"api": {"exec": ["/usr/bin/api", "--serve"]}},
    }


def problems_of(text: str) -> list[SpecProblem]:
    with pytest.raises(SpecError) as info:
        parse_spec(text, SRC)
    assert info.value.problems, "a SpecError always carries problems"
    assert all(p.file == SRC for p in info.value.problems)
    return list(info.value.problems)


def only_problem(text: str) -> SpecProblem:
    found = problems_of(text)
    assert len(found) == 1, found
    return found[0]


def with_service(**keys: object) -> str:
    spec = base()
    spec["service"]["api"].update(keys)
    return dumps(spec)


# -- the model -----------------------------------------------------------------------


def test_minimal_service_gets_defaults() -> None:
    spec = parse_spec(dumps(base()), SRC)
    api = spec.services["api"]
    assert api.unit == "api.service"
    assert api.exec == ("/usr/bin/api", "--serve")
    assert api.description == "api (unitgen)"
    assert api.restart == Restart()
    assert api.hardening == Hardening(profile="strict")
    assert api.alerts == ()
    assert spec.path == SRC


def test_example_loads_into_the_model() -> None:
    spec = load_spec(EXAMPLE)
    api = spec.services["api"]
    assert api.restart == Restart(policy="on-failure", delay=5.0, burst=10, interval=1800.0)
    assert api.limits.memory_max == 1024**3
    assert api.limits.memory_high == "80%"
    assert api.limits.cpu_quota == "80%"
    assert api.health == Health(
        Probe(
            "http",
            "http://127.0.0.1:8080/",
            timeout=2.0,
            expect_status=((200, 200), (300, 399)),
            expect_body="<html",
        ),
        interval=10.0,
        failures=3,
        start_period=120.0,
        startup=Probe(
            "http",
            "http://127.0.0.1:8080/ready",
            timeout=1.0,
            expect_status=((204, 204),),
            expect_body="ready",
        ),
    )
    assert api.depends[0] == Probe("tcp", "127.0.0.1:6379", timeout=2.0)
    assert api.depends[2] == Probe("command", ("/usr/bin/true",), timeout=1.0)
    assert api.cleanup.older_than == 3600.0
    assert api.disk.min_free == Threshold(percent=10.0)
    assert api.disk.min_free_inodes == Threshold(percent=5.0, bytes=10000)
    assert api.memory.min_available == Threshold(percent=5.0, bytes=256 * 1024**2)
    assert api.recovery.backoff == Backoff(base=5.0, factor=2.0, max=300.0, jitter=0.1)
    assert api.hardening == Hardening(
        "strict", ("MemoryDenyWriteExecute",), ("/srv/data",), ("CAP_NET_BIND_SERVICE",)
    )
    assert api.state_directory == ("api",)
    assert api.environment[1] == ("GREETING", '100% fine; "quoted"')
    assert api.alerts == ("ops", "mail")
    worker = spec.services["worker"]
    assert worker.alerts == ("ops",)  # from [defaults]
    assert worker.hardening.profile == "standard"
    assert worker.state_directory == ("worker", "worker/queues")
    nginx = spec.overrides["nginx.service"]
    assert nginx.restart == Restart(policy="on-failure", delay=2.0)
    assert nginx.hardening == Hardening(profile="standard")
    assert set(spec.alerts) == {"ops", "chat", "hook", "am", "mail", "pager"}
    mail = spec.alerts["mail"]
    assert mail.type == "email"
    assert mail.config["name"] == "mail"
    assert spec.alerts["ops"].config["timeout"] == 5.0  # "5s" became float seconds


def test_alert_config_is_what_the_alerts_module_accepts() -> None:
    alerts = pytest.importorskip("handlers.alerts")
    spec = load_spec(EXAMPLE)
    for cfg in spec.alerts.values():
        target = alerts.AlertTarget.from_mapping(cfg.config)
        assert target.name == cfg.name


def test_defaults_apply_and_can_be_overridden() -> None:
    spec = base()
    spec["defaults"] = {"hardening": "minimal", "alerts": ["ops"]}
    spec["service"]["b"] = {
        "exec": ["/bin/b"],
        "alerts": [],
        "hardening": {"disable": ["ProtectHome"]},
    }
    spec["override"] = {"nginx.service": {"hardening": {"read_write_paths": ["/srv"]}}}
    loaded = parse_spec(dumps(spec), SRC)
    assert loaded.services["api"].hardening.profile == "minimal"
    assert loaded.services["api"].alerts == ("ops",)
    assert loaded.services["b"].alerts == ()
    assert loaded.services["b"].hardening == Hardening("minimal", ("ProtectHome",))
    assert loaded.overrides["nginx.service"].hardening == Hardening("minimal", (), ("/srv",))
    assert loaded.overrides["nginx.service"].alerts == ("ops",)


def test_override_without_hardening_keeps_vendor() -> None:
    spec = base()
    spec["override"] = {"nginx.service": {"restart": {"policy": "always"}}}
    nginx = parse_spec(dumps(spec), SRC).overrides["nginx.service"]
    assert nginx.hardening is None
    assert nginx.limits is None
    assert nginx.restart == Restart(policy="always")


def test_quantities_are_converted() -> None:
    spec = parse_spec(
        with_service(
            timeout_start="1min 30s",
            timeout_stop=20,
            watchdog="500ms",
            limits={"memory_max": "512M", "memory_high": 1048576, "tasks_max": 64},
            disk={"min_free": ["10%", "1G"], "min_free_inodes": 5000},
        ),
        SRC,
    )
    api = spec.services["api"]
    assert (api.timeout_start, api.timeout_stop, api.watchdog) == (90.0, 20.0, 0.5)
    assert api.limits.memory_max == 512 * 1024**2
    assert api.limits.memory_high == 1048576
    assert api.disk.min_free == Threshold(percent=10.0, bytes=1024**3)
    assert api.disk.min_free_inodes == Threshold(bytes=5000)


def test_environment_keeps_order() -> None:
    env = {"Z": "1", "A": "2", "M": "3"}
    api = parse_spec(with_service(environment=env), SRC).services["api"]
    assert api.environment == (("Z", "1"), ("A", "2"), ("M", "3"))


def test_template_service_name() -> None:
    spec = base()
    spec["service"]["worker@"] = {"exec": ["/bin/w", "%i"]}
    loaded = parse_spec(dumps(spec), SRC)
    assert loaded.services["worker@"].unit == "worker@.service"


# -- one problem, at the right key ---------------------------------------------------


@pytest.mark.parametrize(
    ("keys", "key", "fragment"),
    [
        (
            {"restart": {"delay": "soon"}},
            "service.api.restart.delay",
            "expected a duration like '5s' or '1min 30s', got 'soon'",
        ),
        ({"restart": {"delay": "-5s"}}, "service.api.restart.delay", "expected a duration"),
        (
            {"restart": {"burst": True}},
            "service.api.restart.burst",
            "expected an integer, got the boolean true",
        ),
        ({"restart": {"burst": 0}}, "service.api.restart.burst", "from 1"),
        ({"restart": {"policy": "on-falure"}}, "service.api.restart.policy", "'on-failure'"),
        ({"restart": {"interval": "0"}}, "service.api.restart.interval", "above zero"),
        ({"limits": {"tasks_max": 1.5}}, "service.api.limits.tasks_max", "expected an integer"),
        ({"limits": {"tasks_max": True}}, "service.api.limits.tasks_max", "boolean"),
        ({"limits": {"memory_max": "1g"}}, "service.api.limits.memory_max", "upper case"),
        ({"limits": {"memory_max": "150%"}}, "service.api.limits.memory_max", "at most 100%"),
        ({"limits": {"memory_max": "0"}}, "service.api.limits.memory_max", "above zero"),
        ({"limits": {"cpu_quota": "80"}}, "service.api.limits.cpu_quota", "percentage"),
        ({"limits": {"cpu_quota": 80}}, "service.api.limits.cpu_quota", "percentage"),
        ({"disk": {"min_free": "lots"}}, "service.api.disk.min_free", "percentage like '10%'"),
        ({"disk": {"min_free": ["1%", "2%"]}}, "service.api.disk.min_free[1]", "at most one"),
        ({"disk": {"min_free": []}}, "service.api.disk.min_free", "one or two"),
        ({"disk": {"min_free_inodes": "1G"}}, "service.api.disk.min_free_inodes", "count"),
        (
            {"recovery": {"backoff": {"jitter": 2.0}}},
            "service.api.recovery.backoff.jitter",
            "from 0 to 1",
        ),
        (
            {"recovery": {"backoff": {"factor": "2"}}},
            "service.api.recovery.backoff.factor",
            "expected a number",
        ),
        ({"descripton": "x"}, "service.api.descripton", "did you mean 'description'?"),
        ({"zzz": 1}, "service.api.zzz", "expected one of"),
        ({"restart": {"dleay": "5s"}}, "service.api.restart.dleay", "did you mean 'delay'?"),
        ({"exec": []}, "service.api.exec", "non-empty"),
        ({"exec": "/usr/bin/api --serve"}, "service.api.exec", "array of strings"),
        ({"exec": ["api"]}, "service.api.exec[0]", "absolute path"),
        ({"exec": ["/usr/bin/api", 5]}, "service.api.exec[1]", "expected a string"),
        ({"validate": ["api", "-t"]}, "service.api.validate[0]", "absolute path"),
        ({"exec_start_pre": [["rm", "x"]]}, "service.api.exec_start_pre[0][0]", "absolute"),
        ({"exec_reload": ["kill"]}, "service.api.exec_reload[0]", "absolute"),
        ({"pidfile": "run/api.pid"}, "service.api.pidfile", "absolute path"),
        ({"pidfile": "/run/../api.pid"}, "service.api.pidfile", "'..'"),
        ({"working_directory": "srv"}, "service.api.working_directory", "absolute"),
        ({"environment_files": ["env"]}, "service.api.environment_files[0]", "absolute"),
        ({"cleanup": {"temp": ["tmp/api"]}}, "service.api.cleanup.temp[0]", "absolute"),
        ({"cleanup": {"pidfile": "x.pid"}}, "service.api.cleanup.pidfile", "absolute"),
        ({"disk": {"paths": ["var"]}}, "service.api.disk.paths[0]", "absolute"),
        ({"disk": {"cleanup": ["log"]}}, "service.api.disk.cleanup[0]", "absolute"),
        (
            {"hardening": {"read_write_paths": ["data"]}},
            "service.api.hardening.read_write_paths[0]",
            "absolute",
        ),
        ({"health": {"command": ["check"]}}, "service.api.health.command[0]", "absolute"),
        ({"depends": [{"command": ["ping"]}]}, "service.api.depends[0].command[0]", "absolute"),
        ({"health": {"http": "ftp://x/"}}, "service.api.health.http", "http://"),
        ({"health": {"http": "ftp://u:XyZ@x/"}}, "service.api.health.http", "user:password"),
        ({"health": {"http": "http://[::1/?token=XyZ"}}, "service.api.health.http", "not shown"),
        ({"health": {"http": "http://user:pw@x/"}}, "service.api.health.http", "credentials"),
        ({"health": {"tcp": "localhost"}}, "service.api.health.tcp", "host:port"),
        ({"health": {"tcp": "localhost:99999"}}, "service.api.health.tcp", "1 to 65535"),
        ({"health": {"interval": "5s"}}, "service.api.health", "exactly one of http"),
        ({"health": {"tcp": "h:1", "http": "http://h/"}}, "service.api.health", "got http, tcp"),
        (
            {"depends": [{"tcp": "[::1]:6379"}, {"timeout": "1s"}]},
            "service.api.depends[1]",
            "exactly one of",
        ),
        ({"depends": {"tcp": "h:1"}}, "service.api.depends", "expected an array"),
        ({"state_directory": "../api"}, "service.api.state_directory", "'..'"),
        ({"state_directory": ["api", "/var/lib/x"]}, "service.api.state_directory[1]", "relative"),
        ({"runtime_directory": ""}, "service.api.runtime_directory", "empty"),
        ({"requires": ["redis"]}, "service.api.requires[0]", "type suffix"),
        ({"after": ["redis server.service"]}, "service.api.after[0]", "' '"),
        ({"wants": ["worker@.service"]}, "service.api.wants[0]", "template"),
        ({"binds_to": ["x.servic"]}, "service.api.binds_to[0]", "type suffix"),
        ({"part_of": ["a.service", "a.service"]}, "service.api.part_of[1]", "duplicate"),
        ({"user": "ro ot"}, "service.api.user", "user or group name"),
        ({"group": "-bad"}, "service.api.group", "group name"),
        ({"dynamic_user": "yes"}, "service.api.dynamic_user", "true or false"),
        ({"environment": {"A B": "x"}}, 'service.api.environment."A B"', "variable name"),
        ({"environment": {"PORT": 8080}}, "service.api.environment.PORT", "expected a string"),
        ({"type": "oneshot"}, "service.api.type", "expected one of simple"),
        ({"hardening": "strikt"}, "service.api.hardening", "did you mean 'strict'?"),
        ({"hardening": 1}, "service.api.hardening", "or a table"),
        (
            {"hardening": {"disable": ["no-such"]}},
            "service.api.hardening.disable[0]",
            "a directive that a hardening profile sets",
        ),
        (
            {"hardening": {"disable": ["ProtectHom"]}},
            "service.api.hardening.disable[0]",
            "did you mean 'ProtectHome'?",
        ),
        ({"description": 5}, "service.api.description", "expected a string"),
        ({"timeout_start": "1.5.s"}, "service.api.timeout_start", "expected a duration"),
        ({"alerts": ["opz"]}, "service.api.alerts[0]", "did you mean 'ops'?"),
        ({"alerts": "ops"}, "service.api.alerts", "expected an array"),
    ],
)
def test_one_problem_at_key(keys: dict[str, object], key: str, fragment: str) -> None:
    problem = only_problem(with_service(**keys))
    assert problem.key == key
    assert fragment in problem.message
    assert "XyZ" not in str(problem)  # the marker for values that may be secrets


def test_exec_missing() -> None:
    spec = base()
    spec["service"]["api"] = {"description": "x"}
    problem = only_problem(dumps(spec))
    assert (problem.key, problem.message.split(":")[0]) == ("service.api.exec", "missing")


def test_user_with_dynamic_user() -> None:
    problem = only_problem(with_service(user="api", dynamic_user=True))
    assert problem.key == "service.api.user"
    assert "dynamic_user" in problem.message
    # false is fine
    assert parse_spec(with_service(user="api", dynamic_user=False), SRC).services["api"].user


@pytest.mark.parametrize(
    ("restart", "fragment"),
    [
        (
            {"delay": "5s", "burst": 10, "interval": "30s"},
            "5s x (burst 10 - 1) = 45s >= interval 30s",
        ),
        ({"delay": "10s", "burst": 2, "interval": "10s"}, "= 10s >= interval 10s"),
        ({"delay": "3s"}, "= 12s >= interval 10s"),  # the default burst 5 and interval 10s
    ],
)
def test_start_limit_that_never_trips(restart: dict[str, object], fragment: str) -> None:
    problem = only_problem(with_service(restart=restart))
    assert problem.key == "service.api.restart"
    assert fragment in problem.message
    assert "never trip" in problem.message


@pytest.mark.parametrize(
    "restart",
    [
        {"delay": "5s", "burst": 10, "interval": "30min"},
        {"delay": "5s", "burst": 10, "interval": "46s"},
        {"delay": "1h", "burst": 1, "interval": "1s"},
        {"policy": "no", "delay": "1h", "burst": 10, "interval": "1s"},
        {},
    ],
)
def test_start_limit_that_trips(restart: dict[str, object]) -> None:
    parse_spec(with_service(restart=restart), SRC)


def test_start_limit_in_override() -> None:
    spec = base()
    spec["override"] = {"nginx.service": {"restart": {"delay": "1min"}}}
    problem = only_problem(dumps(spec))
    assert problem.key == 'override."nginx.service".restart'


# -- units and dependencies ----------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "fragment"),
    [("my api", "' '"), ("a/b", "'/'"), ("@x", "prefix before '@'"), ("x" * 250, "at most 255")],
)
def test_service_name_must_make_a_unit_name(name: str, fragment: str) -> None:
    spec = base()
    spec["service"][name] = {"exec": ["/bin/x"]}
    found = problems_of(dumps(spec))
    assert len(found) == 1
    assert found[0].key.startswith("service.")
    assert fragment in found[0].message


@pytest.mark.parametrize("unit", ["nginx", "nginx.socket", "ng inx.service", "@.service"])
def test_override_key_must_be_a_service_unit(unit: str) -> None:
    spec = base()
    spec["override"] = {unit: {"on_failure": True}}
    problem = only_problem(dumps(spec))
    assert problem.key.startswith("override.")
    assert "unit" in problem.message


def test_override_of_an_owned_service() -> None:
    spec = base()
    spec["override"] = {"api.service": {"on_failure": False}}
    problem = only_problem(dumps(spec))
    assert problem.key == 'override."api.service"'
    assert "[service.api]" in problem.message


_EDGE_KINDS = ("requires", "binds_to", "after", "before", "wants")


def _chain(edges: dict[str, dict[str, list[str]]]) -> str:
    spec = base()
    for name, deps in edges.items():
        spec["service"][name] = {"exec": [f"/bin/{name}"], **deps}
    return dumps(spec)


def test_cycle_over_requires_and_after() -> None:
    problem = only_problem(
        _chain(
            {
                "a": {"requires": ["b.service"]},
                "b": {"after": ["c.service"]},
                "c": {"binds_to": ["a.service"]},
            }
        )
    )
    assert problem.key == "service.a.requires[0]"
    assert "a.service -> b.service -> c.service -> a.service" in problem.message


def test_self_cycle() -> None:
    problem = only_problem(_chain({"a": {"after": ["x.target", "a.service"]}}))
    assert problem.key == "service.a.after[1]"
    assert "a.service -> a.service" in problem.message


def test_cycle_through_before() -> None:
    # c before b means b after c; with c after a and a after b that loops.
    problem = only_problem(
        _chain(
            {
                "a": {"after": ["b.service"]},
                "b": {},
                "c": {"before": ["b.service"], "after": ["a.service"]},
            }
        )
    )
    assert "a.service -> b.service -> c.service -> a.service" in problem.message
    assert problem.key == "service.a.after[0]"


def test_two_cycles_reported_separately() -> None:
    found = problems_of(
        _chain(
            {
                "a": {"requires": ["b.service"]},
                "b": {"requires": ["a.service"]},
                "c": {"after": ["d.service"]},
                "d": {"after": ["c.service"]},
            }
        )
    )
    assert sorted(p.key for p in found) == ["service.a.requires[0]", "service.c.after[0]"]


def test_no_cycle_in_a_diamond_or_via_outside_units() -> None:
    parse_spec(
        _chain(
            {
                "a": {"requires": ["b.service", "c.service"]},
                "b": {"after": ["d.service"]},
                "c": {"after": ["d.service", "a.target"]},
                "d": {"wants": ["a.service"]},
            }
        ),
        SRC,
    )


def test_long_chain_does_not_recurse() -> None:
    edges = {f"s{i}": {"after": [f"s{i + 1}.service"]} for i in range(3000)}
    edges["s3000"] = {"after": ["s0.service"]}
    problem = only_problem(_chain(edges))
    assert problem.message.count("->") == 3001


# -- alerts --------------------------------------------------------------------------


def with_alert(**alert: object) -> str:
    spec = base()
    spec["alert"]["ops"] = alert
    return dumps(spec)


@pytest.mark.parametrize("secret", ["url", "token", "password"])
def test_inline_secrets_refused(secret: str) -> None:
    found = problems_of(with_alert(type="webhook", url_file="/etc/u", **{secret: "hunter2"}))
    assert [p.key for p in found] == [f"alert.ops.{secret}"]
    assert found[0].message.startswith("secrets come from files or the environment: use")
    assert "hunter2" not in str(found[0])


def test_inline_url_refused_even_without_type() -> None:
    found = problems_of(with_alert(url="https://hooks.example/T0/B0/secret"))
    assert {p.key for p in found} == {"alert.ops.type", "alert.ops.url"}
    assert all("secret" not in p.message.replace("secrets", "") for p in found)


@pytest.mark.parametrize(
    ("alert", "key", "fragment"),
    [
        ({"type": "pigeon"}, "alert.ops.type", "expected one of webhook"),
        (
            {"type": "webhook"},
            "alert.ops",
            "exactly one of url_file or url_env or url_credential, got none",
        ),
        ({"type": "slack", "url_file": "/a", "url_env": "B"}, "alert.ops", "got url_file, url_env"),
        ({"type": "webhook", "url_file": "rel"}, "alert.ops.url_file", "absolute"),
        ({"type": "webhook", "url_env": "1X"}, "alert.ops.url_env", "variable name"),
        (
            {"type": "webhook", "url_env": "U", "smtp_host": "h"},
            "alert.ops.smtp_host",
            "unknown key",
        ),
        ({"type": "webhook", "url_env": "U", "labels": {}}, "alert.ops.labels", "unknown key"),
        (
            {"type": "webhook", "url_env": "U", "timeout": "2min"},
            "alert.ops.timeout",
            "at most 60s",
        ),
        ({"type": "webhook", "url_env": "U", "retries": 11}, "alert.ops.retries", "from 0 to 10"),
        (
            {"type": "webhook", "url_env": "U", "send_resolved": 1},
            "alert.ops.send_resolved",
            "true or false",
        ),
        (
            {"type": "alertmanager", "url_env": "U", "labels": {"unit": "x"}},
            "alert.ops.labels.unit",
            "reserved",
        ),
        (
            {"type": "alertmanager", "url_env": "U", "labels": {"__x": "x"}},
            "alert.ops.labels.__x",
            "label name",
        ),
        ({"type": "email", "smtp_host": "h", "to": ["a@b"]}, "alert.ops.from", "missing"),
        (
            {"type": "email", "smtp_host": "h", "from": "a@b", "to": []},
            "alert.ops.to",
            "at least 1",
        ),
        (
            {"type": "email", "smtp_host": "h", "from": "a", "to": ["a@b"]},
            "alert.ops.from",
            "e-mail",
        ),
        (
            {
                "type": "email",
                "smtp_host": "h",
                "from": "a@b",
                "to": ["a@b"],
                "username": "u",
                "password_env": "P",
            },
            "alert.ops.starttls",
            "must be true",
        ),
        (
            {
                "type": "email",
                "smtp_host": "h",
                "from": "a@b",
                "to": ["a@b"],
                "starttls": True,
                "password_env": "P",
            },
            "alert.ops.username",
            "without a username",
        ),
        (
            {
                "type": "email",
                "smtp_host": "h",
                "from": "a@b",
                "to": ["a@b"],
                "starttls": True,
                "username": "u",
            },
            "alert.ops.password_file",
            "username needs",
        ),
        (
            {
                "type": "email",
                "smtp_host": "h",
                "from": "a@b",
                "to": ["a@b"],
                "starttls": True,
                "username": "u",
                "password_env": "P",
                "password_file": "/p",
            },
            "alert.ops.password_env",
            "not both",
        ),
        (
            {"type": "email", "smtp_host": "h", "from": "a@b", "to": ["a@b"], "url_env": "U"},
            "alert.ops.url_env",
            "unknown key",
        ),
        ({"type": "command"}, "alert.ops.command", "missing"),
        ({"type": "command", "command": ["notify-send"]}, "alert.ops.command[0]", "absolute"),
    ],
)
def test_alert_problem(alert: dict[str, object], key: str, fragment: str) -> None:
    problem = only_problem(with_alert(**alert))
    assert problem.key == key
    assert fragment in problem.message


def test_alert_types_accept_their_keys() -> None:
    spec = base()
    spec["alert"] = {
        "w": {"type": "webhook", "url_env": "W", "timeout": "2s", "retries": 0},
        "s": {"type": "slack", "url_file": "/s", "send_resolved": False},
        "a": {"type": "alertmanager", "url_env": "A", "labels": {"team": "x"}},
        "e": {"type": "email", "smtp_host": "mx", "from": "a@b", "to": ["c@d"]},
        "c": {"type": "command", "command": ["/bin/true"], "timeout": 3},
    }
    loaded = parse_spec(dumps(spec), SRC)
    assert loaded.alerts["w"].config == {
        "name": "w",
        "type": "webhook",
        "url_env": "W",
        "timeout": 2.0,
        "retries": 0,
    }
    assert loaded.alerts["c"].config["timeout"] == 3.0
    assert loaded.alerts["a"].config["labels"] == {"team": "x"}


def test_unknown_alert_in_defaults_and_override() -> None:
    spec = base()
    spec["defaults"] = {"alerts": ["nope"]}
    spec["override"] = {"nginx.service": {"alerts": ["ops", "opps"]}}
    found = problems_of(dumps(spec))
    assert sorted(p.key for p in found) == [
        "defaults.alerts[0]",
        'override."nginx.service".alerts[1]',
    ]


def test_no_alerts_defined() -> None:
    spec = base()
    del spec["alert"]
    spec["service"]["api"]["alerts"] = ["ops"]
    problem = only_problem(dumps(spec))
    assert "defined [alert.NAME]: none" in problem.message


# -- all at once ---------------------------------------------------------------------


def test_every_problem_is_reported_at_once() -> None:
    text = """
[defaults]
hardening = "strikt"
alerts = ["opz"]

[alert.ops]
type = "slack"
url = "https://hooks.example/x"

[service.api]
exec = ["python3"]
descripton = "x"
user = "api"
dynamic_user = true
requires = ["b.service", "bad name"]
restart = { policy = "always", delay = "soon", burst = true }
limits = { memory_max = "1g", cpu_quota = "80" }
state_directory = ["../x"]
environment = { OK = "line\\nbreak" }

[service.b]
exec = ["/bin/b"]
after = ["c.service"]
restart = { delay = "10s", burst = 5, interval = "30s" }

[service.c]
exec = ["/bin/c"]
binds_to = ["b.service"]

[override."api.service"]
on_failure = 1
"""
    keys = sorted(p.key for p in problems_of(text))
    assert keys == sorted(
        [
            "defaults.hardening",
            "defaults.alerts[0]",
            "alert.ops.url",
            "alert.ops",
            "service.api.exec[0]",
            "service.api.descripton",
            "service.api.user",
            "service.api.requires[1]",
            "service.api.restart.delay",
            "service.api.restart.burst",
            "service.api.limits.memory_max",
            "service.api.limits.cpu_quota",
            "service.api.state_directory[0]",
            "service.api.environment.OK",
            "service.b.restart",
            "service.b.after[0]",
            'override."api.service".on_failure',
            'override."api.service"',
        ]
    )


def test_problems_are_one_line_each() -> None:
    text = with_service(description="a\nb", exec=["/bin/x\r"], environment={"K\u2028": "v"})
    found = problems_of(text)
    assert len(found) == 3
    for p in found:
        assert len(str(p).splitlines()) == 1


# -- whole-file problems -------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[service.api\nexec = []\n", "line 1, column 13"),
        ('[service.api]\nexec = ["/x"\n', "end of the file"),
        ('a = "x\n', "line 1"),
        ("[service.a]\n[service.a]\n", "line 2"),
        ("x = " + "[" * 5000, "nested too deeply"),
        ("x = " + "9" * 5000, "cannot be read: Exceeds the limit"),
    ],
)
def test_toml_syntax_error_is_one_problem(text: str, fragment: str) -> None:
    problem = only_problem(text)
    assert problem.key == ""
    assert "TOML" in problem.message
    assert fragment in problem.message


@pytest.mark.parametrize("text", ["", "  \n\n# only a comment\n".replace("# only a comment", "")])
def test_empty_text(text: str) -> None:
    assert "is empty" in only_problem(text).message


@pytest.mark.parametrize(
    "text",
    [
        "# nothing\n",
        '[defaults]\nhardening = "off"\n',
        "[service]\n",
        "[alert.x]\ntype='command'\ncommand=['/bin/true']\n",
    ],
)
def test_nothing_to_render(text: str) -> None:
    assert any("nothing to render" in p.message for p in problems_of(text))


@pytest.mark.parametrize(
    ("text", "key", "fragment"),
    [
        ('servce = {}\n[service.a]\nexec=["/a"]\n', "servce", "did you mean 'service'?"),
        ("service = 5\n", "service", "expected a table"),
        (
            '[service.a]\nexec=["/a"]\nrestart = 5\n',
            "service.a.restart",
            "expected a table, got the integer 5",
        ),
        (
            '[service.a]\nexec=["/a"]\ndescription = 1979-05-27\n',
            "service.a.description",
            "TOML date",
        ),
        (
            '[service.a]\nexec=["/a"]\nrecovery = { backoff = { factor = nan } }\n',
            "service.a.recovery.backoff.factor",
            "finite",
        ),
        ('[service.a]\nexec=["/a"]\ntimeout_stop = inf\n', "service.a.timeout_stop", "finite"),
        (
            '[service.a]\nexec=["/a"]\nlimits.nofile = 99999999999999999\n',
            "service.a.limits.nofile",
            "integer from 1",
        ),
    ],
)
def test_odd_toml_values(text: str, key: str, fragment: str) -> None:
    found = problems_of(text)
    assert any(p.key == key and fragment in p.message for p in found), found


def test_spec_error_defaults_deep_copy_safe() -> None:
    # parse_spec never mutates the caller's view of the example.
    spec = base()
    before = copy.deepcopy(spec)
    parse_spec(dumps(spec), SRC)
    assert spec == before


@pytest.mark.parametrize("key", ["url_file", "url_env"])
@pytest.mark.parametrize(
    "secret", ["https://hooks.slack.com/services/T0/B0/XyZsecret", "hunter2-XyZsecret"]
)
def test_a_secret_in_the_wrong_key_is_not_echoed(key: str, secret: str) -> None:
    problem = only_problem(with_alert(type="slack", **{key: secret}))
    assert problem.key == f"alert.ops.{key}"
    assert "XyZsecret" not in str(problem)
    assert "not shown" in problem.message


@pytest.mark.parametrize("key", ["password_file", "password_env"])
def test_a_password_in_the_wrong_key_is_not_echoed(key: str) -> None:
    alert = {"type": "email", "smtp_host": "h", "from": "a@b", "to": ["c@d"]}
    problem = only_problem(
        with_alert(**alert, starttls=True, username="u", **{key: "pa ss XyZsecret"})
    )
    assert problem.key == f"alert.ops.{key}"
    assert "XyZsecret" not in str(problem)


def test_recovery_unit_names_are_reserved() -> None:
    spec = base()
    spec["service"]["unitgen-recover@"] = {"exec": ["/bin/x"]}
    spec["override"] = {"unitgen-recover@x.service": {"on_failure": False}}
    found = problems_of(dumps(spec))
    assert sorted(p.key for p in found) == [
        'override."unitgen-recover@x.service"',
        'service."unitgen-recover@"',
    ]
    assert all("recovery" in p.message for p in found)


@pytest.mark.parametrize(
    ("key", "directive"),
    [("exec", "ExecStart="), ("user", "User="), ("description", "Description=")],
)
def test_override_refuses_service_only_keys(key: str, directive: str) -> None:
    spec = base()
    spec["override"] = {"nginx.service": {key: spec["service"]["api"]["exec"]}}
    problem = only_problem(dumps(spec))
    assert problem.key == f'override."nginx.service".{key}'
    assert "only for [service.NAME]" in problem.message
    assert directive in problem.message


def _has_cycle(edges: dict[str, set[str]]) -> bool:
    state: dict[str, int] = {}

    def visit(node: str) -> bool:
        state[node] = 1
        for child in edges[node]:
            if state.get(child) == 1 or (child not in state and visit(child)):
                return True
        state[node] = 2
        return False

    return any(node not in state and visit(node) for node in edges)


def _looping_groups(edges: dict[str, set[str]]) -> int:
    """How many groups of services loop together (brute force: mutual reachability)."""

    def reach(start: str) -> set[str]:
        seen: set[str] = set()
        todo = list(edges[start])
        while todo:
            node = todo.pop()
            if node not in seen:
                seen.add(node)
                todo.extend(edges[node])
        return seen

    reachable = {node: reach(node) for node in edges}
    groups = {
        frozenset(m for m in edges if m in reachable[n] and n in reachable[m])
        for n in edges
        if n in reachable[n]
    }
    return len(groups)


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 6).flatmap(
        lambda n: st.lists(
            st.tuples(st.integers(0, n - 1), st.integers(0, n - 1), st.sampled_from(_EDGE_KINDS)),
            max_size=10,
        ).map(lambda e: (n, e))
    )
)
def test_cycles_match_a_reference(graph: tuple[int, list[tuple[int, int, str]]]) -> None:
    n, raw_edges = graph
    names = [f"s{i}" for i in range(n)]
    deps: dict[str, dict[str, list[str]]] = {name: {} for name in names}
    edges: dict[str, set[str]] = {name: set() for name in names}
    for a, b, kind in raw_edges:
        lst = deps[names[a]].setdefault(kind, [])
        if f"s{b}.service" not in lst:
            lst.append(f"s{b}.service")
        if kind == "wants":
            continue  # no ordering, never a cycle
        # "a before b" means b waits for a.
        src, dst = (names[b], names[a]) if kind == "before" else (names[a], names[b])
        edges[src].add(dst)
    try:
        parse_spec(_chain(deps), SRC)
        found: list[SpecProblem] = []
    except SpecError as exc:
        found = list(exc.problems)
    assert all("dependency cycle" in p.message for p in found)
    assert bool(found) == _has_cycle(edges)
    assert len(found) == _looping_groups(edges)
    for problem in found:
        loop = problem.message.split(": ", 1)[1].split(" (")[0].split(" -> ")
        assert loop[0] == loop[-1]
        for a, b in itertools.pairwise(loop):
            assert b.removesuffix(".service") in edges[a.removesuffix(".service")]
