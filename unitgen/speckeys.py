"""The spec's key table: every key, its type, default, meaning and systemd directive.

Over 800 lines on purpose: it is one table, with the rules that span its keys,
and its value is that every key is in one place. The generic node types are in
``unitgen.specnodes``, the checks of single string values in ``unitgen.specvalues``.

This is the single description of the spec file. ``unitgen.specfile`` validates
and converts with it, ``unitgen.schema`` turns it into JSON Schema, and the
tests hold ``docs/spec.md`` to it. Add a key here and all three follow.

Leaf tables build their model objects directly; ``[service.NAME]`` and
``[override."UNIT"]`` stay plain mappings here because filling them in needs
``[defaults]`` (``unitgen.specfile`` does that).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from unitgen.model import (
    AlertOn,
    Backoff,
    Cleanup,
    Disk,
    Health,
    Limits,
    Memory,
    Probe,
    Recovery,
    Restart,
    Threshold,
)
from unitgen.specnodes import (
    FORBIDDEN_CHARS,
    INVALID,
    Argv,
    Boolean,
    ByType,
    Choice,
    Collector,
    Computed,
    Duration,
    Field,
    Integer,
    ListOf,
    MapOf,
    Node,
    Number,
    Percent,
    SizeOrPercent,
    Table,
    Tagged,
    Text,
    ThresholdNode,
    join_key,
)
from unitgen.specnodes import (
    JSON as JSONNode,
)
from unitgen.specvalues import (
    absolute_path,
    alert_name,
    capability_name,
    cleanup_root,
    credential_name,
    dependency_unit,
    directive_name,
    email_address,
    env_name,
    host_port,
    http_url,
    label_name,
    optional_absolute_path,
    override_unit,
    relative_directory,
    secret_env,
    secret_file,
    service_name,
    smtp_host,
    user_or_group,
)

__all__ = ["ALERT_TYPES", "HARDENING_PROFILES", "SPEC"]

HARDENING_PROFILES = ("strict", "standard", "minimal", "off")
ALERT_TYPES = ("webhook", "slack", "alertmanager", "email", "command")

# Defaults that are not a literal value: documented, but kept out of the JSON Schema.
INHERITED_HARDENING = Computed("the value of defaults.hardening")
INHERITED_ALERTS = Computed("the value of defaults.alerts")
NAME_DEFAULT = Computed('"NAME (unitgen)"')
AFTER_GIVE_UP_DEFAULT = Computed(
    '"park" for a unit with depends or a health probe, and for any unit whose dependency '
    'stayed down; else "stop"'
)
PARK_INTERVAL_MAX = 86_400.0  # a parked unit is retried at least daily, with its reminder
PARK_INTERVAL_MIN = 1.0

# -- nodes used in several places ----------------------------------------------------

PATH = Text(absolute_path, type_doc="absolute path", pattern="^/")
PATHS = ListOf(PATH)
CLEANUP_PATHS = ListOf(Text(cleanup_root, type_doc="absolute path", pattern="^/"))
UNITS = ListOf(Text(dependency_unit, type_doc="unit name"), unique=True)
DIRS = ListOf(Text(relative_directory, type_doc="relative directory"), one_or_many=True)
ARGV = Argv(absolute_path)


# handlers.probes refuses longer probe timeouts when it reads the policy.
PROBE_TIMEOUT = Duration(positive=True, maximum=300.0)


def _probe_fields(command_doc: str) -> dict[str, Field]:
    return {
        "http": Field(
            Text(http_url, type_doc="URL", pattern="^https?://"),
            "probe: GET this URL; any 2xx/3xx passes",
        ),
        "tcp": Field(
            Text(host_port, type_doc="host:port"), "probe: a TCP connect to 'host:port' succeeds"
        ),
        "command": Field(ARGV, command_doc),
    }


class StatusCodes(Node):
    """HTTP statuses that pass: 200, "2xx" or "200-299", alone or in a list -> ranges."""

    type_doc = 'status, "Nxx", "A-B", or a list of them'
    _TEXT = re.compile(r"([1-5])xx|([1-5][0-9][0-9])-([1-5][0-9][0-9])")

    def check(self, value: object, key: str, out: Collector) -> object:
        items = value if isinstance(value, list) else [value]
        if not items or len(items) > 64:
            out.add(key, "expected 1 to 64 statuses")
            return INVALID
        ranges: list[tuple[int, int]] = []
        for i, item in enumerate(items):
            where = f"{key}[{i}]" if isinstance(value, list) else key
            if isinstance(item, str) and FORBIDDEN_CHARS.search(item):
                return INVALID  # the pre-scan in specfile reported it, at this very key
            one = self._one(item)
            if one is None:
                out.expected(where, 'an HTTP status from 100 to 599, "2xx" or "200-299"', item)
                return INVALID
            ranges.append(one)
        return tuple(sorted(set(ranges)))

    def _one(self, item: object) -> tuple[int, int] | None:
        if isinstance(item, int) and not isinstance(item, bool):
            return (item, item) if 100 <= item <= 599 else None
        if not isinstance(item, str):
            return None
        match = self._TEXT.fullmatch(item)
        if match is None:
            return None
        if match.group(1):
            low = int(match.group(1)) * 100
            return low, low + 99
        low, high = int(match.group(2)), int(match.group(3))
        return (low, high) if low <= high else None

    def schema(self) -> JSONNode:
        one: JSONNode = {
            "anyOf": [
                {"type": "integer", "minimum": 100, "maximum": 599},
                {"type": "string", "pattern": "^([1-5]xx|[1-5][0-9][0-9]-[1-5][0-9][0-9])$"},
            ]
        }
        return {"anyOf": [one, {"type": "array", "items": one, "minItems": 1, "maxItems": 64}]}


# handlers.probes reads at most this much of a body when it looks for expect_body.
EXPECT_BODY_MAX = 1024

_HTTP_MATCH_FIELDS: dict[str, Field] = {
    "expect_status": Field(
        StatusCodes(),
        'http: the statuses that pass, like [200, 204] or "2xx"; default any 2xx/3xx',
    ),
    "expect_body": Field(
        Text(min_length=1, max_length=EXPECT_BODY_MAX, type_doc="non-empty string"),
        "http: the body's first 64 KiB must contain this text (matched as UTF-8 bytes)",
    ),
}


def _http_only(d: Mapping[str, Any], key: str, out: Collector) -> bool:
    if "http" in d:
        return True
    ok = True
    for name in _HTTP_MATCH_FIELDS:
        if name in d:
            out.add(join_key(key, name), "only an http probe checks this; remove it or use http")
            ok = False
    return ok


def _probe(d: Mapping[str, Any]) -> Probe:
    for kind in ("http", "tcp", "command"):
        if kind in d:
            return Probe(
                kind=kind,
                target=d[kind],
                timeout=d.get("timeout", 2.0),
                expect_status=d.get("expect_status", ()),
                expect_body=d.get("expect_body"),
            )
    raise AssertionError("one_of guarantees a probe kind")  # pragma: no cover


STARTUP = Table(
    {
        **_probe_fields("probe: run this argv; exit status 0 passes"),
        "timeout": Field(PROBE_TIMEOUT, "a probe that takes longer fails (at most 5min)", "2s"),
        **_HTTP_MATCH_FIELDS,
    },
    one_of=[("http", "tcp", "command")],
    checks=[_http_only],
    build=_probe,
    doc=(
        "A start-up probe (Kubernetes' startupProbe) used in place of the health probe "
        "until the service has started; runs every start_interval for at most start_period."
    ),
)


def _start_rule(d: Mapping[str, Any], key: str, out: Collector) -> bool:
    period = d.get("start_period", Health.start_period)
    if d.get("gate") and period <= 0:
        out.add(
            join_key(key, "start_period"),
            "expected a positive start_period with gate = true (it bounds the wait for health)",
        )
        return False
    return True


HEALTH = Table(
    {
        **_probe_fields("probe: run this argv; exit status 0 passes"),
        "interval": Field(Duration(positive=True), "time between probes", "10s"),
        "timeout": Field(PROBE_TIMEOUT, "a probe that takes longer fails (at most 5min)", "2s"),
        "failures": Field(Integer(1, 1000), "consecutive failed probes that open an incident", 3),
        **_HTTP_MATCH_FIELDS,
        "successes": Field(
            Integer(1, 1000),
            "consecutive passed probes before the service counts as healthy (and started)",
            1,
        ),
        "start_period": Field(
            Duration(maximum=86_400.0),
            "after each start failures do not count until the start-up probe passes, "
            "which it must within this time (Docker's start_period); 0 turns it off",
            "2min",
        ),
        "start_interval": Field(
            Duration(positive=True, maximum=3600.0),
            "time between probes during the start period (Docker's start_interval)",
            "1s",
        ),
        "startup": Field(STARTUP, "a different probe for the start period; default the probe"),
        "gate": Field(
            Boolean(),
            "started means healthy: an ExecStartPost= waits for the start-up probe, so "
            "After= on this unit orders on health",
            False,
            "ExecStartPost=",
        ),
    },
    one_of=[("http", "tcp", "command")],
    checks=[_http_only, _start_rule],
    build=lambda d: Health(
        probe=_probe(d),
        **{
            k: d[k]
            for k in (
                "interval",
                "failures",
                "successes",
                "start_period",
                "start_interval",
                "startup",
                "gate",
            )
            if k in d
        },
    ),
    doc="The service's own health check, run by the recovery ladder.",
)

DEPENDENCY = Table(
    {
        **_probe_fields("probe: run this argv; exit status 0 passes"),
        "timeout": Field(PROBE_TIMEOUT, "a probe that takes longer fails (at most 5min)", "2s"),
        **_HTTP_MATCH_FIELDS,
    },
    one_of=[("http", "tcp", "command")],
    checks=[_http_only],
    build=_probe,
    doc="An external dependency the ladder checks before blaming the service.",
)


def _start_limit_rule(d: Mapping[str, Any], key: str, out: Collector) -> bool:
    """A policy whose restarts are spread wider than the interval never trips the limit."""
    policy = d.get("policy", Restart.policy)
    delay = d.get("delay", Restart.delay)
    burst = d.get("burst", Restart.burst)
    interval = d.get("interval", Restart.interval)
    if policy == "no":
        return True
    spread = delay * (burst - 1)
    if spread >= interval:
        out.add(
            key,
            f"the start limit can never trip: delay {delay:g}s x (burst {burst} - 1) = "
            f"{spread:g}s >= interval {interval:g}s, so {burst} starts never fit in one interval "
            "and a crash loop restarts forever; shorten delay, lower burst, or lengthen interval "
            f"beyond {spread:g}s",
        )
        return False
    return True


RESTART = Table(
    {
        "policy": Field(
            Choice(
                (
                    "no",
                    "on-success",
                    "on-failure",
                    "on-abnormal",
                    "on-watchdog",
                    "on-abort",
                    "always",
                )
            ),
            "when systemd restarts the service by itself",
            "on-failure",
            "Restart=",
        ),
        "delay": Field(Duration(), "wait before each automatic restart", "100ms", "RestartSec="),
        "burst": Field(
            Integer(1, 10_000),
            "starts allowed within interval before the unit fails for good",
            5,
            "StartLimitBurst=",
        ),
        "interval": Field(
            Duration(positive=True),
            "the window burst is counted in",
            "10s",
            "StartLimitIntervalSec=",
        ),
    },
    checks=[_start_limit_rule],
    build=lambda d: Restart(**d),
    doc="systemd's own first line of restarts.",
)

LIMITS = Table(
    {
        "memory_max": Field(
            SizeOrPercent(percent=True),
            "hard memory limit: bytes ('1G') or share of RAM ('80%')",
            None,
            "MemoryMax=",
        ),
        "memory_high": Field(
            SizeOrPercent(percent=True), "memory throttling threshold", None, "MemoryHigh="
        ),
        "cpu_quota": Field(
            Percent(maximum=None), "CPU time share; '200%' is two full CPUs", None, "CPUQuota="
        ),
        "tasks_max": Field(
            Integer(1, 4_194_304),
            "maximum number of tasks (threads and processes)",
            None,
            "TasksMax=",
        ),
        "nofile": Field(
            Integer(1, 1 << 30), "maximum number of open file descriptors", None, "LimitNOFILE="
        ),
    },
    build=lambda d: Limits(**d),
    doc="Resource limits.",
)

CLEANUP = Table(
    {
        "pidfile": Field(PATH, "stale PID file the ladder removes when its process is gone"),
        "temp": Field(
            CLEANUP_PATHS,
            "directories whose old files the ladder may delete; never a system directory "
            "such as /var/tmp itself (unitgen/sysroots.py)",
            [],
        ),
        "older_than": Field(Duration(), "only files older than this are deleted", "1h"),
    },
    build=lambda d: Cleanup(**d),
    doc="What the recovery ladder may clean before restarting.",
)

DISK = Table(
    {
        "paths": Field(PATHS, "file systems to check for free space", []),
        "min_free": Field(
            ThresholdNode(lambda p, b: Threshold(p, b), sizes=True),
            "free-space floor: '10%', '1G' or both as a list",
            "5%",
        ),
        "min_free_inodes": Field(
            ThresholdNode(lambda p, b: Threshold(p, b), sizes=False),
            "free-inode floor: '5%', a count, or both",
            "5%",
        ),
        "cleanup": Field(
            CLEANUP_PATHS,
            "directories whose old files may be deleted when space runs low; never a system "
            "directory, as for cleanup.temp",
            [],
        ),
    },
    build=lambda d: Disk(**d),
    doc="Disk checks run by the recovery ladder.",
)

MEMORY = Table(
    {
        "min_available": Field(
            ThresholdNode(lambda p, b: Threshold(p, b), sizes=True),
            "available-memory floor: '5%', '512M' or both",
            "5%",
        ),
    },
    build=lambda d: Memory(**d),
    doc="Memory checks run by the recovery ladder.",
)

BACKOFF = Table(
    {
        "base": Field(Duration(), "wait before the ladder's first restart", "5s"),
        "factor": Field(Number(1.0, 100.0), "each later wait is this many times the previous", 2.0),
        "max": Field(Duration(), "the wait never exceeds this", "5min"),
        "jitter": Field(Number(0.0, 1.0), "random +/- fraction applied to each wait", 0.1),
    },
    build=lambda d: Backoff(**d),
    doc="Waits between the ladder's restarts.",
)


def _park_interval_rule(d: Mapping[str, Any], key: str, out: Collector) -> bool:
    """A parked unit retried more often than every second would be a restart loop."""
    interval = d.get("park_interval", Recovery.park_interval)
    if interval < PARK_INTERVAL_MIN:
        out.add(
            f"{key}.park_interval",
            f"expected a duration of at least {PARK_INTERVAL_MIN:g}s (a parked unit is "
            f"retried this often), got {interval:g}s",
        )
        return False
    return True


RECOVERY = Table(
    {
        "max_attempts": Field(
            Integer(1, 1000), "restarts the ladder tries within window before giving up", 5
        ),
        "window": Field(Duration(positive=True), "the window max_attempts is counted in", "10min"),
        "min_uptime": Field(
            Duration(), "a restart that fails again sooner counts as failed", "30s"
        ),
        "stable_after": Field(Duration(), "this long without failure resets the counts", "10min"),
        "start_timeout": Field(
            Duration(positive=True), "how long the ladder waits for 'active' after a restart", "90s"
        ),
        "validate_timeout": Field(
            Duration(positive=True), "how long the validate command may run", "30s"
        ),
        "backoff": Field(BACKOFF, "waits between restarts"),
        "after_give_up": Field(
            Choice(("stop", "park")),
            'once the ladder would give up: "stop" leaves the unit failed until `unitgen '
            'reset`; "park" retries it every park_interval, and at once when the dependency, '
            "health probe or disk it waits for is back",
            AFTER_GIVE_UP_DEFAULT,
        ),
        "park_interval": Field(
            Duration(positive=True, maximum=PARK_INTERVAL_MAX),
            "how often a parked unit is retried (one bounded ladder run each time)",
            "10min",
        ),
    },
    checks=[_park_interval_rule],
    build=lambda d: Recovery(**d),
    doc="The recovery ladder's budget.",
)


def _capabilities_rule(d: Mapping[str, Any], key: str, out: Collector) -> bool:
    """A capability list and dropping CapabilityBoundingSet= say opposite things."""
    if "capabilities" in d and "CapabilityBoundingSet" in d.get("disable", ()):
        out.add(
            f"{key}.capabilities",
            'contradicts disable = ["CapabilityBoundingSet"]: keep the list (only those '
            "capabilities) or the disable (all of them), not both",
        )
        return False
    return True


HARDENING_TABLE = Table(
    {
        "profile": Field(
            Choice(HARDENING_PROFILES),
            "the sandboxing profile (see docs/hardening.md)",
            INHERITED_HARDENING,
        ),
        "disable": Field(
            ListOf(Text(directive_name, type_doc="directive name"), unique=True),
            "profile directives this service opts out of",
            [],
        ),
        "read_write_paths": Field(
            PATHS, "paths the service may write despite the profile", [], "ReadWritePaths="
        ),
        "capabilities": Field(
            ListOf(Text(capability_name, type_doc="capability name"), unique=True),
            "the only capabilities the service keeps, in place of the profile's choice "
            "(strict keeps none, the others all); [] keeps none",
            None,
            "CapabilityBoundingSet=",
        ),
    },
    checks=[_capabilities_rule],
    doc="A profile with per-service escape hatches.",
)

HARDENING = ByType(Choice(HARDENING_PROFILES), HARDENING_TABLE, lambda p: {"profile": p})

ENVIRONMENT = MapOf(
    Text(max_length=32_768), env_name, key_doc="NAME", key_pattern="^[A-Za-z_][A-Za-z0-9_]*$"
)

ALERT_NAMES = ListOf(Text(alert_name, type_doc="alert name"), unique=True)

ALERT_ON = Table(
    {
        "restarts": Field(
            Integer(2, 1000), "crashes (restarted by systemd or the ladder) that make it flap", 3
        ),
        "within": Field(
            Duration(positive=True, maximum=86400.0),
            "the window they are counted in (at most 1 day); one alert per window",
            "10min",
        ),
    },
    build=lambda d: AlertOn(**d),
    doc="The flapping alert: one alert, with a digest of the crashes, per window.",
)

_COMMON_SERVICE_FIELDS: dict[str, Field] = {
    "restart": Field(RESTART, "systemd's automatic restarts and start limit"),
    "limits": Field(LIMITS, "resource limits"),
    "health": Field(HEALTH, "health probe"),
    "depends": Field(ListOf(DEPENDENCY), "external dependencies probed by the ladder", []),
    "cleanup": Field(CLEANUP, "what the ladder may clean"),
    "disk": Field(DISK, "disk checks"),
    "memory": Field(MEMORY, "memory checks"),
    "validate": Field(
        ARGV, "a config check run before each ladder restart; non-zero exit stops the ladder"
    ),
    "recovery": Field(RECOVERY, "the recovery ladder's budget"),
    "alerts": Field(ALERT_NAMES, "alert targets for this unit", INHERITED_ALERTS),
    "alert_on": Field(ALERT_ON, "opt-in flapping alert to the unit's alert targets"),
}

SERVICE = Table(
    {
        "description": Field(
            Text(max_length=1024), "human-readable description", NAME_DEFAULT, "Description="
        ),
        "exec": Field(
            ARGV, "the command line; exec[0] absolute", None, "ExecStart=", required=True
        ),
        "type": Field(
            Choice(("simple", "exec", "notify", "forking")),
            "how systemd tells the service is up",
            "simple",
            "Type=",
        ),
        "exec_start_pre": Field(ListOf(ARGV), "commands run before exec", [], "ExecStartPre="),
        "exec_reload": Field(ARGV, "the reload command", None, "ExecReload="),
        "working_directory": Field(PATH, "the working directory", None, "WorkingDirectory="),
        "user": Field(Text(user_or_group, type_doc="user name"), "run as this user", None, "User="),
        "group": Field(
            Text(user_or_group, type_doc="group name"), "run as this group", None, "Group="
        ),
        "dynamic_user": Field(
            Boolean(), "run as a transient user systemd allocates", False, "DynamicUser="
        ),
        "environment": Field(ENVIRONMENT, "environment variables", {}, "Environment="),
        "environment_files": Field(
            ListOf(Text(optional_absolute_path, type_doc="absolute path", pattern="^-?/")),
            "files of VAR=value lines; a '-' prefix ignores a missing file",
            [],
            "EnvironmentFile=",
        ),
        "pidfile": Field(PATH, "PID file of a forking service", None, "PIDFile="),
        "requires": Field(UNITS, "units this one needs; it stops if they stop", [], "Requires="),
        "wants": Field(UNITS, "units started along with this one", [], "Wants="),
        "after": Field(UNITS, "start after these units", [], "After="),
        "before": Field(UNITS, "start before these units", [], "Before="),
        "binds_to": Field(
            UNITS, "like requires, and also stop when they stop unexpectedly", [], "BindsTo="
        ),
        "part_of": Field(UNITS, "stop and restart along with these units", [], "PartOf="),
        "wanted_by": Field(UNITS, "targets that pull this unit in when enabled", [], "WantedBy="),
        "state_directory": Field(
            DIRS, "directories under /var/lib (or $XDG_STATE_HOME)", [], "StateDirectory="
        ),
        "runtime_directory": Field(DIRS, "directories under /run", [], "RuntimeDirectory="),
        "logs_directory": Field(DIRS, "directories under /var/log", [], "LogsDirectory="),
        "cache_directory": Field(DIRS, "directories under /var/cache", [], "CacheDirectory="),
        "configuration_directory": Field(
            DIRS, "directories under /etc", [], "ConfigurationDirectory="
        ),
        "timeout_start": Field(
            Duration(positive=True), "how long starting may take", None, "TimeoutStartSec="
        ),
        "timeout_stop": Field(
            Duration(positive=True), "how long stopping may take", None, "TimeoutStopSec="
        ),
        "watchdog": Field(
            Duration(positive=True),
            "the service must ping sd_notify WATCHDOG=1 this often",
            None,
            "WatchdogSec=",
        ),
        "hardening": Field(
            HARDENING, "sandboxing profile, or a table with escape hatches", INHERITED_HARDENING
        ),
        **_COMMON_SERVICE_FIELDS,
    },
    doc="A service unitgen owns: rendered as NAME.service.",
)


def _no_gate_in_override(d: Mapping[str, Any], key: str, out: Collector) -> bool:
    # The gate needs NotifyAccess=exec, which a drop-in would impose on the vendor's
    # own notifications (narrowing an "all" it may rely on).
    health = d.get("health")
    if isinstance(health, Health) and health.gate:
        out.add(
            join_key(join_key(key, "health"), "gate"),
            "expected false: a drop-in cannot gate a vendor's unit on health "
            "(it would replace the unit's NotifyAccess=); use a [service.NAME] of your own",
        )
        return False
    return True


OVERRIDE = Table(
    {
        **_COMMON_SERVICE_FIELDS,
        "hardening": Field(HARDENING, "sandboxing added by the drop-in; unset keeps the vendor's"),
        "on_failure": Field(Boolean(), "wire OnFailure= to the recovery unit", True, "OnFailure="),
    },
    # A drop-in adds to a vendor's unit; what it runs and how is the vendor's to say.
    refused={
        name: f"{name} is only for [service.NAME]; a drop-in keeps the vendor unit's own "
        + (spec_field.directive or "setting")
        for name, spec_field in SERVICE.fields.items()
        if name not in _COMMON_SERVICE_FIELDS and name != "hardening"
    },
    checks=[_no_gate_in_override],
    doc="A unit the operator does not own: rendered as a drop-in UNIT.d/NN-unitgen.conf.",
)

DEFAULTS = Table(
    {
        "hardening": Field(
            Choice(HARDENING_PROFILES), "profile for services that name none", "strict"
        ),
        "alerts": Field(ALERT_NAMES, "alert targets for units that name none", []),
        "max_restarts_per_second": Field(
            Integer(0, 100000),
            "host-wide limit on the listener's ladder restarts per second (0: no limit)",
            0,
        ),
    },
    doc="Defaults for every service and override.",
)

# -- alerts --------------------------------------------------------------------------

# Alertmanager's resend interval: checked in the spec, and again on every alert target a
# policy hands the runtime (unitgen.alertconfig validates through this same table).
RESEND_INTERVAL = Duration(positive=True, minimum=30.0, maximum=180.0)

# Not a secret: the message that refuses one.
_INLINE_SECRET = "secrets come from files or the environment: use url_file or url_env"  # noqa: S105
_REFUSED_SECRETS = {
    "url": _INLINE_SECRET,
    "token": _INLINE_SECRET,
    "password": "secrets come from files or the environment: use password_file or password_env",
}

_ALERT_COMMON: dict[str, Field] = {
    "type": Field(Choice(ALERT_TYPES), "the kind of target", None, required=True),
    "timeout": Field(
        Duration(positive=True, maximum=60.0), "per-attempt connect and read timeout", "5s"
    ),
    "retries": Field(Integer(0, 10), "retries after the first attempt", 3),
    "send_resolved": Field(Boolean(), "also notify when the incident is resolved", True),
}

SECRET_FILE = Text(secret_file, type_doc="absolute path", pattern="^/")
SECRET_ENV = Text(secret_env, type_doc="variable name", pattern="^[A-Za-z_][A-Za-z0-9_]*$")
SECRET_CREDENTIAL = Text(
    credential_name, type_doc="credential name", pattern="^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$"
)

_URL_SOURCE: dict[str, Field] = {
    "url_file": Field(SECRET_FILE, "file holding the URL (the URL is the credential)"),
    "url_env": Field(SECRET_ENV, "environment variable holding the URL"),
    "url_credential": Field(
        SECRET_CREDENTIAL,
        "systemd credential holding the URL: unitgen's units get LoadCredential=NAME:"
        "/etc/unitgen/credentials/NAME (docs/alerts.md)",
    ),
}


def _email_rules(d: Mapping[str, Any], key: str, out: Collector) -> bool:
    has_password = "password_file" in d or "password_env" in d or "password_credential" in d
    if "username" not in d:
        if has_password:
            out.add(f"{key}.username", "missing: a password was given without a username")
            return False
        return True
    if not has_password:
        out.add(f"{key}.password_file", "missing: username needs password_file or password_env")
        return False
    if not d.get("starttls", False):
        out.add(f"{key}.starttls", "must be true when username is set (no clear-text login)")
        return False
    return True


def _alert_table(fields: Mapping[str, Field], **kwargs: Any) -> Table:
    return Table({**_ALERT_COMMON, **fields}, refused=_REFUSED_SECRETS, **kwargs)


ALERT = Tagged(
    "type",
    {
        "webhook": _alert_table(_URL_SOURCE, one_of=[("url_file", "url_env", "url_credential")]),
        "slack": _alert_table(_URL_SOURCE, one_of=[("url_file", "url_env", "url_credential")]),
        "alertmanager": _alert_table(
            {
                **_URL_SOURCE,
                "labels": Field(
                    MapOf(Text(max_length=1024), label_name, key_doc="LABEL"),
                    "extra labels on every alert",
                    {},
                ),
                "resend_interval": Field(
                    RESEND_INTERVAL,
                    "re-send firing alerts this often (30s to 3min); endsAt is 4 of these ahead",
                    "1min",
                ),
                "generator_url": Field(
                    Text(http_url, type_doc="URL", pattern="^https?://"),
                    "generatorURL of every alert (the link back to where it came from)",
                ),
            },
            one_of=[("url_file", "url_env", "url_credential")],
        ),
        "email": _alert_table(
            {
                "smtp_host": Field(
                    Text(smtp_host, type_doc="host"), "SMTP server", None, required=True
                ),
                "smtp_port": Field(Integer(1, 65535), "SMTP port", 25),
                "starttls": Field(Boolean(), "upgrade the connection with STARTTLS", False),
                "from": Field(
                    Text(email_address, type_doc="address"), "sender address", None, required=True
                ),
                "to": Field(
                    ListOf(Text(email_address, type_doc="address"), min_items=1),
                    "recipients",
                    None,
                    required=True,
                ),
                "username": Field(
                    Text(min_length=1, max_length=256), "SMTP login (needs starttls = true)"
                ),
                "password_file": Field(SECRET_FILE, "file holding the SMTP password"),
                "password_env": Field(SECRET_ENV, "environment variable holding the SMTP password"),
                "password_credential": Field(
                    SECRET_CREDENTIAL, "systemd credential holding the SMTP password"
                ),
            },
            at_most_one=[("password_file", "password_env", "password_credential")],
            checks=[_email_rules],
        ),
        "command": _alert_table(
            {
                "command": Field(
                    ARGV,
                    "argv run with the alert in its environment (UNITGEN_ALERT, docs/alerts.md)",
                    None,
                    required=True,
                )
            }
        ),
    },
    tag_doc=f"the alert type, one of {', '.join(ALERT_TYPES)}",
    refused=_REFUSED_SECRETS,
)

# For editors only (the JSON Schema); managed_unit_problem() is the authority.
_UNIT_STEM = r"[A-Za-z0-9:_\\][A-Za-z0-9:_.\\-]*(@[A-Za-z0-9:_.@\\-]*)?"

SPEC = Table(
    {
        "defaults": Field(DEFAULTS, "defaults for every unit"),
        "alert": Field(
            MapOf(
                ALERT, alert_name, key_doc="NAME", key_pattern="^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
            ),
            "alert targets by name",
            {},
        ),
        "service": Field(
            MapOf(
                SERVICE,
                service_name,
                key_doc="NAME",
                key_pattern=f"^{_UNIT_STEM}$",
                max_items=10_000,
            ),
            "services by name",
            {},
        ),
        "override": Field(
            MapOf(
                OVERRIDE,
                override_unit,
                key_doc='"UNIT"',
                key_pattern=f"^{_UNIT_STEM}[.]service$",
                max_items=10_000,
            ),
            "drop-ins for units the operator does not own",
            {},
        ),
    },
    doc="A unitgen spec: hardened systemd units and their recovery.",
)
