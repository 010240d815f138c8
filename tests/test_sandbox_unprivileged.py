"""Which hardening directives an *unprivileged* user manager can apply.

This is the manager `install.sh --user` meets on a real host. The findings are
in docs/sandbox.md; the generator's user-scope profile must avoid what fails here.
"""

from __future__ import annotations

import time

import pytest
import sandboxlib

from unitgen.sandbox import Sandbox

# nobody: present on every Debian system, unlike a uid-1000 account on a CI machine.
UID = 65534

# Each line is one unit's extra [Service] directives ("|" separates lines).
WORKS = [
    "ProtectSystem=strict",
    "ProtectHome=yes",
    "ProtectKernelTunables=yes",
    "ProtectControlGroups=yes",
    "PrivateTmp=yes",
    "PrivateUsers=yes",
    "PrivateNetwork=yes",
    "NoNewPrivileges=yes",
    "RestrictNamespaces=yes",
    "SystemCallFilter=@system-service",
    "MemoryDenyWriteExecute=yes",
    "PrivateUsers=yes|ProtectClock=yes",
    "PrivateUsers=yes|CapabilityBoundingSet=",
]
# Shrinking the capability bounding set needs CAP_SETPCAP: 218/CAPABILITIES.
FAILS_218 = [
    "ProtectKernelLogs=yes",
    "ProtectKernelModules=yes",
    "PrivateDevices=yes",
    "ProtectClock=yes",
    "CapabilityBoundingSet=",
]
# Inside a user namespace the caps are there, but the mounts are not allowed: 226/NAMESPACE.
FAILS_226 = [
    "PrivateUsers=yes|ProtectKernelLogs=yes",
    "PrivateUsers=yes|ProtectKernelModules=yes",
    "PrivateUsers=yes|PrivateDevices=yes",
    # Each of these starts alone, and so does PrivateUsers=yes; the pair does not.
    "PrivateUsers=yes|ProtectSystem=strict",
    "PrivateUsers=yes|ProtectHome=yes",
    "PrivateUsers=yes|PrivateTmp=yes",
]

pytestmark = pytest.mark.timeout(300)


def test_unprivileged_user_manager_directives(fresh_user_sandbox: Sandbox) -> None:
    sb = fresh_user_sandbox
    env = sandboxlib.start_unprivileged_manager(sb, UID)
    unit_dir = f"{env['XDG_CONFIG_HOME']}/systemd/user"
    cases = [*WORKS, *FAILS_218, *FAILS_226]
    for i, directives in enumerate(cases):
        body = "[Service]\n" + directives.replace("|", "\n") + "\nExecStart=/bin/sleep 600\n"
        sb.run(["/bin/sh", "-c", f"cat > {unit_dir}/ug-p{i}.service"], input=body, user=UID)
    sb.run(["systemctl", "--user", "daemon-reload"], env=env, user=UID, check=True)
    names = [f"ug-p{i}.service" for i in range(len(cases))]
    sb.run(["systemctl", "--user", "start", "--no-block", *names], env=env, user=UID, check=True)
    seen: dict[str, str] = {}
    for i, directives in enumerate(cases):
        props: dict[str, str] = {}
        deadline = time.monotonic() + 15
        show = ["systemctl", "--user", "show", "-p", "ActiveState", "-p", "ExecMainStatus"]
        while time.monotonic() < deadline:
            res = sb.run([*show, names[i]], env=env, user=UID)
            props = dict(line.split("=", 1) for line in res.stdout.split())
            if props.get("ActiveState") in ("active", "failed") or (
                props.get("ExecMainStatus", "0") != "0"
            ):
                break
            time.sleep(0.02)
        seen[directives] = (
            "active" if props.get("ActiveState") == "active" else props.get("ExecMainStatus", "?")
        )
    expected = {
        **dict.fromkeys(WORKS, "active"),
        **dict.fromkeys(FAILS_218, "218"),
        **dict.fromkeys(FAILS_226, "226"),
    }
    assert seen == expected
