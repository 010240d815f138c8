"""``unitgen import UNIT_FILE...``: existing unit files as spec entries (unitgen/importunits.py)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HELP = "turn existing unit files (and their drop-ins) into spec entries"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Print a [service.NAME] spec entry for each unit file, with its drop-ins "
        "(NAME.service.d/*.conf beside it, in /run/systemd/system and /etc/systemd/system). "
        "Every line the spec cannot carry is listed in a comment (and under "
        "'unrepresented' with --json); see docs/spec.md."
    )
    parser.add_argument("files", nargs="+", type=Path, metavar="UNIT_FILE")


def run(args: argparse.Namespace) -> int:
    from unitgen.importunits import import_units, to_toml

    units = import_units(args.files)
    if args.json:
        print(json.dumps({"units": [u.as_json() for u in units], "spec": to_toml(units)}, indent=2))
        return 0
    for u in units:
        if u.unrepresented:
            print(
                f"unitgen: {u.unit}: {len(u.unrepresented)} line(s) not carried as is "
                "(listed in the entry's comments)",
                file=sys.stderr,
            )
    print(to_toml(units), end="")
    return 0
