"""``unitgen history UNIT``: the incidents of one unit, each with every recorded step."""

from __future__ import annotations

import argparse

HELP = "show the incident history of a unit"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from unitgen.commands.recover import add_scope_argument

    parser.add_argument("unit", help="the unit")
    add_scope_argument(parser)
    parser.add_argument("--limit", type=int, default=20, metavar="N", help="newest N incidents")


def _when(ts: object) -> str:
    import datetime

    if not isinstance(ts, float | int):
        return "-"
    return (
        datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4]
        + "Z"
    )


def run(args: argparse.Namespace) -> int:
    import json

    from handlers.locks import check_unit_name
    from unitgen.commands.recover import offline_engine, setup_logging
    from unitgen.errors import UsageError

    check_unit_name(args.unit)
    if args.limit < 1:
        raise UsageError(f"--limit {args.limit}: expected a positive number")
    setup_logging()
    engine = offline_engine(args)
    try:
        incidents = engine.history(args.unit, args.limit)
        note = engine.store.note
    finally:
        engine.store.close()
    if args.json:
        print(json.dumps(incidents, sort_keys=True))
        return 0
    if not incidents:
        print(f"{args.unit}: no incidents recorded")
    for inc in incidents:
        print(
            f"{inc['incident_id']}  {_when(inc['opened'])}  {inc['state']:<10} "
            f"{inc['classification']:<16} level {inc['level']}  {inc['reason']}"
        )
        if inc.get("group"):
            print(f"    part of incident {inc['group']}")
        for a in inc["attempts"]:  # type: ignore[attr-defined]
            print(
                f"    {_when(a['time'])}  {a['action']:<16} {a['result']:<18} "
                f"{a['duration']:>8.3f}s  {a['reason']}"
            )
    if note:
        print(f"note: {note}")
    return 0
