"""Which side may load which: the generator never loads the recovery engine.

Checked in a fresh interpreter, since this test process has imported everything.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "example.toml"

RENDER_AND_LIST = """
import json, sys
from unitgen.render import RenderOptions, render, render_policies
from unitgen.specfile import load_spec

spec = load_spec(sys.argv[1])
options = RenderOptions(systemd_version=252, unitgen_bin="/usr/bin/unitgen")
assert render(spec, options) and render_policies(spec, options)
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("handlers", "dbus_next"))))
"""


def test_rendering_a_spec_does_not_load_the_recovery_engine() -> None:
    done = subprocess.run(
        [sys.executable, "-c", RENDER_AND_LIST, str(EXAMPLE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    loaded = json.loads(done.stdout)
    # handlers.ladder is pure (the engine's constants and state machine); nothing else.
    assert set(loaded) <= {"handlers", "handlers.ladder"}, loaded


def test_loading_the_listener_does_not_load_the_recovery_engine() -> None:
    # `unitgen watch` makes its engine through a factory; the listener's own modules
    # (parking, the engine's protocol) must not pull it in on import.
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import json, sys, handlers.listener; print(json.dumps(sorted(sys.modules)))",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    loaded = json.loads(done.stdout)
    assert "handlers.listener" in loaded
    assert not [m for m in loaded if m.startswith("handlers.recovery")], loaded
