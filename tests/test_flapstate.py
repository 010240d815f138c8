"""The flapping alert's state across a restart of the watch (handlers/flapstate.py).

A "restart" here is what the daemon does: the first FlapWatch is closed (its window
timers cancelled, as a stopping or killed daemon loses them) and a new one is built
on the same state file. The clock is a number and each window's end is set by the
test (tests/test_flapping.py); the real daemon restarted under systemd is
tests/test_flapstate_sandbox.py.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from receivers import Receiver
from sandboxlib import unavailable
from test_flapping import UNIT, Windows, crash, receiver, settle

from handlers.alerts import Alerter, AlertTarget
from handlers.flapping import DIGEST_MAX, FlapWatch
from handlers.flapstate import FILE_NAME, FlapFile, FlapRecord
from unitgen.model import AlertOn
from unitgen.policy import Policy

__all__ = ["receiver"]  # the fixture, shared with tests/test_flapping.py

REPO = Path(__file__).resolve().parents[1]
THREE_IN_A_MINUTE = AlertOn(3, 60.0)


def watch(
    receiver: Receiver,
    now: list[float],
    windows: Windows,
    state: Path,
    alert_on: AlertOn | None = THREE_IN_A_MINUTE,
) -> FlapWatch:
    target = AlertTarget.from_mapping(
        {"name": "ops", "type": "webhook", "url_env": "HOOK", "retries": 0}
    )
    policy = Policy(unit=UNIT, alert_on=alert_on)
    return FlapWatch(
        lambda unit: policy,
        alerter_for=lambda p: Alerter([target], env={"HOOK": receiver.url()}),
        clock=lambda: now[0],
        sleep=windows.sleep,
        host="node1",
        state=FlapFile(state),
    )


async def fired_then_gone(receiver: Receiver, now: list[float], state: Path) -> None:
    """Three crashes at 0, 1 and 2 s fire the alert; then the watch goes, as a daemon does."""
    first = watch(receiver, now, Windows(), state)
    for at in (0.0, 1.0, 2.0):
        first.crashed(UNIT, crash(at))
    await settle(first)
    await first.aclose()


def bodies(receiver: Receiver, n: int) -> list[dict[str, Any]]:
    return [json.loads(r.body) for r in receiver.wait_for(n)]


def test_records_round_trip_and_old_crashes_are_left_out(tmp_path: Path) -> None:
    state = FlapFile(tmp_path / "state")
    records = {
        UNIT: FlapRecord((crash(1000.0), crash(1001.0, status=1, n=1)), "flap-x-1", 1000.0, 1001.5),
        "db.service": FlapRecord(tuple(crash(float(t)) for t in range(DIGEST_MAX + 5))),
        "quiet.service": FlapRecord(),  # nothing to remember: not written
    }
    assert state.save(records)
    assert state.problem is None
    assert (tmp_path / "state" / FILE_NAME).stat().st_mode & 0o777 == 0o600
    loaded = state.load(now=1100.0)
    assert loaded[UNIT] == records[UNIT]
    assert [c.at for c in loaded["db.service"].crashes] == [float(t) for t in range(5, 55)]
    assert set(loaded) == {UNIT, "db.service"}
    # A day later the crashes can count in no window; the firing alert is still there.
    later = state.load(now=1001.0 + 86401.0)
    assert later[UNIT].crashes == () and later[UNIT].incident == "flap-x-1"
    assert "db.service" not in later


@pytest.mark.asyncio
async def test_a_firing_alert_is_resolved_by_the_next_watch(
    receiver: Receiver, tmp_path: Path
) -> None:
    now, windows = [1000.0], Windows()
    first = watch(receiver, now, windows, tmp_path)
    for at in (1000.0, 1001.0, 1002.0):
        now[0] = at
        first.crashed(UNIT, crash(at))
    await settle(first)
    (firing,) = bodies(receiver, 1)
    assert firing["status"] == "firing"
    await first.aclose()  # the daemon goes away with the window timer

    now[0] = 1030.0
    windows = Windows()
    second = watch(receiver, now, windows, tmp_path)
    try:
        second.resume()
        await settle(second)
        # Judged a window after the alert was sent, not a whole window after the restart.
        assert windows.asked == [32.0]
        assert len(receiver.requests) == 1
        now[0] = 1062.0
        windows.ends.put_nowait(None)
        await settle(second)
        resolved = bodies(receiver, 2)[1]
        assert resolved["status"] == "resolved"
        assert resolved["incident_id"] == firing["incident_id"]
        assert resolved["started_at"] == firing["started_at"]
        await settle(second)
        assert len(receiver.requests) == 2
    finally:
        await second.aclose()
    # Nothing firing is left on disk: a third watch sends nothing.
    third = watch(receiver, now, Windows(), tmp_path)
    third.resume()
    await settle(third)
    await third.aclose()
    assert len(receiver.requests) == 2
    data = json.loads((tmp_path / FILE_NAME).read_text())
    assert "incident" not in data["units"].get(UNIT, {})


@pytest.mark.asyncio
async def test_a_resumed_alert_still_flapping_fires_again_and_one_past_its_window_at_once(
    receiver: Receiver, tmp_path: Path
) -> None:
    now = [0.0]
    await fired_then_gone(receiver, now, tmp_path)
    # Down for longer than the window: judged at once, and it still flaps.
    now[0] = 100.0
    second = watch(receiver, now, (windows := Windows()), tmp_path)
    try:
        for at in (95.0, 97.0):
            second.crashed(UNIT, crash(at))  # the first crash resumes the watch first
        second.crashed(UNIT, crash(99.0))
        await settle(second)
        assert windows.asked == [0.0]
        windows.ends.put_nowait(None)
        await settle(second)
        again = bodies(receiver, 2)[1]
        assert again["status"] == "firing"
        assert [d["at"] for d in again["digest"]] == [95.0, 97.0, 99.0]
        assert windows.asked == [0.0, 60.0]
    finally:
        await second.aclose()


@pytest.mark.asyncio
async def test_crashes_count_on_across_a_restart(receiver: Receiver, tmp_path: Path) -> None:
    now, windows = [0.0], Windows()
    first = watch(receiver, now, windows, tmp_path)
    first.crashed(UNIT, crash(0.0))
    first.crashed(UNIT, crash(10.0))
    await settle(first)
    await first.aclose()
    assert receiver.requests == []
    now[0] = 20.0
    second = watch(receiver, now, Windows(), tmp_path)
    try:
        second.crashed(UNIT, crash(20.0))  # the third within 60 s, across the restart
        await settle(second)
        (firing,) = bodies(receiver, 1)
        assert firing["status"] == "firing"
        assert [d["at"] for d in firing["digest"]] == [0.0, 10.0, 20.0]
    finally:
        await second.aclose()


@pytest.mark.asyncio
async def test_crashes_older_than_the_window_are_dropped_on_resume(
    receiver: Receiver, tmp_path: Path
) -> None:
    FlapFile(tmp_path).save({UNIT: FlapRecord((crash(0.0), crash(10.0)))})
    now = [65.0]
    flaps = watch(receiver, now, Windows(), tmp_path)
    try:
        flaps.resume()
        await flaps.flush(5)
        assert [c.at for c in FlapFile(tmp_path).load(65.0)[UNIT].crashes] == [10.0]
        flaps.crashed(UNIT, crash(65.0))  # two within 60 s, not three
        await settle(flaps)
        assert receiver.requests == []
    finally:
        await flaps.aclose()


@pytest.mark.asyncio
async def test_a_policy_that_lost_alert_on_resolves_what_was_firing(
    receiver: Receiver, tmp_path: Path
) -> None:
    now = [0.0]
    await fired_then_gone(receiver, now, tmp_path)
    windows = Windows()
    second = watch(receiver, now, windows, tmp_path, alert_on=None)
    try:
        second.resume()
        await settle(second)
        assert windows.asked == [0.0]  # no window to wait for
        windows.ends.put_nowait(None)
        await settle(second)
        first_body, resolved = bodies(receiver, 2)
        assert resolved["status"] == "resolved"
        assert resolved["incident_id"] == first_body["incident_id"]
        await settle(second)
    finally:
        await second.aclose()
    assert json.loads((tmp_path / FILE_NAME).read_text())["units"] == {}


@pytest.mark.asyncio
async def test_units_without_alert_on_never_write(receiver: Receiver, tmp_path: Path) -> None:
    flaps = watch(receiver, [0.0], Windows(), tmp_path, alert_on=None)
    try:
        for at in range(20):
            flaps.crashed(UNIT, crash(float(at)))
        await settle(flaps)
    finally:
        await flaps.aclose()
    assert not (tmp_path / FILE_NAME).exists()


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "garbage",
    [b"\x00\xffnot json", b'{"v": 1, "units": {"api.service": {"crashes": [{"at": "x"}]}}}',
     b'{"v": 99, "units": {}}', b"[]", b"[" * 100_000],
)  # fmt: skip
async def test_a_garbage_file_is_logged_once_and_overwritten_on_the_next_change(
    receiver: Receiver, tmp_path: Path, caplog: pytest.LogCaptureFixture, garbage: bytes
) -> None:
    (tmp_path / FILE_NAME).write_bytes(garbage)
    caplog.set_level(logging.WARNING, "handlers.flapstate")
    flaps = watch(receiver, [0.0], Windows(), tmp_path)
    try:
        flaps.resume()
        assert (tmp_path / FILE_NAME).read_bytes() == garbage  # not removed on reading
        flaps.crashed(UNIT, crash(0.0))
        await settle(flaps)
    finally:
        await flaps.aclose()
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "unusable, starting empty" in warnings[0], warnings
    assert [c.at for c in FlapFile(tmp_path).load(0.0)[UNIT].crashes] == [0.0]


@pytest.mark.asyncio
async def test_a_symlink_in_place_of_the_file_is_refused(
    receiver: Receiver, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    elsewhere = tmp_path / "elsewhere.json"
    planted = {UNIT: FlapRecord((crash(0.0), crash(1.0), crash(2.0)), "flap-planted", 0.0, 2.0)}
    FlapFile(tmp_path, "elsewhere.json").save(planted)
    before = elsewhere.read_bytes()
    (state / FILE_NAME).symlink_to(elsewhere)
    caplog.set_level(logging.WARNING, "handlers.flapstate")
    now = [3.0]
    flaps = watch(receiver, now, Windows(), state)
    try:
        flaps.resume()
        flaps.crashed(UNIT, crash(3.0))
        await settle(flaps)
    finally:
        await flaps.aclose()
    # Not read: nothing of the planted alert was resumed or resolved.
    assert receiver.requests == []
    assert any("symbolic links" in r.getMessage() for r in caplog.records), caplog.records
    # Not written through: the link itself was replaced, its target is as it was.
    assert elsewhere.read_bytes() == before
    assert not (state / FILE_NAME).is_symlink()
    assert [c.at for c in FlapFile(state).load(3.0)[UNIT].crashes] == [3.0]


_READ_ONLY = textwrap.dedent(
    """
    import asyncio, json, logging, sys
    from pathlib import Path
    from handlers.flapping import Crash, FlapWatch
    from handlers.flapstate import FlapFile
    from unitgen.model import AlertOn
    from unitgen.policy import Policy

    logging.basicConfig(level=logging.WARNING, format="%(name)s %(message)s")

    class Recording:
        targets = ("one",)
        def __init__(self):
            self.alerts = []
        async def send(self, alert):
            self.alerts.append(alert)
            return []

    async def main():
        recording = Recording()
        policy = Policy(unit="api.service", alert_on=AlertOn(3, 60.0))
        state = FlapFile(Path(sys.argv[1]))
        flaps = FlapWatch(lambda u: policy, alerter_for=lambda p: recording,
                          clock=lambda: 10.0, state=state)
        for at in (10.0, 11.0, 12.0):  # three changes, three writes refused
            flaps.crashed("api.service", Crash(at, "exit-code", "exited", 3, 0, "systemd"))
            await flaps.drain(5)
            await flaps.flush(5)
        await flaps.aclose()
        print(json.dumps({"alerts": [a.status for a in recording.alerts],
                          "problem": state.problem}))

    asyncio.run(main())
    """
)


def test_a_read_only_state_directory_is_logged_and_the_alert_still_goes(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    # Two crashes from before: loaded from the read-only directory, the third fires.
    FlapFile(state).save({UNIT: FlapRecord((crash(1.0), crash(2.0)))})
    before = (state / FILE_NAME).read_bytes()
    mount = f"mount --bind {state} {state} && mount -o remount,bind,ro {state} {state}"
    shell = f'{mount} && exec "$0" -c "$1" "$2"'
    argv = ["unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", shell,
            sys.executable, _READ_ONLY, str(state)]  # fmt: skip
    try:
        proc = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
    except FileNotFoundError:
        unavailable("unshare is not installed")
    if proc.returncode != 0 and "unshare failed" in proc.stderr:
        unavailable(f"cannot create a mount namespace: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["alerts"] == ["firing"]
    assert "Read-only file system" in out["problem"]
    logged = [line for line in proc.stderr.splitlines() if "flapping alert state" in line]
    assert len(logged) == 1, proc.stderr  # once, not once per change
    assert (state / FILE_NAME).read_bytes() == before
