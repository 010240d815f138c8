"""handlers.configcheck.validate_config: real nginx -t, plain scripts, timeouts, missing tools."""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import pytest

from handlers.configcheck import validate_config

PY = sys.executable

NGINX_CONF = """\
pid {dir}/nginx.pid;
error_log stderr;
events {{}}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {{
        listen 127.0.0.1:18089;
        location / {{ {directive} 200 "ok"; }}
    }}
}}
"""


def nginx() -> str:
    path = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if path is None:
        pytest.fail("nginx is not installed (install.sh installs nginx-light)")
    return path


def nginx_argv(tmp_path: Path, directive: str) -> list[str]:
    conf = tmp_path / "nginx.conf"
    conf.write_text(NGINX_CONF.format(dir=tmp_path, directive=directive))
    # -p and -e keep nginx away from /var/log/nginx and /etc/nginx.
    return [nginx(), "-t", "-q", "-p", str(tmp_path), "-e", "stderr", "-c", str(conf)]


@pytest.mark.asyncio
async def test_nginx_good_config_passes(tmp_path: Path) -> None:
    result = await validate_config(nginx_argv(tmp_path, "return"), timeout=30)
    assert result.ok, result.result.output_tail
    assert result.result.returncode == 0
    assert result.reason == f"{nginx()}: configuration is valid"


@pytest.mark.asyncio
async def test_nginx_bad_config_fails_with_its_complaint(tmp_path: Path) -> None:
    result = await validate_config(nginx_argv(tmp_path, "retrun"), timeout=30)
    assert not result.ok
    assert result.result.returncode == 1
    assert result.reason.startswith(f"{nginx()}: exit code 1: ")
    assert 'unknown directive "retrun"' in result.reason
    assert "\n" not in result.reason


@pytest.mark.asyncio
async def test_script_exit_codes(tmp_path: Path) -> None:
    ok = await validate_config([PY, "-c", "print('fine')"])
    assert ok.ok and ok.result.output_tail.strip() == "fine"
    bad = await validate_config(
        [PY, "-c", "import sys; print('line 1'); print('config.ini: bad port'); sys.exit(4)"]
    )
    assert not bad.ok
    assert bad.reason == f"{PY}: exit code 4: config.ini: bad port"


@pytest.mark.asyncio
async def test_complaint_line_is_preferred_over_summary() -> None:
    code = "print('checking'); print('ERROR: key x missing'); print('summary: 1 problem'); exit(1)"
    result = await validate_config([PY, "-c", code])
    assert result.reason.endswith(": ERROR: key x missing")


@pytest.mark.asyncio
async def test_silent_failure_has_a_reason() -> None:
    result = await validate_config(["false"])
    assert not result.ok and result.reason == "false: exit code 1"


@pytest.mark.asyncio
async def test_control_characters_in_output_cannot_forge_lines() -> None:
    code = "import sys; sys.stdout.write('error: a\\x1b[2Jb\\x07c\\rforged\\n'); sys.exit(2)"
    result = await validate_config([PY, "-c", code])
    assert result.reason.endswith(": error: a [2Jb c")
    assert not any(ch in result.reason for ch in "\r\n\x1b\x07")


@pytest.mark.asyncio
async def test_timeout_is_not_ok_and_says_so(tmp_path: Path) -> None:
    started = time.monotonic()
    result = await validate_config([PY, "-c", "import time; time.sleep(300)"], timeout=0.5)
    assert not result.ok
    assert result.reason == "timed out after 0.5s"
    assert result.result.timed_out
    assert time.monotonic() - started < 10


@pytest.mark.asyncio
async def test_missing_validator_is_not_ok() -> None:
    result = await validate_config(["/nonexistent/validator", "-t"])
    assert not result.ok
    assert result.reason == "command not found: /nonexistent/validator"


@pytest.mark.asyncio
async def test_env_is_passed() -> None:
    code = "import os, sys; sys.exit(0 if os.environ.get('CONF') == 'x' else 1)"
    assert (await validate_config([PY, "-c", code], env={"CONF": "x"})).ok
    assert not (await validate_config([PY, "-c", code], env={"CONF": "y"})).ok
