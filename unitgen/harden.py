"""``unitgen harden``: the strictest drop-in an installed unit survives, found by trying.

Every *trial* boots its own container (``unitgen.sandbox``, system scope) with the
host's /usr, /etc and /var, the last two overlaid so that nothing the daemon
writes reaches the host, and copies the operator's own files for the unit in
/etc/systemd/system (a full override, drop-ins) in, so the unit runs as it does
on the host. One container per trial, because daemons change their state on a
first start (``fresh_trial`` says which); each trial then judges the first start
after installing the drop-in, which is the start that matters.

A trial writes the candidate drop-in, starts the unit (``settle`` of
``unitgen.sandbox.hardening_probe``, so "started" is systemd's word), watches
that it stays up for the settle time (same main process, no restart), runs the
probe (``handlers.probes``, inside the container's network namespace), reloads
it when the unit has ``ExecReload=`` and checks again. The candidates come from
``unitgen.hardensearch``; each is rendered from a spec override by
``unitgen.render`` itself, so the ``[override."UNIT"]`` snippet printed at the
end renders exactly the drop-in that was tested.

The baseline (no drop-in) runs first. A unit that does not start or whose
probe never passes without any hardening is bad input: exit 2, nothing written.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from unitgen import hardening
from unitgen.errors import SandboxError, UnitNotFoundError, UsageError
from unitgen.hardensearch import SearchResult, Trial, Verdict, order_items, search
from unitgen.model import Hardening, Override, Spec
from unitgen.paths import Scope
from unitgen.render import DROPIN_NAME, RenderOptions, render
from unitgen.sandbox import Sandbox
from unitgen.sandbox.hardening_probe import ProbeManager, settle
from unitgen.specvalues import CAPABILITIES

__all__ = ["HARDEN_DROPIN", "HardenOptions", "HardenResult", "ProbeArg", "harden", "parse_probe"]

HARDEN_DROPIN = "50-unitgen-harden.conf"
HOST_UNIT_DIR = Path("/etc/systemd/system")  # the operator's own unit files (tests move it)
_SEARCHED_BY_SYSTEMD = Path("/etc/systemd/system")
_POLL = 0.1  # seconds between state reads while a unit settles
# A daemon's own timestamp at the start of its line (nginx's), dropped from reasons.
_TIMESTAMP = re.compile(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d ")
# A line from the daemon that says why it failed, preferred over the manager's summary.
_TELLING = (
    "emerg",
    "error",
    "fail",
    "denied",
    "not permitted",
    "read-only",
    "cannot",
    "can't",
    "fatal",
    "invalid",
)


@dataclass(frozen=True)
class ProbeArg:
    """``--probe`` as given: the mapping ``handlers.probes.ProbeSpec.from_mapping`` reads."""

    kind: str
    target: str | tuple[str, ...]
    timeout: float = 2.0

    def mapping(self) -> dict[str, object]:
        target = self.target if isinstance(self.target, str) else list(self.target)
        return {"kind": self.kind, "target": target, "timeout": self.timeout}


def parse_probe(text: str) -> ProbeArg:
    """``http(s)://...``, ``tcp:HOST:PORT`` or ``cmd ARGV...`` (shell words)."""
    import shlex

    from handlers.probes import ProbeSpec
    from unitgen.errors import PolicyError

    if text.startswith(("http://", "https://")):
        arg = ProbeArg("http", text)
    elif text.startswith("tcp:"):
        arg = ProbeArg("tcp", text.removeprefix("tcp:"))
    elif text.startswith("cmd ") or text.startswith("cmd:"):
        try:
            argv = tuple(shlex.split(text[4:]))
        except ValueError as exc:
            raise UsageError(f"--probe {text!r}: {exc}") from exc
        arg = ProbeArg("command", argv)
    else:
        raise UsageError(
            f"--probe {text!r}: expected http://..., https://..., tcp:HOST:PORT or 'cmd ARGV...'"
        )
    try:
        ProbeSpec.from_mapping(arg.mapping(), where="--probe")
    except PolicyError as exc:
        raise UsageError(str(exc)) from exc
    return arg


@dataclass(frozen=True)
class HardenOptions:
    settle: float = 2.0  # seconds the unit must stay up after starting
    start_timeout: float = 30.0
    # A trial's probe may retry this long. It runs after the settle time, so the daemon
    # has had that long already; a failing probe costs this window plus one timeout.
    probe_window: float = 1.0
    baseline_probe_window: float = 15.0
    confirm: bool = True


@dataclass
class HardenResult:
    unit: str
    hardening: Hardening  # the spec's view of the result
    dropin: str  # 50-unitgen-harden.conf
    snippet: str  # [override."UNIT"] for the spec
    search: SearchResult
    items: list[str]
    capability_items: list[str]
    before: float
    after: float
    seconds: float
    has_reload: bool

    def as_json(self) -> dict[str, object]:
        return {
            "unit": self.unit,
            "exposure_before": self.before,
            "exposure_after": self.after,
            "disable": list(self.hardening.disable),
            "capabilities": (
                None if self.hardening.capabilities is None else list(self.hardening.capabilities)
            ),
            "off": self.search.dropped,
            "trials": [
                {
                    "number": t.number,
                    "change": t.change,
                    "ok": t.verdict.ok,
                    "reason": t.verdict.reason,
                    "seconds": round(t.seconds, 3),
                }
                for t in self.search.trials
            ],
            "seconds": round(self.seconds, 3),
            "reload_checked": self.has_reload,
            "dropin_name": f"{self.unit}.d/{HARDEN_DROPIN}",
            "dropin": self.dropin,
            "spec": self.snippet,
        }


# -- what a set of items means --------------------------------------------------------


def profile_directives(systemd_version: int) -> list[str]:
    """The strict profile's directive names this systemd understands, in profile order."""
    lines = hardening.directives_for("strict", scope=Scope.SYSTEM, systemd_version=systemd_version)
    return list(dict.fromkeys(name for name, _ in lines))


def to_hardening(
    enabled: frozenset[str],
    directives: list[str],
    capability_items: list[str],
    read_write_paths: tuple[str, ...] = (),
) -> Hardening:
    """The spec's hardening table for ``enabled`` (capability items drop a capability)."""
    disable = [d for d in directives if d not in enabled]
    capabilities: tuple[str, ...] | None = None
    if capability_items:
        kept = [c for c in capability_items if c not in enabled]
        if len(kept) == len(capability_items):
            disable.append("CapabilityBoundingSet")
        elif kept:
            capabilities = tuple(sorted(kept))
    return Hardening(
        profile="strict",
        disable=tuple(sorted(disable)),
        capabilities=capabilities,
        read_write_paths=read_write_paths if "ProtectSystem" in enabled else (),
    )


def render_dropin(unit: str, hard: Hardening, systemd_version: int) -> str:
    """The [Service] lines unitgen renders for ``[override."UNIT"] hardening = hard``."""
    spec = Spec(
        path="unitgen harden",
        overrides={unit: Override(unit=unit, hardening=hard, on_failure=False)},
    )
    text = render(spec, RenderOptions(systemd_version=systemd_version))[f"{unit}.d/{DROPIN_NAME}"]
    # The template's first line names a spec file; this drop-in has none.
    return "\n".join(line for line in text.splitlines() if not line.startswith("# Generated by"))


def snippet(unit: str, hard: Hardening, note: str) -> str:
    def toml_list(values: tuple[str, ...]) -> str:
        return "[" + ", ".join(json.dumps(v) for v in values) + "]"

    parts = ['profile = "strict"']
    if hard.disable:
        parts.append(f"disable = {toml_list(hard.disable)}")
    if hard.capabilities is not None:
        parts.append(f"capabilities = {toml_list(hard.capabilities)}")
    if hard.read_write_paths:
        parts.append(f"read_write_paths = {toml_list(hard.read_write_paths)}")
    return f"[override.{json.dumps(unit)}]\n# {note}\nhardening = {{ {', '.join(parts)} }}\n"


def _one_line(text: str, limit: int = 200) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def dropin_text(
    unit: str, hard: Hardening, result: SearchResult, body: str, before: float, after: float
) -> str:
    lines = [
        f"# {unit}: the strictest hardening it survived, found by `unitgen harden`",
        f"# ({len(result.trials)} trials in a disposable container; exposure "
        f"{before:.1f} -> {after:.1f}).",
    ]
    if result.dropped:
        lines.append("# Left off, each because adding it to this set broke the unit:")
        for item, reason in result.dropped.items():
            what = f"capability {item} kept" if item.startswith("CAP_") else f"{item}= off"
            lines.append(f"#   {what}: {_one_line(reason)}")
    if hard.read_write_paths:
        lines.append(
            "# ReadWritePaths=: the directories it failed to write under ProtectSystem=strict "
            "(from its own error lines)."
        )
    lines.append(
        f'# In a spec: [override."{unit}"] hardening = the table `unitgen harden` printed.'
    )
    return "\n".join(lines) + "\n" + body.lstrip("\n").rstrip("\n") + "\n"


def _copy_unit_files(source: Path, unit: str, dest: Path) -> None:
    """The operator's files for ``unit`` in ``source`` (an override, drop-ins) to ``dest``."""
    for path in (source / unit, source / f"{unit}.d"):
        if path.is_symlink() and path.resolve() == Path("/dev/null"):
            raise UsageError(f"{unit}: masked on this host ({path} -> /dev/null)")
        target = dest / path.name
        if path.is_dir():
            shutil.copytree(path, target, symlinks=False)
        elif path.is_file():
            shutil.copyfile(path, target)


# -- the container ---------------------------------------------------------------------


_PROBE_SCRIPT = """
import asyncio, json, sys, time
from handlers.probes import ProbeSpec, probe
spec = ProbeSpec.from_mapping(json.loads(sys.argv[1]))
deadline = time.monotonic() + float(sys.argv[2])
async def main():
    while True:
        r = await probe(spec)
        if r.ok or time.monotonic() >= deadline:
            return r
        await asyncio.sleep(0.1)
r = asyncio.run(main())
print(json.dumps({"ok": r.ok, "detail": r.detail}))
"""


class Bench:
    """One unit in one container: load it, then judge a start (``judge``)."""

    def __init__(
        self, sb: Sandbox, unit: str, probe: ProbeArg | None, options: HardenOptions
    ) -> None:
        self.sb = sb
        self.unit = unit
        self.probe = probe
        self.options = options
        self.mgr = ProbeManager(sb)
        self.has_reload = False
        self.one_shot = False

    def load(self, host_unit_dir: Path) -> dict[str, str]:
        """Copy the host's own files for the unit in, load it; its properties."""
        _copy_unit_files(host_unit_dir, self.unit, self.sb.unit_dir)
        self.sb.daemon_reload()
        props = self.sb.show(
            self.unit,
            "LoadState",
            "ExecReload",
            "CapabilityBoundingSet",
            "DropInPaths",
            "Type",
            "RemainAfterExit",
        )
        if props.get("LoadState") != "loaded":
            raise UnitNotFoundError(
                f"{self.unit}: no such unit on this host (systemd says {props.get('LoadState')!r})"
            )
        if self.mgr.starts_at_fork(self.unit):
            self.mgr.install_exec_dropin(self.unit)
        self.has_reload = bool(props.get("ExecReload", "").strip())
        # A oneshot without RemainAfterExit= is inactive again once it succeeded.
        self.one_shot = props.get("Type") == "oneshot" and props.get("RemainAfterExit") != "yes"
        return props

    def _journal_reason(self, since: float, what: str) -> str:
        """``what``, the manager's word on the exit, and the daemon's first telling line."""
        res = self.sb.run(
            [
                "journalctl",
                "--no-pager",
                "--quiet",
                "-o",
                "json",
                "--output-fields=MESSAGE,_SYSTEMD_UNIT",
                f"--since=@{since:.6f}",
                f"_SYSTEMD_UNIT={self.unit}",
                "+",
                f"UNIT={self.unit}",
            ]
        )
        own: list[str] = []
        manager: list[str] = []
        for line in res.stdout.splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            message = entry.get("MESSAGE")
            if not isinstance(message, str) or not message.strip():
                continue  # binary or empty
            (own if entry.get("_SYSTEMD_UNIT") == self.unit else manager).append(message)
        exits = [m for m in manager if "status=" in m or "Failed at step" in m]
        if exits:
            what = f"{what}; {exits[0].removeprefix(self.unit + ': ')}"
        telling = [m for m in own if any(w in m.lower() for w in _TELLING)]
        if telling:
            return f"{what}: {_TIMESTAMP.sub('', telling[0]).strip()}"
        return what

    def _run_probe(self, window: float) -> tuple[bool, str]:
        if self.probe is None:
            return True, ""
        res = self.sb.run(
            [sys.executable, "-c", _PROBE_SCRIPT, json.dumps(self.probe.mapping()), str(window)],
            timeout=window + self.probe.timeout + 30.0,
        )
        try:
            out = json.loads(res.stdout.strip().splitlines()[-1])
            return bool(out["ok"]), str(out["detail"])
        except (ValueError, IndexError, KeyError, TypeError):
            return False, "the probe did not run: " + _one_line(res.stderr or res.stdout, 160)

    def _stays_up(self, seconds: float, since: float) -> Verdict:
        first = self.sb.show(self.unit, "MainPID", "NRestarts")
        deadline = time.monotonic() + seconds
        while True:
            now = self.sb.show(self.unit, "ActiveState", "MainPID", "NRestarts", "ExecMainStatus")
            if now.get("ActiveState") != "active" or now.get("NRestarts") != first.get("NRestarts"):
                return Verdict(
                    False,
                    self._journal_reason(since, "did not stay up"),
                )
            if now.get("MainPID") != first.get("MainPID"):
                return Verdict(False, self._journal_reason(since, "its main process changed"))
            if time.monotonic() >= deadline:
                return Verdict(True)
            time.sleep(_POLL)

    def judge(self, since: float, probe_window: float) -> Verdict:
        """Start the unit, watch it settle, probe, reload and probe again."""
        started, _status = settle(self.mgr, [self.unit], self.options.start_timeout)[self.unit]
        if self.one_shot:
            # Done when its start job is: it ran to the end, with success or not.
            result = self.sb.show(self.unit, "Result", "ExecMainStatus")
            if result.get("Result") != "success":
                what = f"did not run to success (result {result.get('Result')})"
                return Verdict(False, self._journal_reason(since, what))
            ok, detail = self._run_probe(probe_window)
            return Verdict(True) if ok else Verdict(False, f"probe failed: {detail}")
        if not started:
            return Verdict(False, self._journal_reason(since, "did not start"))
        verdict = self._stays_up(self.options.settle, since)
        if not verdict.ok:
            return verdict
        ok, detail = self._run_probe(probe_window)
        if not ok:
            return Verdict(False, self._journal_reason(since, f"probe failed: {detail}"))
        if not self.has_reload:
            return Verdict(True)
        res = self.sb.systemctl("reload", self.unit, timeout=self.options.start_timeout)
        if res.returncode != 0:
            return Verdict(False, self._journal_reason(since, "ExecReload= failed"))
        verdict = self._stays_up(min(self.options.settle, 1.0), since)
        if not verdict.ok:
            return Verdict(False, "after ExecReload=: " + verdict.reason)
        ok, detail = self._run_probe(probe_window)
        return Verdict(True) if ok else Verdict(False, f"probe failed after ExecReload=: {detail}")


def fresh_trial(
    unit: str,
    probe: ProbeArg | None,
    options: HardenOptions,
    host_unit_dir: Path,
    dropin: str | None,
    *,
    probe_window: float,
) -> tuple[Verdict, dict[str, str]]:
    """Judge ``unit`` under ``dropin`` (None: as installed) in a container of its own.

    Its own, because daemons change their state on a first start (nginx creates and
    chowns /var/lib/nginx/body as root): in a container shared by all trials, a
    later trial would find that done and pass without the capability it needs on
    the host's first start after installing the drop-in. Returns the unit's
    properties as loaded, too.
    """
    try:
        sb = Sandbox.start(Scope.SYSTEM, host_var=True)
    except SandboxError as exc:
        raise SandboxError(f"unitgen harden needs the system sandbox: {exc}") from exc
    with sb:
        if dropin is not None:
            sb.install_units({f"{unit}.d/{HARDEN_DROPIN}": dropin}, reload=False)
        bench = Bench(sb, unit, probe, options)
        props = bench.load(host_unit_dir)
        return bench.judge(time.time(), probe_window), props


# "open() "/run/nginx.pid" failed (30: Read-only file system)", "sh: 1: cannot
# create /etc/x: Read-only file system": the paths a ProtectSystem=strict unit wanted.
_EROFS_PATH = re.compile(r'"(/[^"]+)"|(/[^\s:"]+): Read-only file system')
WRITE_PATH_ROUNDS = 4


def erofs_directories(reason: str) -> list[str]:
    """Directories whose read-only mount ``reason`` (a trial's journal line) complains of."""
    if "Read-only file system" not in reason:
        return []
    found: list[str] = []
    for quoted, bare in _EROFS_PATH.findall(reason):
        parent = str(Path(quoted or bare).parent)
        if parent != "/" and ".." not in parent.split("/"):
            found.append(parent)
    return list(dict.fromkeys(found))


def _open_write_paths(
    result: SearchResult,
    trial: Callable[[tuple[str, ...]], Verdict],
    on_trial: Callable[[Trial], None] | None,
) -> tuple[str, ...]:
    """ProtectSystem=strict back on, with the directories it made read-only writable.

    Only when ProtectSystem= had to stay off because of a read-only file system:
    each round adds the directories the last failure named (a daemon reports one
    at a time) and tries again, at most WRITE_PATH_ROUNDS times. The directories
    come from the daemon's own words, so nothing is guessed; a round that names
    nothing new ends it, and ProtectSystem= then stays off as it was.
    """
    reason = result.dropped.get("ProtectSystem", "")
    paths: list[str] = []
    for _ in range(WRITE_PATH_ROUNDS):
        new = [d for d in erofs_directories(reason) if d not in paths]
        if not new:
            return ()
        paths.extend(new)
        start = time.monotonic()
        verdict = trial(tuple(paths))
        record = Trial(
            len(result.trials) + 1,
            "+ProtectSystem, ReadWritePaths=" + " ".join(paths),
            result.enabled | {"ProtectSystem"},
            verdict,
            time.monotonic() - start,
        )
        result.trials.append(record)
        if on_trial is not None:
            on_trial(record)
        if verdict.ok:
            result.enabled = result.enabled | {"ProtectSystem"}
            del result.dropped["ProtectSystem"]
            return tuple(paths)
        reason = verdict.reason
    return ()


def exposure_with(unit: str, dropin: str | None, unit_dir: Path) -> float:
    """``systemd-analyze security --offline=yes`` of the host's unit, plus ``dropin``."""
    from unitgen.verify import exposure

    with tempfile.TemporaryDirectory(prefix="unitgen-harden-") as tmp:
        if unit_dir != _SEARCHED_BY_SYSTEMD:
            _copy_unit_files(unit_dir, unit, Path(tmp))
        name = unit
        if dropin is not None:
            path = Path(tmp) / f"{unit}.d" / HARDEN_DROPIN
            path.parent.mkdir()
            path.write_text(dropin, encoding="utf-8")
            name = f"{unit}.d/{HARDEN_DROPIN}"
        else:
            name = f"{unit}.d/none"  # the unit as installed: nothing added in front
        return exposure(Path(tmp), name, Scope.SYSTEM)


def harden(
    unit: str,
    probe: ProbeArg | None,
    *,
    systemd_version: int,
    options: HardenOptions = HardenOptions(),
    on_trial: Callable[[Trial], None] | None = None,
    on_note: Callable[[str], None] | None = None,
    host_unit_dir: Path | None = None,
) -> HardenResult:
    """Find the strictest drop-in ``unit`` survives; see the module's doc."""
    from unitgen.unitnames import managed_unit_problem

    problem = managed_unit_problem(unit, types=frozenset({"service"}))
    if problem is not None:
        raise UsageError(f"unit {unit!r}: expected {problem}")
    note = on_note or (lambda _: None)
    host_unit_dir = host_unit_dir or HOST_UNIT_DIR
    started = time.monotonic()
    directives = profile_directives(systemd_version)
    baseline, props = fresh_trial(
        unit, probe, options, host_unit_dir, None, probe_window=options.baseline_probe_window
    )
    has_reload = bool(props.get("ExecReload", "").strip())
    vendor_caps = props.get("CapabilityBoundingSet", "").upper().split()
    capability_items = [c for c in vendor_caps if c in CAPABILITIES]
    if capability_items:
        directives = [d for d in directives if d != "CapabilityBoundingSet"]
    if not baseline.ok and baseline.reason.startswith("probe failed"):
        raise UsageError(
            f"--probe never passed against {unit} as installed, without any hardening: "
            f"{_one_line(baseline.reason)}"
        )
    if not baseline.ok:
        raise UsageError(
            f"{unit} fails without any hardening, so there is nothing to harden: "
            f"{_one_line(baseline.reason)}"
        )
    before = exposure_with(unit, None, host_unit_dir)
    note(
        f"{unit}: starts as installed"
        + (", probe passes" if probe else "")
        + (", ExecReload= works" if has_reload else "")
    )
    items = order_items(directives, capability_items)

    def bench_oracle(enabled: frozenset[str], paths: tuple[str, ...] = ()) -> Verdict:
        hard = to_hardening(enabled, directives, capability_items, paths)
        dropin = render_dropin(unit, hard, systemd_version)
        verdict, _ = fresh_trial(
            unit, probe, options, host_unit_dir, dropin, probe_window=options.probe_window
        )
        return verdict

    def oracle(enabled: frozenset[str]) -> Verdict:
        return bench_oracle(enabled)

    result = search(items, oracle, confirm=options.confirm, on_trial=on_trial)
    paths = _open_write_paths(
        result,
        lambda paths: bench_oracle(result.enabled | {"ProtectSystem"}, paths),
        on_trial,
    )
    hard = to_hardening(result.enabled, directives, capability_items, paths)
    body = render_dropin(unit, hard, systemd_version)
    after = exposure_with(unit, body, host_unit_dir)
    seconds = time.monotonic() - started
    text = dropin_text(unit, hard, result, body, before, after)
    spec_note = f"unitgen harden: {len(result.trials)} trials, exposure {before:.1f} -> {after:.1f}"
    return HardenResult(
        unit=unit,
        hardening=hard,
        dropin=text,
        snippet=snippet(unit, hard, spec_note),
        search=result,
        items=items,
        capability_items=capability_items,
        before=before,
        after=after,
        seconds=seconds,
        has_reload=has_reload,
    )
