"""docs/spec.md documents exactly the keys the validator knows."""

from __future__ import annotations

from pathlib import Path

from unitgen.specdoc import BEGIN, END, reference_markdown
from unitgen.speckeys import SERVICE, SPEC
from unitgen.specnodes import MapOf, Table

DOC = Path(__file__).resolve().parent.parent / "docs" / "spec.md"


def test_generated_reference_is_up_to_date() -> None:
    text = DOC.read_text()
    start, end = text.index(BEGIN), text.index(END) + len(END) + 1
    assert text[start:end] == reference_markdown(), "run: python -m unitgen.specdoc"


def test_every_service_key_has_a_row_with_its_directive() -> None:
    reference = reference_markdown()
    section = reference.split("### `[service.NAME]`", 1)[1].split("### ", 1)[0]
    for name, field in SERVICE.fields.items():
        row = next(line for line in section.splitlines() if line.startswith(f"| `{name}` |"))
        if field.directive:
            assert f"`{field.directive}`" in row


def test_every_section_is_documented() -> None:
    reference = reference_markdown()
    for name, field in SPEC.fields.items():
        node = field.node
        title = f"[{name}.{node.key_doc}]" if isinstance(node, MapOf) else f"[{name}]"
        assert f"### `{title}" in reference
    for name, field in SERVICE.fields.items():
        if isinstance(field.node, Table):
            assert f"### `[service.NAME].{name}`" in reference


def test_performance_figure_has_its_command() -> None:
    text = DOC.read_text()
    assert "bench/bench_spec.py" in text
    assert "1000 services, " in text and "load_spec: wall best" in text
