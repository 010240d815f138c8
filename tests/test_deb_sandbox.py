"""The Debian package: built by packaging/build-deb, installed and purged in a booted container.

The container runs on the host's /usr, read-only; the test puts an overlay on
/usr inside the container (a tmpfs upper layer in its /run) and gives it a copy
of the host's dpkg database, so `dpkg -i` installs for real there and nowhere else.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from unitgen import __version__
from unitgen.sandbox import Sandbox

REPO = Path(__file__).resolve().parent.parent
# What dpkg and the container's own activity change: not the package's doing.
SNAPSHOT = (
    "find /etc /usr /var -xdev "
    r"\( -path /var/lib/dpkg -o -path /var/log -o -path /var/lib/systemd/catalog "
    r"-o -path /var/tmp \) -prune -o -print | sort"
)


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("deb")
    res = subprocess.run(
        [str(REPO / "packaging" / "build-deb"), str(out)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHON": sys.executable},
        timeout=120,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    path = Path(res.stdout.strip().splitlines()[-1])
    assert path.name == f"unitgen_{__version__}-1_all.deb"
    return path


def test_package_layout(deb: Path) -> None:
    listing = subprocess.run(
        ["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True
    ).stdout
    for path in (
        "./usr/bin/unitgen",
        "./usr/lib/python3/dist-packages/unitgen/cli.py",
        "./usr/lib/python3/dist-packages/unitgen/templates/service.j2",
        "./usr/lib/systemd/system/unitgen-watch.service",
        "./usr/lib/systemd/system/unitgen-recover@.service",
        "./usr/share/dbus-1/system.d/org.unitgen.Recovery1.conf",
        "./usr/lib/systemd/catalog/unitgen.catalog",
        "./usr/share/man/man1/unitgen.1.gz",
        "./usr/share/man/man5/unitgen.toml.5.gz",
        "./usr/share/bash-completion/completions/unitgen",
        "./usr/share/zsh/vendor-completions/_unitgen",
    ):
        assert f" {path}\n" in listing, path
    assert "__pycache__" not in listing
    assert " root/root " in listing and str(REPO) not in listing


@pytest.mark.timeout(120)
def test_install_runs_the_listener_and_purge_leaves_nothing(
    fresh_system_sandbox: Sandbox, deb: Path
) -> None:
    sb = fresh_system_sandbox
    shutil.copytree("/var/lib/dpkg", sb.root / "skel/var/lib/dpkg", symlinks=True)
    sb.run(
        [
            "sh",
            "-ec",
            "mkdir -p /run/usr-ovl/upper /run/usr-ovl/work; "
            "mount -t overlay overlay -o lowerdir=/usr,upperdir=/run/usr-ovl/upper,"
            "workdir=/run/usr-ovl/work /usr",
        ],
        check=True,
    )
    # A build or CI image may forbid starting services from maintainer scripts
    # (policy-rc.d exit 101); a booted host has none. Removed in the overlay only.
    sb.run(["rm", "-f", "/usr/sbin/policy-rc.d"], check=True)
    before = sb.run(["sh", "-c", SNAPSHOT], check=True).stdout

    env = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    res = sb.run(["dpkg", "--log=/dev/null", "-i", str(deb)], env=env, timeout=90)
    assert res.returncode == 0, res.stdout + res.stderr

    # postinst enabled and started it; Type=notify: active only after READY=1.
    sb.wait_for("unitgen-watch.service", "active", timeout=30)
    show = sb.systemctl("show", "-P", "Type", "unitgen-watch.service").stdout.strip()
    assert show == "notify"
    assert sb.systemctl("is-enabled", "unitgen-watch.service").stdout.strip() == "enabled"
    version = sb.run(["unitgen", "--version"], env=env, check=True).stdout.strip()
    assert version == f"unitgen {__version__}"
    catalog = sb.run(["journalctl", "--list-catalog"], check=True).stdout
    assert "b97d6ffb264d45e3b0713a5933b2bed0" in catalog
    assert (
        sb.run(["test", "-d", "/usr/lib/python3/dist-packages/unitgen/__pycache__"]).returncode == 0
    )  # py3compile ran

    res = sb.run(["dpkg", "--log=/dev/null", "--purge", "unitgen"], env=env, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    load = sb.systemctl("show", "-P", "LoadState", "unitgen-watch.service").stdout.strip()
    assert load == "not-found"
    after = sb.run(["sh", "-c", SNAPSHOT], check=True).stdout
    assert after == before, "\n".join(sorted(set(after.splitlines()) ^ set(before.splitlines())))
    assert "b97d6ffb264d45e3b0713a5933b2bed0" not in sb.run(["journalctl", "--list-catalog"]).stdout
