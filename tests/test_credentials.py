"""Alert secrets as systemd credentials (LoadCredential=, $CREDENTIALS_DIRECTORY)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from handlers.secrets import credential_file
from unitgen.credentials import LISTENER_DROPIN
from unitgen.errors import AlertError, SpecError
from unitgen.paths import Scope
from unitgen.render import RECOVER_UNIT, RenderOptions, render
from unitgen.sandbox import Sandbox
from unitgen.specfile import parse_spec

SPEC = """
[alert.ops]
type = "webhook"
url_credential = "ops-url"

[alert.mail]
type = "email"
smtp_host = "mail.example.org"
from = "unitgen@example.org"
to = ["ops@example.org"]
username = "unitgen"
password_credential = "smtp.password"
starttls = true

[service.api]
exec = ["/usr/bin/python3", "-m", "http.server"]
alerts = ["ops", "mail"]
"""
OPTIONS = RenderOptions.for_scope(Scope.SYSTEM, 252, unitgen_bin="/usr/bin/unitgen")


def test_recovery_unit_and_listener_load_the_named_credentials() -> None:
    files = render(parse_spec(SPEC, "s.toml"), OPTIONS)
    recover = files[RECOVER_UNIT]
    assert "LoadCredential=ops-url:/etc/unitgen/credentials/ops-url\n" in recover
    assert "LoadCredential=smtp.password:/etc/unitgen/credentials/smtp.password\n" in recover
    dropin = files[LISTENER_DROPIN]
    assert dropin.splitlines()[2:] == [
        "[Service]",
        "LoadCredential=ops-url:/etc/unitgen/credentials/ops-url",
        "LoadCredential=smtp.password:/etc/unitgen/credentials/smtp.password",
    ]


def test_no_credential_no_dropin_and_no_line() -> None:
    files = render(
        parse_spec(
            SPEC.replace('url_credential = "ops-url"', 'url_env = "OPS"').split("[alert.mail]")[0]
            + '[service.api]\nexec = ["/bin/true"]\n',
            "s.toml",
        ),
        OPTIONS,
    )
    assert LISTENER_DROPIN not in files
    assert "LoadCredential" not in files[RECOVER_UNIT]


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        ('url_credential = "a"\nurl_file = "/etc/u"', "exactly one of"),
        ('url_credential = "../etc/shadow"', "a credential name like"),
        ('url_credential = "https://hooks.example/T0/B0/secret"', "not the secret itself"),
    ],
)
def test_bad_credential_keys_are_one_line_naming_the_key(table: str, expected: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(f'[alert.ops]\ntype = "webhook"\n{table}\n', "s.toml")
    text = str(info.value)
    assert expected in text and "alert.ops" in text
    assert "hooks.example" not in text


def test_without_credentials_directory_the_error_says_what_to_add() -> None:
    with pytest.raises(AlertError, match=r"LoadCredential=ops-url:PATH"):
        credential_file("webhook ops", "url_credential", "ops-url", {})


RECEIVER_AND_SEND = r"""
import asyncio, http.server, json, os, sys, threading, time
from handlers.alerts import Alert, Alerter, AlertTarget
got = []
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        got.append((self.path, self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(200); self.end_headers()
    def log_message(self, *a): pass
srv = http.server.HTTPServer(("127.0.0.1", 8479), H)
threading.Thread(target=srv.serve_forever, daemon=True).start()
target = AlertTarget.from_mapping({"type": "webhook", "name": "ops", "url_credential": "ops-url"})
alert = Alert("api.service", "i1", "alert", "firing", "exit-code", "down", 1, time.time(),
              None, "h")
(d,) = asyncio.run(Alerter([target]).send(alert))
srv.shutdown()
print(json.dumps({"ok": d.ok, "error": d.error, "paths": [p for p, _ in got],
                  "env_has_url": any("8479" in v for v in os.environ.values()),
                  "dir": os.environ.get("CREDENTIALS_DIRECTORY", "")}))
"""


@pytest.mark.timeout(60)
def test_a_webhook_url_from_a_credential_reaches_the_receiver(
    system_sandbox: Sandbox,
) -> None:
    """systemd copies the credential in; the alert code reads it; nothing else sees it."""
    sb = system_sandbox
    creds = sb.root / "etc-unitgen" / "credentials"  # /etc/unitgen/credentials inside
    creds.mkdir(parents=True, exist_ok=True)
    (creds / "ops-url").write_text("http://127.0.0.1:8479/hook/secret-path\n")
    (creds / "ops-url").chmod(0o600)
    (line,) = [
        ln
        for ln in render(parse_spec(SPEC, "s.toml"), OPTIONS)[RECOVER_UNIT].splitlines()
        if ln.startswith("LoadCredential=ops-url:")
    ]
    res = sb.run(
        [
            "systemd-run",
            "--quiet",
            "--wait",
            "--pipe",
            "-p",
            line,
            "-p",
            "DynamicUser=yes",  # an unprivileged user: only the credential gives it the URL
            sys.executable,
            "-c",
            RECEIVER_AND_SEND,
        ],
        timeout=50,
    )
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out == {
        "ok": True,
        "error": None,
        "paths": ["/hook/secret-path"],
        "env_has_url": False,
        "dir": out["dir"],
    }
    assert out["dir"].startswith("/run/credentials/")
    # The source file is root's alone: the same user without the credential cannot read it.
    denied = sb.run(
        [
            "systemd-run",
            "--quiet",
            "--wait",
            "--pipe",
            "-p",
            "DynamicUser=yes",
            "cat",
            "/etc/unitgen/credentials/ops-url",
        ],
        timeout=30,
    )
    assert denied.returncode != 0


def test_check_passes_a_spec_with_credentials_before_the_listener_is_installed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from unitgen.cli import main

    spec = tmp_path / "s.toml"
    spec.write_text(SPEC)
    assert main(["check", str(spec), "--json", "--systemd-version", "252"]) == 0
    rows = {r["file"]: r for r in json.loads(capsys.readouterr().out)["units"]}
    assert rows[LISTENER_DROPIN]["ok"] and rows[LISTENER_DROPIN]["verify"] == []
    assert rows[RECOVER_UNIT]["verify"] == []
