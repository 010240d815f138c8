"""``unitgen status [UNIT]``: each unit's recovery state, from the history database."""

from __future__ import annotations

import argparse

HELP = "show recovery state of units"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from unitgen.commands.recover import add_scope_argument

    parser.add_argument("unit", nargs="?", help="one unit (default: every unit with history)")
    add_scope_argument(parser)


def _fmt(value: object, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}{unit}"
    return f"{value}{unit}"


def run(args: argparse.Namespace) -> int:
    import json

    from unitgen.commands.recover import offline_engine, setup_logging

    setup_logging()
    engine = offline_engine(args)
    try:
        rows = engine.status(args.unit)
    finally:
        engine.store.close()
    if args.json:
        print(json.dumps(rows, sort_keys=True))
        return 0
    if not rows:
        print("no incidents recorded")
        return 0
    degraded = _degraded(rows[0])
    print(f"{'UNIT':32} {'STATE':28} {'ATTEMPTS':>9} {'MTTR':>8} {'SUCCESS':>8}  LAST REASON")
    notes: list[str] = []
    for r in rows:
        rate = r["success_rate"]
        success = f"{100 * rate:.0f}%" if isinstance(rate, float) else "-"
        attempts = f"{r['attempts_in_window']}/{r['max_attempts']}"
        print(
            f"{r['unit']!s:32} {r['state']!s:28} {attempts:>9} {_fmt(r['mttr'], 's'):>8} "
            f"{success:>8}  {r['last_failure_reason'] or '-'}"
            + (f" [{r['group']}]" if r.get("group") else "")
        )
        if r["default_policy"]:
            notes.append(f"{r['unit']} has no recovery policy; shown with the default policy")
        extra = r["notes"]
        if isinstance(extra, list):
            notes.extend(str(n) for n in extra)
    if degraded:
        # Before the notes: it says how far the numbers above can be trusted.
        print(degraded)
    for note in dict.fromkeys(notes):
        print(f"note: {note}")
    return 0


def _degraded(row: dict[str, object]) -> str:
    """The history-gap line: since when the database is not written, and why."""
    import time

    since = row.get("history_degraded_since")
    if not isinstance(since, float | int):
        return ""
    when = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(since))
    return (
        f"history degraded since {when}: {row.get('history_degraded_reason') or 'unknown'}; "
        "attempts and give-ups are counted in the run directory's ledger"
    )
