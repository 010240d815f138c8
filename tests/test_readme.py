"""The README's spec example is a real spec: it loads and renders."""

from __future__ import annotations

import re
from pathlib import Path

from unitgen.render import RenderOptions, render
from unitgen.specfile import parse_spec

REPO = Path(__file__).resolve().parent.parent


def test_readme_spec_example_loads_and_renders() -> None:
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"```toml\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 1
    spec = parse_spec(blocks[0], "README.md")
    assert set(spec.services) == {"api"}
    assert set(spec.overrides) == {"nginx.service"}
    files = render(spec, RenderOptions(systemd_version=252))
    assert "api.service" in files
    assert "nginx.service.d/70-unitgen.conf" in files
    assert "OnFailure=unitgen-recover@%n.service" in files["api.service"]
