"""The JSON Schema (draft 2020-12) of the spec, for editors and other tools.

It is generated from the same key table the validator runs
(``unitgen.speckeys.SPEC``), so a key cannot be valid in one and unknown in
the other. The schema is a guide, not the authority: rules that need the whole
file (alert references, dependency cycles, the start-limit arithmetic) and
the exact duration and size grammar are checked only by ``unitgen check``.
"""

from __future__ import annotations

import json
from typing import Any

from unitgen import __version__
from unitgen.speckeys import SPEC

__all__ = ["SCHEMA_ID", "build_schema", "schema_json"]

SCHEMA_ID = "https://unitgen.invalid/schema/spec.json"


def build_schema() -> dict[str, Any]:
    """The spec's JSON Schema as a plain dict."""
    body = SPEC.schema()
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": f"unitgen spec (unitgen {__version__})",
        **body,
    }


def schema_json() -> str:
    return json.dumps(build_schema(), indent=2, ensure_ascii=False) + "\n"
