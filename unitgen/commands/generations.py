"""``unitgen generations``: the generations ``unitgen apply`` kept, newest last."""

from __future__ import annotations

import argparse
import json
import time

HELP = "list the generations unitgen apply kept"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from unitgen.commands.apply import add_target_arguments

    parser.add_argument(
        "--user", action="store_true", help="the user manager's generations (default: system)"
    )
    add_target_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from unitgen.commands.apply import store_for

    store = store_for(args)
    current = store.current()
    rows = []
    for number in store.numbers():
        gen = store.get(number)
        rows.append(
            {
                "generation": number,
                "current": current is not None and current.number == number,
                "status": gen.meta.get("status", "?"),
                "created": gen.meta.get("created"),
                "spec": gen.meta.get("spec"),
                "spec_sha256": gen.meta.get("spec_sha256"),
                "failed_unit": gen.meta.get("failed_unit"),
            }
        )
    if args.json:
        print(json.dumps({"root": str(store.root), "generations": rows}))
        return 0
    if not rows:
        print(f"no generations in {store.root}")
        return 0
    for row in rows:
        created = row["created"]
        when = (
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(created))
            if isinstance(created, int | float)
            else "?"
        )
        mark = "*" if row["current"] else " "
        extra = f" ({row['failed_unit']})" if row["failed_unit"] else ""
        print(f"{mark} {row['generation']:>4}  {when}  {row['status']}{extra}  {row['spec']}")
    return 0
