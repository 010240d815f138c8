"""install.sh, run for real: in the user sandbox, in the booted container, staged, and dry.

Each run installs into the sandbox (venv under the sandbox root or inside the
container's own /opt), never into the host's /opt or /etc. pip gets its wheels
from a wheelhouse built once per session, because the container has no network.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from unitgen.sandbox import Sandbox

REPO = Path(__file__).resolve().parent.parent
INSTALL = str(REPO / "install.sh")
DEMO = str(REPO / "examples" / "demo.toml")
DEMO_UNITS = ["demo-web.service", "demo-cache.service"]

PIP_WHEEL = [sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check"]
FETCH = "import urllib.request as u; print(u.urlopen('http://127.0.0.1:8080/', timeout=5).status)"

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    house = tmp_path_factory.mktemp("wheelhouse")
    # A copy: setuptools builds in-tree, and the work tree is shared.
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for name in ("unitgen", "handlers"):
        shutil.copytree(
            REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
        )
    res = subprocess.run(
        [*PIP_WHEEL, "--wheel-dir", str(house), str(src), "setuptools>=68"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if res.returncode != 0:
        pytest.fail(f"cannot build the wheelhouse: {res.stderr[-800:]}", pytrace=False)
    return house


def _pip_env(wheelhouse: Path) -> dict[str, str]:
    return {
        "PYTHON": "/usr/bin/python3",
        "PIP_NO_INDEX": "1",
        "PIP_FIND_LINKS": str(wheelhouse),
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }


@pytest.fixture
def repo_shared_user_sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    import sandboxlib

    from unitgen.paths import Scope

    with sandboxlib.start_sandbox(Scope.USER, share=[tmp_path_factory.getbasetemp(), REPO]) as sb:
        yield sb


@pytest.fixture
def repo_shared_system_sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    import sandboxlib

    from unitgen.paths import Scope

    with sandboxlib.start_sandbox(Scope.SYSTEM, share=[tmp_path_factory.getbasetemp(), REPO]) as sb:
        yield sb


def _serves(sb: Sandbox, timeout: float = 15.0) -> tuple[str, str]:
    # Type=exec is "active" once exec'd, a moment before the server listens.
    deadline = time.monotonic() + timeout
    while True:
        web = sb.run(["/usr/bin/python3", "-c", FETCH]).stdout.strip()
        cache = sb.run(["/usr/bin/redis-cli", "-p", "6390", "ping"]).stdout.strip()
        if (web, cache) == ("200", "PONG") or time.monotonic() > deadline:
            return web, cache
        time.sleep(0.1)


def _check_installed(sb: Sandbox, prefix: str) -> None:
    for unit in DEMO_UNITS:
        props = sb.wait_for(unit, "active", timeout=30)
        assert props["LoadState"] == "loaded"
        assert sb.systemctl("is-enabled", unit).stdout.strip() == "enabled"
        show = sb.show(unit, "FragmentPath", "OnFailure")
        assert sb.to_host(show["FragmentPath"]).is_relative_to(sb.unit_dir)
        assert show["OnFailure"] == f"unitgen-recover@{unit}.service"
    recover = sb.show("unitgen-recover@demo-web.service.service", "LoadState", "ExecStart")
    assert recover["LoadState"] == "loaded"
    assert f"{prefix}/bin/unitgen" in recover["ExecStart"]
    # Strict profile, real daemons: both serve.
    assert _serves(sb) == ("200", "PONG")


def test_install_user_sandbox_idempotent_and_uninstall(
    repo_shared_user_sandbox: Sandbox, wheelhouse: Path
) -> None:
    sb = repo_shared_user_sandbox
    prefix = str(sb.root / "venv")
    argv = [INSTALL, "--user", "--prefix", prefix, "--spec", DEMO]
    first = sb.run(argv, env=_pip_env(wheelhouse), timeout=600)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "installed " in first.stdout
    _check_installed(sb, prefix)
    policy = Path(sb.env["UNITGEN_POLICY_DIR"]) / "demo-web.service.json"
    assert policy.is_file()

    second = sb.run(argv, env=_pip_env(wheelhouse), timeout=600)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "installed " not in second.stdout and "creating venv" not in second.stdout
    assert _serves(sb) == ("200", "PONG")

    gone = sb.run([INSTALL, "--user", "--prefix", prefix, "--uninstall"], timeout=120)
    assert gone.returncode == 0, gone.stderr
    assert not Path(prefix).exists()
    assert not (sb.unit_dir / "demo-web.service").exists()
    assert not policy.exists()
    for unit in DEMO_UNITS:
        assert sb.show(unit, "LoadState")["LoadState"] == "not-found"


def test_install_system_container_default_layout(
    repo_shared_system_sandbox: Sandbox, wheelhouse: Path
) -> None:
    sb = repo_shared_system_sandbox
    # The container's own /opt (its root is the sandbox's skeleton); /opt/unitgen there
    # is the dev venv bound read-only, so use a sibling.
    prefix = "/opt/unitgen-installed"
    res = sb.run(
        [INSTALL, "--prefix", prefix, "--spec", DEMO], env=_pip_env(wheelhouse), timeout=600
    )
    assert res.returncode == 0, res.stdout + res.stderr
    _check_installed(sb, prefix)
    assert (sb.unit_dir / "demo-web.service").is_file()
    assert (sb.root / "etc-unitgen" / "policy.d" / "demo-cache.service.json").is_file()
    conf = sb.run(["test", "-f", "/etc/dbus-1/system.d/org.unitgen.Recovery1.conf"])
    assert conf.returncode == 0
    assert (sb.root / "skel" / prefix.lstrip("/") / "bin" / "unitgen").exists()
    # DynamicUser= really applied: the cache runs as a transient, unprivileged uid.
    pid = sb.main_pid("demo-cache.service")
    uid = sb.run(["stat", "-c", "%u", f"/proc/{pid}"], check=True).stdout.strip()
    assert int(uid) >= 61184

    gone = sb.run([INSTALL, "--prefix", prefix, "--uninstall"], timeout=120)
    assert gone.returncode == 0, gone.stderr
    assert not (sb.unit_dir / "demo-web.service").exists()
    assert sb.run(["test", "-e", prefix]).returncode != 0


def test_install_dest_stages_without_touching_a_manager(tmp_path: Path, wheelhouse: Path) -> None:
    dest = tmp_path / "stage"
    env = {**os.environ, **_pip_env(wheelhouse)}
    env.pop("DBUS_SYSTEM_BUS_ADDRESS", None)
    res = subprocess.run(
        [INSTALL, "--dest", str(dest), "--prefix", "/opt/unitgen-staged", "--spec", DEMO],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    unit = dest / "etc/systemd/system/demo-web.service"
    assert unit.is_file()
    assert (
        "/opt/unitgen-staged/bin/unitgen"
        in (dest / "etc/systemd/system/unitgen-recover@.service").read_text()
    )
    assert (dest / "etc/systemd/system/multi-user.target.wants/demo-web.service").is_symlink()
    assert (dest / "etc/unitgen/policy.d/demo-web.service.json").is_file()
    # The journal catalog goes where systemd reads an unpackaged install's catalogs.
    assert (dest / "usr/local/lib/systemd/catalog/unitgen.catalog").is_file()
    recover = (dest / "etc/systemd/system/unitgen-recover@.service").read_text()
    assert str(dest) not in recover and "/tmp/" not in recover.split("[Service]")[1]
    assert not Path("/opt/unitgen-staged").exists()
    assert not Path("/etc/systemd/system/demo-web.service").exists()


def _fake_path(tmp_path: Path, hide: set[str]) -> str:
    """A PATH with every tool of the real one except those in ``hide``."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for directory in os.environ["PATH"].split(os.pathsep):
        if not os.path.isdir(directory):
            continue
        for name in os.listdir(directory):
            target = bindir / name
            if name not in hide and not target.exists():
                target.symlink_to(os.path.join(directory, name))
    return str(bindir)


def _run_install(
    *args: str, script: str = INSTALL, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """install.sh with ``args``, quick (no pip), the environment plus ``env``."""
    return subprocess.run(
        ["bash", script, *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=60,
        check=False,
    )


def test_check_names_exactly_what_is_missing(tmp_path: Path) -> None:
    path = _fake_path(tmp_path, {"systemd-nspawn", "redis-server", "dbus-daemon"})
    res = _run_install(
        "--dev",
        "--check",
        "--prefix",
        str(tmp_path / "venv"),
        env={"PATH": path, "PYTHON": "/usr/bin/python3"},
    )
    assert res.returncode == 1
    assert "missing OS packages: dbus redis-server systemd-container" in res.stdout


def test_check_names_a_missing_session_bus_package(tmp_path: Path) -> None:
    # dbus-user-session is a file, not a command: point the check at a missing one.
    script = tmp_path / "install.sh"
    text = (
        Path(INSTALL)
        .read_text()
        .replace("[/usr/lib/systemd/user/dbus.socket]", f"[{tmp_path}/no-dbus.socket]")
    )
    script.write_text(text.replace('REPO="$(cd', f'REPO="{REPO}" #', 1))
    res = _run_install(
        "--dev",
        "--check",
        "--prefix",
        str(tmp_path / "venv"),
        script=str(script),
        env={"PYTHON": "/usr/bin/python3"},
    )
    assert res.returncode == 1
    assert "missing OS packages: dbus-user-session" in res.stdout


def test_no_apt_refuses_and_says_the_apt_command(tmp_path: Path) -> None:
    path = _fake_path(tmp_path, {"redis-server"})
    res = _run_install(
        "--dev",
        "--no-apt",
        "--prefix",
        str(tmp_path / "venv"),
        env={"PATH": path, "PYTHON": "/usr/bin/python3"},
    )
    assert res.returncode == 1
    assert "apt-get install redis-server" in res.stderr
    assert not (tmp_path / "venv").exists()


@pytest.mark.parametrize(
    "args",
    [
        ["--bogus"],
        ["--prefix", "relative/dir"],
        ["--prefix", "/opt/has space"],
        ["--spec", "/nonexistent.toml"],
    ],
)
def test_bad_arguments_exit_2(args: list[str]) -> None:
    res = _run_install(*args)
    assert res.returncode == 2, res.stderr
    assert res.stderr.startswith("install.sh: ")


def test_wheel_ships_the_sandbox_init_scripts(wheelhouse: Path) -> None:
    """The namespace init scripts are package data: a wheel without them cannot boot."""
    import zipfile

    (wheel,) = wheelhouse.glob("unitgen-*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    scripts = sorted((REPO / "unitgen" / "sandbox" / "init").glob("*.sh"))
    assert scripts
    for script in scripts:
        assert script.relative_to(REPO).as_posix() in shipped
