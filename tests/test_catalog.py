"""The journal message catalog: an entry for every MESSAGE_ID, and journalctl -x showing it."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from handlers.journal import MESSAGE_IDS
from unitgen.rollout import APPLY_MESSAGE_IDS
from unitgen.sandbox import Sandbox

CATALOG = Path(__file__).resolve().parent.parent / "units" / "unitgen.catalog"
HEADER = re.compile(r"^-- ([0-9a-f]{32})(?: .*)?$")


def entries() -> dict[str, str]:
    out: dict[str, str] = {}
    current: str | None = None
    for line in CATALOG.read_text(encoding="utf-8").splitlines():
        m = HEADER.match(line)
        if m:
            current = m.group(1)
            assert current not in out, f"{current}: two entries"
            out[current] = ""
        elif current is not None:
            out[current] += line + "\n"
    return out


def all_ids() -> set[str]:
    return set(MESSAGE_IDS.values()) | set(APPLY_MESSAGE_IDS.values())


def test_every_message_id_has_an_entry_with_subject_and_documentation() -> None:
    found = entries()
    assert all_ids() <= set(found), sorted(all_ids() - set(found))
    assert set(found) <= all_ids(), "an entry for an id nothing logs"
    for mid, text in found.items():
        assert re.search(r"^Subject: \S", text, re.M), mid
        assert "Defined-By: unitgen\n" in text, mid
        assert "Documentation: man:unitgen(1)\n" in text, mid


def make_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "usr/lib/systemd/catalog").mkdir(parents=True)
    shutil.copy(CATALOG, root / "usr/lib/systemd/catalog/unitgen.catalog")
    subprocess.run(["journalctl", f"--root={root}", "--update-catalog"], check=True)
    return root


def test_journalctl_compiles_it_and_lists_every_id(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    res = subprocess.run(
        ["journalctl", f"--root={root}", "--list-catalog", "--no-pager"],
        capture_output=True,
        text=True,
        check=True,
    )
    listed = {line.split()[0] for line in res.stdout.splitlines() if line.strip()}
    assert listed == all_ids()
    assert not res.stderr


@pytest.mark.timeout(60)
def test_journalctl_x_explains_a_gave_up_entry(
    fresh_system_sandbox: Sandbox, tmp_path: Path
) -> None:
    """journalctl -x in a booted container, on an entry sent over journald's native socket."""
    from handlers.events import EventKind

    sb = fresh_system_sandbox
    root = make_root(tmp_path)  # tmp_path is shared into the sandbox at the same path
    # /usr is the host's, read-only: the compiled database goes where journalctl reads it.
    sb.run(["mkdir", "-p", "/var/lib/systemd/catalog"], check=True)
    sb.run(
        ["cp", str(root / "var/lib/systemd/catalog/database"), "/var/lib/systemd/catalog/database"],
        check=True,
    )
    mid = MESSAGE_IDS[EventKind.GAVE_UP]
    sb.run(
        ["logger", "--journald"],
        check=True,
        input=f"MESSAGE_ID={mid}\nMESSAGE=h15cat.service: gave up\n"
        "UNITGEN_UNIT=h15cat.service\nUNITGEN_REASON=exit-code\n"
        "SYSLOG_IDENTIFIER=unitgen\n",
    )
    res = sb.run(["journalctl", "--no-pager", "-x", f"MESSAGE_ID={mid}"], check=True)
    assert "h15cat.service: gave up" in res.stdout
    # The explanation's lines carry a prefix ("-- " or "░░ " by locale); join them.
    text = " ".join(line[3:].strip() for line in res.stdout.splitlines()[1:])
    assert "Subject: unitgen gave up on h15cat.service; it stays down until someone acts" in text
    assert "`unitgen reset h15cat.service`" in text
    assert "(reason: exit-code)" in text
