"""The key reference in docs/spec.md, generated from the validator's key table.

``python -m unitgen.specdoc`` prints it; a test holds docs/spec.md to it, so the
documentation lists exactly the keys the validator accepts, with their types,
defaults and systemd directives.
"""

from __future__ import annotations

import json

from unitgen.speckeys import SPEC
from unitgen.specnodes import ByType, Computed, Field, ListOf, MapOf, Node, Table, Tagged

__all__ = ["BEGIN", "END", "reference_markdown"]

BEGIN = "<!-- BEGIN GENERATED KEY REFERENCE: python -m unitgen.specdoc -->"
END = "<!-- END GENERATED KEY REFERENCE -->"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _default(value: object) -> str:
    if value is None:
        return "—"
    if isinstance(value, Computed):
        return value.doc
    return f"`{json.dumps(value)}`"


def _type(node: Node) -> str:
    if isinstance(node, Table):
        return "table"
    if isinstance(node, ListOf) and isinstance(node.item, Table):
        return "array of tables"
    return node.type_doc


def _tables_under(node: Node) -> list[tuple[str, Table]]:
    """The tables a field's value may be (suffix for the section title, table)."""
    if isinstance(node, Table):
        return [("", node)]
    if isinstance(node, ListOf) and isinstance(node.item, Table):
        return [("[]", node.item)]
    if isinstance(node, ByType):
        return [("", node.table)]
    if isinstance(node, MapOf):
        return [(f".{node.key_doc}", t) for _, t in _tables_under(node.value)]
    return []


def reference_markdown() -> str:
    lines: list[str] = [BEGIN, ""]
    seen: dict[int, str] = {}

    def section(title: str, table: Table, note: str = "") -> None:
        if id(table) in seen:
            lines.extend([f"### `{title}`", "", f"Same keys as `{seen[id(table)]}`.", ""])
            return
        seen[id(table)] = title
        lines.extend([f"### `{title}`", ""])
        if table.doc:
            lines.extend([table.doc + (" " + note if note else ""), ""])
        lines.append("| key | type | default | systemd | meaning |")
        lines.append("|---|---|---|---|---|")
        for name, spec_field in table.fields.items():
            lines.append(_row(name, spec_field))
        rules = [f"exactly one of {', '.join(g)}" for g in table.one_of]
        rules += [f"at most one of {', '.join(g)}" for g in table.at_most_one]
        if table.refused:
            names = ", ".join(f"`{k}`" for k in table.refused)
            rules.append(f"refused, with a message saying what to use instead: {names}")
        if rules:
            lines.extend(["", "Rules: " + "; ".join(rules) + "."])
        lines.append("")
        for name, spec_field in table.fields.items():
            for suffix, sub in _tables_under(spec_field.node):
                section(f"{title}.{name}{suffix}", sub)

    for name, spec_field in SPEC.fields.items():
        node = spec_field.node
        if isinstance(node, MapOf) and isinstance(node.value, Tagged):
            tagged = node.value
            for tag, variant in tagged.variants.items():
                section(f'[{name}.{node.key_doc}] type = "{tag}"', variant)
            continue
        key = f"{name}.{node.key_doc}" if isinstance(node, MapOf) else name
        for _, table in _tables_under(node.value if isinstance(node, MapOf) else node):
            section(f"[{key}]", table)
    lines.append(END)
    return "\n".join(lines) + "\n"


def _row(name: str, spec_field: Field) -> str:
    meaning = spec_field.doc + (" (required)" if spec_field.required else "")
    directive = f"`{spec_field.directive}`" if spec_field.directive else ""
    cells = [f"`{name}`", _type(spec_field.node), _default(spec_field.default), directive, meaning]
    return "| " + " | ".join(_cell(c) for c in cells) + " |"


if __name__ == "__main__":
    print(reference_markdown(), end="")
