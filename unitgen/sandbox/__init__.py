"""A disposable, real systemd to test against: a user manager or a booted container.

Nothing in unitgen may claim to work with systemd until it has worked against a
real one, and the machines that run the tests do not boot systemd as PID 1. This
package starts one on demand and removes every trace of it afterwards.

Two kinds, chosen by :class:`unitgen.paths.Scope`:

``Scope.USER`` -- ``/lib/systemd/systemd --user`` (about 0.2 s to "running")
    Started inside ``unshare --mount --pid --fork --mount-proc --propagation
    private``. The namespace's PID 1 is a small shell that, before starting
    anything, moves itself into a private cgroup ``/unitgen-sandbox-ID/init.scope``
    (otherwise the manager, seeing ``/init.scope``, would adopt the *host's root*
    cgroup and two sandboxes would share ``app.slice/x.service``), mounts tmpfs on
    ``/run/systemd`` (so the manager believes it was booted), ``/run/log`` and
    ``/var/log/journal``, binds private directories over ``/tmp`` and ``/var/tmp``
    (``PrivateTmp=`` directories would otherwise land in the host's /tmp and
    survive a kill), starts ``systemd-journald`` (so :meth:`Sandbox.journal`
    works) and then the user manager. The session bus is the manager's own
    socket-activated ``dbus.socket`` at ``$XDG_RUNTIME_DIR/bus``.

``Scope.SYSTEM`` -- ``systemd-nspawn -b`` (about 1 s to "running")
    A booted container over the host's read-only ``/usr``: the host's own
    systemd as PID 1 with a real system bus. See :func:`start_system_sandbox`.

Inside the sandbox, paths the caller shares (``share=``; the pytest fixtures
share pytest's base temp dir, so ``tmp_path`` works in ``ExecStart=``) and the
sandbox's own ``root`` are visible at the same path as on the host.

API (the pytest fixtures in ``tests/conftest.py`` wrap it)::

    with Sandbox.start(Scope.USER) as sb:       # or start_user_sandbox()
        sb.install_units({"web.service": "[Service]\\nExecStart=..."})
        sb.systemctl("start", "web.service", check=True)
        props = sb.wait_for("web.service", "active", timeout=10)
        sb.kill_main("web.service", signal.SIGKILL)
        sb.wait_for("web.service", {"failed", "activating"})
        print(sb.journal("web.service", lines=20))
        subprocess.run(["systemctl", "--user", "status"], env={**os.environ, **sb.env})

Attributes: ``scope``; ``root`` (the private temp dir: everything the sandbox
writes on the host is below it); ``env`` (what a host-side client needs to reach
this manager: ``DBUS_SESSION_BUS_ADDRESS``/``DBUS_SYSTEM_BUS_ADDRESS``,
``XDG_RUNTIME_DIR``, ``XDG_CONFIG_HOME``, ``XDG_STATE_HOME``, ``HOME``,
``UNITGEN_SCOPE``, ``UNITGEN_STATE_DIR``, ``UNITGEN_RUN_DIR``,
``UNITGEN_POLICY_DIR``); ``bus_address``; ``unit_dir`` (drop unit files there).

PIDs. The sandbox keeps its own PID namespace, because then teardown is total:
SIGKILL to the namespace's init makes the kernel kill every process in it,
daemons that double-forked included, before ``waitpid`` returns. The price is
that ``MainPID`` read over D-Bus is a PID *inside* the namespace. Use
:meth:`Sandbox.kill_main` (``systemctl kill``) or :meth:`Sandbox.run` to signal
from inside, or :meth:`Sandbox.host_pid` to translate a namespace PID to the
host's (via ``NSpid`` in ``/proc/PID/status``), e.g. for ``os.kill``.

Host-side ``systemctl --user`` with :attr:`Sandbox.env` works, except
``is-system-running`` which answers "offline" because the host lacks
``/run/systemd/system``; :meth:`Sandbox.systemctl` runs inside and has no such gap.

Teardown (``close()``, idempotent, also on ``__exit__``): SIGKILL the namespace
init, wait for ``unshare``, remove ``/unitgen-sandbox-ID`` from every cgroup
hierarchy, remove ``root``. If the Python process itself is SIGKILLed, the
namespace still dies (``setpriv --pdeathsig`` + ``unshare --kill-child``); only
the empty temp dir and empty cgroup directories can then remain, and the next
:func:`reap_stale` (called by every start) removes them.

Where it lives: ``launch`` boots (the init scripts are ``init/*.sh``), ``client``
is the :class:`Sandbox` handle, ``reap`` removes what sandboxes leave,
``hardening_probe`` is the engine of ``unitgen check --probe``; ``layout`` and
``procs`` are what they share.
"""

from __future__ import annotations

from unitgen.sandbox.client import (
    Sandbox,
    StatePredicate,
    as_user,
    start_system_sandbox,
    start_user_sandbox,
)
from unitgen.sandbox.hardening_probe import HARDENING_KEYS, ProbeResult, probe_units
from unitgen.sandbox.launch import probe
from unitgen.sandbox.layout import (
    CGROUP_PREFIX,
    DEFAULT_BOOT_TIMEOUT,
    INSIDE_HOME,
    INSIDE_RUNTIME,
    JOURNALD,
    SYSTEMD,
    USER_BUS_SOCKET_UNIT,
)
from unitgen.sandbox.reap import STALE_EXIT_WAIT, reap_stale

__all__ = [
    "CGROUP_PREFIX",
    "DEFAULT_BOOT_TIMEOUT",
    "HARDENING_KEYS",
    "INSIDE_HOME",
    "INSIDE_RUNTIME",
    "JOURNALD",
    "STALE_EXIT_WAIT",
    "SYSTEMD",
    "USER_BUS_SOCKET_UNIT",
    "ProbeResult",
    "Sandbox",
    "StatePredicate",
    "as_user",
    "probe",
    "probe_units",
    "reap_stale",
    "start_system_sandbox",
    "start_user_sandbox",
]
