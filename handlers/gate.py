"""``python -m handlers.gate POLICY UNIT``: wait until a starting unit is healthy.

A service with ``health.gate = true`` gets this as its ``ExecStartPost=``, so
systemd calls the unit started only once its start-up probe passes, and a
dependent's ``After=`` orders on health rather than on a forked process. It
runs the probe of :mod:`handlers.probes` (the one the listener and the ladder
run) every ``start_interval`` until ``successes`` consecutive passes, for at
most ``start_period``.

While it waits it sends ``EXTEND_TIMEOUT_USEC`` over ``$NOTIFY_SOCKET``: each
message gives systemd's start timeout one more round (a probe's timeout plus
the interval, plus slack), so a slow start is not killed by
``TimeoutStartSec=``, while a gate that hangs still is. systemd accepts the
message from an ``ExecStartPost=`` process only with ``NotifyAccess=exec`` or
``all``, which the generator renders alongside.

Exit status: 0 healthy; 1 not healthy within ``start_period`` (the start then
fails, and ``Restart=`` and the ladder take it from there); 2 bad input (no
policy, no health section), with one line on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from handlers.notify import Notifier
from handlers.probes import ProbeResult, ProbeSpec, probe
from unitgen.errors import PolicyError
from unitgen.model import Health
from unitgen.policy import from_json

__all__ = ["GateResult", "main", "wait_healthy"]

EXTEND_SLACK = 5.0  # seconds beyond one probe round, for a loaded machine


@dataclass(frozen=True)
class GateResult:
    ok: bool
    detail: str
    probes: int
    waited: float


async def wait_healthy(
    health: Health,
    *,
    notifier: Notifier | None = None,
    say: Callable[[str], None] = lambda line: None,
    run: Callable[[ProbeSpec], Awaitable[ProbeResult]] = probe,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
) -> GateResult:
    """Probe until ``successes`` consecutive passes or ``start_period`` has gone by."""
    spec = ProbeSpec.from_model(health.start_probe, where="health.startup")
    start = clock()
    deadline = start + health.start_period
    extend_usec = int((health.start_interval + spec.timeout + EXTEND_SLACK) * 1_000_000)
    passes = probes = 0
    last = ""
    while True:
        if notifier is not None:
            notifier.notify(f"EXTEND_TIMEOUT_USEC={extend_usec}")
        result = await run(spec)
        probes += 1
        if result.ok:
            passes += 1
            if passes >= health.successes:
                return GateResult(True, result.detail, probes, clock() - start)
        else:
            passes = 0
            if result.detail != last:
                say(f"waiting for health: {result.detail}")
                last = result.detail
        now = clock()
        if now >= deadline:
            detail = f"not healthy within start_period {health.start_period:g}s: {result.detail}"
            return GateResult(False, detail, probes, now - start)
        await sleep(min(health.start_interval, deadline - now))


def _load(policy: Path) -> Health:
    try:
        text = policy.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError(f"{policy}: cannot read policy ({exc.strerror})") from exc
    health = from_json(text, str(policy)).health
    if health is None:
        raise PolicyError(f"{policy}: health: expected a health section for the gate")
    return health


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m handlers.gate", description="wait until a starting unit is healthy"
    )
    parser.add_argument("policy", type=Path, help="the unit's recovery policy (JSON)")
    parser.add_argument("unit", help="the unit's name, for messages")
    args = parser.parse_args(argv)
    unit: str = args.unit

    def say(line: str) -> None:
        print(f"{unit}: {line}", file=sys.stderr, flush=True)

    try:
        health = _load(args.policy)
        ProbeSpec.from_model(health.start_probe, where="health.startup")
    except PolicyError as exc:
        print(f"unitgen gate: {exc}", file=sys.stderr)
        return 2
    notifier = Notifier()
    try:
        result = asyncio.run(wait_healthy(health, notifier=notifier, say=say))
    finally:
        notifier.close()
    if result.ok:
        say(f"healthy after {result.waited:.1f}s ({result.probes} probes): {result.detail}")
        return 0
    say(result.detail)
    return 1


if __name__ == "__main__":
    sys.exit(main())
