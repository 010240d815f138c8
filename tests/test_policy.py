"""The policy file is the contract between the generator and the handler."""

from __future__ import annotations

from pathlib import Path

import pytest

from unitgen.errors import PolicyError
from unitgen.model import Disk, Health, Probe, Recovery, Threshold
from unitgen.policy import Policy, from_json, load_policy, to_json


def test_round_trip_keeps_every_field() -> None:
    policy = Policy(
        unit="api.service",
        health=Health(Probe("http", "http://127.0.0.1:8080/"), interval=3.0),
        depends=(Probe("command", ("/bin/true",)), Probe("tcp", "[::1]:6379")),
        validate=("/usr/sbin/nginx", "-t"),
        alerts=({"name": "ops", "type": "webhook", "url_env": "OPS_URL"},),
        disk=Disk(paths=("/var/lib/api",), min_free=Threshold(percent=10.0, bytes=1 << 20)),
        directories=("/var/lib/api",),
    )
    assert from_json(to_json(policy), "p.json") == policy


def test_instance_falls_back_to_template_and_keeps_its_name(tmp_path: Path) -> None:
    template = Policy(unit="worker@.service", recovery=Recovery(max_attempts=2))
    (tmp_path / "worker@.service.json").write_text(to_json(template))
    got = load_policy("worker@7.service", tmp_path)
    assert got.unit == "worker@7.service"
    assert got.recovery.max_attempts == 2
    assert not got.default


def test_missing_policy_is_the_flagged_default(tmp_path: Path) -> None:
    got = load_policy("other.service", tmp_path)
    assert got.default
    assert got.recovery == Recovery()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{", "not valid JSON"),
        ("[]", "expected a JSON object"),
        ('{"version": 9, "unit": "a"}', "version 9 unknown"),
        ('{"version": 1, "unit": "a", "bogus": 1}', "unknown key bogus"),
        ('{"version": 1, "unit": "a", "recovery": {"max_attempts": "5"}}', "recovery.max_attempts"),
        ('{"version": 1, "unit": "a", "restart": {"policy": "sometimes"}}', "restart.policy"),
        ('{"version": 1, "unit": "a", "recovery": {"window": true}}', "recovery.window"),
    ],
)
def test_bad_policy_files_name_the_key(text: str, expected: str) -> None:
    with pytest.raises(PolicyError, match=expected) as info:
        from_json(text, "/etc/unitgen/policy.d/a.json")
    assert str(info.value).startswith("/etc/unitgen/policy.d/a.json: ")
    assert "\n" not in str(info.value)
