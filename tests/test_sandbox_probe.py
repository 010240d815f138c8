"""probe_units: the engine behind `unitgen check --probe` names the directives to blame."""

from __future__ import annotations

import pytest
import sandboxlib

from unitgen.paths import Scope
from unitgen.sandbox import probe, probe_units

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(autouse=True)
def _need_sandbox() -> None:
    reason = probe(Scope.USER)
    if reason:
        sandboxlib.unavailable(reason)


def test_probe_names_the_directive_that_breaks_an_unprivileged_unit() -> None:
    units = {
        "ug-ok.service": "[Service]\nNoNewPrivileges=yes\nExecStart=/bin/sleep 600\n",
        "ug-devices.service": "[Service]\nNoNewPrivileges=yes\nPrivateDevices=yes\n"
        "ProtectSystem=strict\nExecStart=/bin/sleep 600\n",
    }
    results = {r.unit: r for r in probe_units(units, unprivileged=True)}
    assert results["ug-ok.service"].started and results["ug-ok.service"].culprits == ()
    bad = results["ug-devices.service"]
    assert not bad.started
    assert bad.status == "218"  # the bounding-set drop needs CAP_SETPCAP
    assert bad.culprits == ("PrivateDevices=yes",)


def test_probe_reports_no_culprit_when_hardening_is_not_the_cause() -> None:
    units = {"ug-missing.service": "[Service]\nNoNewPrivileges=yes\nExecStart=/nonexistent\n"}
    (result,) = probe_units(units)
    assert not result.started
    assert result.status == "203"  # EXEC: no directive removal can fix that
    assert result.culprits == ()


def test_root_user_manager_starts_what_unprivileged_cannot() -> None:
    text = "[Service]\nPrivateDevices=yes\nProtectKernelModules=yes\nExecStart=/bin/sleep 600\n"
    (result,) = probe_units({"ug-root.service": text})
    assert result.started


def test_unitgen_check_probe_starts_the_demo_units() -> None:
    import json
    import subprocess
    import sys
    from pathlib import Path

    spec = Path(__file__).resolve().parent.parent / "examples" / "demo.toml"
    res = subprocess.run(
        [sys.executable, "-m", "unitgen", "check", "--json", "--probe", "--user", str(spec)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    units = {u["unit"]: u for u in json.loads(res.stdout)["units"]}
    for name in ("demo-web.service", "demo-cache.service"):
        assert "probe: started under a user manager" in units[name]["notes"]
    assert not any(n.startswith("probe:") for n in units["unitgen-recover@.service"]["notes"])
