"""``unitgen schema``: print the JSON Schema of the spec."""

from __future__ import annotations

import argparse
import sys

HELP = "print the JSON Schema of the spec"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "The schema is JSON either way, so --json changes nothing. Point an editor's "
        "TOML language server at it; `unitgen check` remains the authority."
    )


def run(args: argparse.Namespace) -> int:
    from unitgen.schema import schema_json

    sys.stdout.write(schema_json())
    return 0
