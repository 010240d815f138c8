"""probe_units: the engine behind `unitgen check --probe` names the directives to blame."""

from __future__ import annotations

import os
import threading
import time
import uuid
from pathlib import Path

import pytest
import sandboxlib

from unitgen.paths import Scope
from unitgen.sandbox import Sandbox, probe, probe_units
from unitgen.sandbox.hardening_probe import ProbeManager, settle

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


def _open_writer(fifo: Path) -> bool:
    """Open and close the FIFO's write end if a reader waits on it (releases that reader)."""
    try:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:  # ENXIO: nobody has it open for reading yet
        return False
    return True


def test_an_exec_that_fails_after_the_fork_is_not_taken_as_started(
    user_sandbox: Sandbox, tmp_path: Path
) -> None:
    """A Type=simple unit is "active" from fork() until its exec fails; that is no start.

    Its stdin is a FIFO, so the forked main process blocks in open(), before the
    exec of a binary that does not exist. The FIFO is released only once the
    manager shows the unit forked *and still activating*, as it does while the
    probe waits for the exec. Judged at fork() (Type=simple, what the probe did
    before), the unit would be "active" for as long as the FIFO stays closed.
    """
    sb = user_sandbox
    fifo = tmp_path / "stdin"
    os.mkfifo(fifo)
    name = f"ug-late-exec-{uuid.uuid4().hex[:8]}.service"
    text = f"[Service]\nStandardInput=file:{fifo}\nExecStart=/nonexistent/ug-binary\n"
    mgr = ProbeManager(sb)
    mgr.install(name, text)
    mgr.ctl("daemon-reload")
    assert mgr.starts_at_fork(name)  # the unit as written is Type=simple
    mgr.install_exec_dropin(name)
    mgr.ctl("daemon-reload")
    done = threading.Event()

    def release() -> None:
        deadline = time.monotonic() + 60
        while not done.wait(0.01) and time.monotonic() < deadline:
            props = sb.show(name, "ActiveState", "MainPID")
            forked = props.get("MainPID", "0") != "0"
            if props.get("ActiveState") == "activating" and forked and _open_writer(fifo):
                return
        _open_writer(fifo)  # whatever happened, let a blocked child go

    releaser = threading.Thread(target=release)
    releaser.start()
    try:
        outcome = settle(mgr, [name], timeout=60)
    finally:
        done.set()
        releaser.join(70)
        sb.systemctl("stop", name)
    assert outcome == {name: (False, "203")}  # 203 = EXEC
