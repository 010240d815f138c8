"""bench/bench_correlation.py: the generated-units spec and the journal count (nothing is run)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from unitgen.paths import Scope
from unitgen.render import RenderOptions, render
from unitgen.specfile import parse_spec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import bench_correlation as bc

FIFO = Path("/var/lib/unitgen-corr-x/gdb.fifo")


def _rendered() -> dict[str, str]:
    spec = parse_spec(bc.generated_spec(FIFO), "generated.toml")
    return render(spec, RenderOptions(systemd_version=252, scope=Scope.USER))


def test_the_generated_spec_renders_the_scenario_as_an_operator_gets_it() -> None:
    units = _rendered()
    db, app = units[bc.GEN_DB], units[f"{bc.GEN_APP}.service"]
    assert "unitgen-recover@.service" in units
    assert f"Requires={bc.GEN_DB}" in app
    assert f"After={bc.GEN_DB}" in app
    for text in (db, app):
        # The path the bench exists to measure: systemd's Restart= first, the
        # ladder through OnFailure= when systemd gives up, the default hardening.
        assert "Restart=on-failure" in text
        assert "StartLimitBurst=" in text
        assert "OnFailure=unitgen-recover@%n.service" in text
        assert "# hardening profile: strict" in text
        assert str(FIFO) in text


def test_scheduled_restarts_counts_systemds_own_restarts_by_unit() -> None:
    def line(unit: str, message: str, field: str = "USER_UNIT") -> str:
        return json.dumps({field: unit, "MESSAGE": f"{unit}: {message}"})

    journal = "\n".join(
        [
            line("gdb.service", "Scheduled restart job, restart counter is at 1."),
            line("gapp@1.service", "Scheduled restart job, restart counter is at 1."),
            line("gapp@1.service", "Scheduled restart job, restart counter is at 2."),
            line("gapp@2.service", "Scheduled restart job, restart counter is at 1.", "UNIT"),
            line("gapp@3.service", "Failed with result 'exit-code'."),
            json.dumps({"MESSAGE": "Scheduled restart job, but no unit field"}),
            # journald sends a message that is not valid UTF-8 as a byte array.
            json.dumps({"USER_UNIT": "gapp@4.service", "MESSAGE": [83, 99]}),
            "",
        ]
    )
    assert bc.scheduled_restarts(journal) == {
        "gdb.service": 1,
        "gapp@1.service": 2,
        "gapp@2.service": 1,
    }


def test_n_restarts_reads_systemctl_show_blocks() -> None:
    show = "NRestarts=2\nId=gapp@0.service\n\nId=gdb.service\nNRestarts=1\n\nId=x.service\n"
    assert bc.n_restarts(show) == {"gapp@0.service": 2, "gdb.service": 1}
