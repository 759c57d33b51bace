"""Configuration of one mount: one TOML file, overridden by command-line options.

Example (/etc/dpmsfs/data-tool.toml)::

    store = "/disk2/dpmsfs/data-tool"      # default: see default_store_dir()
    tool_id = "tester-07"                   # default: the host name
    quiet_seconds = 5                       # capture a file this long after its last change
    max_delay_seconds = 60                  # ... but never later than this after the first
    snapshot_interval_minutes = 15          # periodic snapshots, when something changed
    exclude = ["*.tmp", "core", "core.*", "*.swp"]
    server = ["https://srv1:8765", "https://srv2:8765"]  # the central HA pair (optional)
    token_file = "/etc/dpmsfs/tester-07.token"             # this tool's bearer token
    tls_ca = "/etc/dpmsfs/ca.pem"                           # CA of the servers' certificates
    prune_interval_hours = 24               # the daemon applies [retention] this often (0: never)
    drill_interval_days = 30                # restore drill from the server (0: never)
    metrics_listen = "127.0.0.1:9310"       # Prometheus /metrics (default: off)
    server = ["https://srv-a:8765", "https://srv-b:8765"]   # sync on (HA pair, in order)
    token_file = "/etc/dpmsfs/tester-07.token"             # from `dpmsfs-server token create`
    tls_ca = "/etc/dpmsfs/ca.pem"                           # private CA of the servers
    sync_bandwidth_limit = 0                                # bytes/s for uploads, 0 = none

    [retention]                             # docs/operations.md "Retention"
    keep_within = "14d"
    keep_daily = 60
    keep_weekly = 26
    keep_monthly = 24
    pin_labels = ["release"]                # besides every "pre-restore" snapshot
    local_budget_percent = 70               # data the server holds leaves the store first
    local_free_floor_percent = 15           # ... also when the store disk is this full

    [alerts]                                # rules and hooks: dpmsfs/health.py
    store_free_warning_percent = 20
    command = "/usr/local/bin/page-oncall"
"""

from __future__ import annotations

import fnmatch
import functools
import json
import os
import re
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from dpmsfs.errors import UsageError
from dpmsfs.health import AlertSettings
from dpmsfs.store.evicted import LocalBudget
from dpmsfs.store.retention import DEFAULT_POLICY, Policy, policy_from_config

DEFAULT_EXCLUDES = ("*.tmp", "*.swp", "*~", "core", "core.[0-9]*", ".nfs*")
STATE_ROOT = Path("/var/lib/dpmsfs")
RUN_ROOT = Path("/run/dpmsfs")


@dataclass(frozen=True)
class Config:
    workdir: Path
    store: Path
    tool_id: str = field(default_factory=lambda: os.uname().nodename)
    quiet_seconds: float = 5.0
    max_delay_seconds: float = 60.0
    snapshot_interval_minutes: float = 15.0
    exclude: tuple[str, ...] = DEFAULT_EXCLUDES
    ingest_threads: int = 2
    fd_budget: int = 4096
    # sync to dpmsfs-server (off while `server` is empty); also where `.snapshots` fetches
    # chunks the local store lacks
    server: tuple[str, ...] = ()  # URLs of the central server pair, tried in order
    token_file: Path | None = None
    tls_ca: Path | None = None
    sync_bandwidth_limit: int = 0  # bytes/s, 0 = no limit
    sync_snapshot_idle_seconds: float = 5.0  # snapshot this long after capture went idle
    sync_snapshot_min_seconds: float = 30.0  # ... but at most one per this many seconds
    # under continuous changes (capture never idle) a snapshot at least this often: the
    # RPO's worst case. 0 = 1.5 x sync_snapshot_min_seconds (45 s): with 2 x (60 s) the
    # measured p100 was 60.8 s, just over the 60 s aim.
    sync_snapshot_max_seconds: float = 0.0
    retention: Policy = DEFAULT_POLICY
    # [retention] local_* keys (store/evicted.py)
    local_budget: LocalBudget = field(default_factory=LocalBudget)
    prune_interval_hours: float = 24.0
    drill_interval_days: float = 30.0  # restore drills from the server (0: never; needs server)
    metrics_listen: str = ""  # HOST:PORT for Prometheus /metrics; "" = off
    alerts: AlertSettings = field(default_factory=AlertSettings)
    # The live mount's FUSE layer: "kernel" (our own, dpmsfs.fuseproto) or "pyfuse3"
    # (the previous path, kept during the transition). DPMSFS_LIVE_FUSE and
    # DPMSFS_PASSTHROUGH override the defaults (the test matrix runs both settings).
    live_fuse: str = field(default_factory=lambda: os.environ.get("DPMSFS_LIVE_FUSE", "kernel"))
    passthrough: bool = field(
        default_factory=lambda: (
            os.environ.get("DPMSFS_PASSTHROUGH", "1").lower() not in ("0", "false", "no", "off")
        )
    )
    # The kernel layer's transport: FUSE over io_uring ("auto": when the kernel has it,
    # "on": the same but warn when it cannot be had, "off": /dev/fuse only). Off by
    # default: on the idle 2-vCPU machine plain io_uring made tar x, grep -r and rm -rf
    # slower than /dev/fuse (docs/benchmarks.md, 2026-12-03 07:16 UTC; design.md).
    # DPMSFS_FUSE_IO_URING overrides the default (the test matrix runs both).
    fuse_io_uring: str = field(
        default_factory=lambda: os.environ.get("DPMSFS_FUSE_IO_URING", "off").lower()
    )
    open_writer_recapture_seconds: float = 120.0  # a file held open for writing, re-captured

    @property
    def name(self) -> str:
        return instance_name(self.workdir)

    @property
    def control_socket(self) -> Path:
        return RUN_ROOT / f"{self.name}.sock"

    @property
    def status_file(self) -> Path:
        return RUN_ROOT / f"{self.name}.status.json"


def instance_name(workdir: Path) -> str:
    """A file-name-safe name for a work directory, like `systemd-escape --path`."""
    text = str(workdir).strip("/") or "root"
    return re.sub(r"[^A-Za-z0-9_.-]", "-", text)


def default_store_dir(workdir: Path) -> Path:
    return STATE_ROOT / "stores" / instance_name(workdir)


def _remembered_file(workdir: Path) -> Path:
    return STATE_ROOT / "mounts" / f"{instance_name(workdir)}.json"


def remember_store(config: Config) -> None:
    """Record where this work directory's store is, for commands run without --store."""
    path = _remembered_file(config.workdir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"workdir": str(config.workdir), "store": str(config.store)}))
    os.replace(tmp, path)


def known_workdirs() -> list[Path]:
    """Work directories that have been mounted on this machine."""
    result = []
    for path in sorted((STATE_ROOT / "mounts").glob("*.json")):
        try:
            result.append(Path(json.loads(path.read_text())["workdir"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return result


def remembered_store(workdir: Path) -> Path | None:
    try:
        return Path(json.loads(_remembered_file(workdir).read_text())["store"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def is_excluded(name: bytes, patterns: tuple[str, ...]) -> bool:
    return Exclusions.of(patterns).excludes(name)


class Exclusions:
    """The exclusion patterns (fnmatch, case-sensitive, per name) compiled into one regex.

    Checked for every path component of every captured file, so one `match` call per
    name instead of one fnmatch per pattern.
    """

    def __init__(self, patterns: tuple[str, ...]) -> None:
        self.patterns = patterns
        joined = "|".join(f"(?:{fnmatch.translate(p)})" for p in patterns)
        self._regex = re.compile(joined) if patterns else None

    @staticmethod
    @functools.lru_cache(maxsize=16)
    def of(patterns: tuple[str, ...]) -> Exclusions:
        return Exclusions(patterns)

    def excludes(self, name: bytes) -> bool:
        return self._regex is not None and self._regex.match(os.fsdecode(name)) is not None

    def excludes_path(self, path: bytes) -> bool:
        """Whether any component of a relative path is excluded."""
        if self._regex is None:
            return False
        match = self._regex.match
        return any(match(name) is not None for name in os.fsdecode(path).split("/"))


FUSE_IO_URING_MODES = ("auto", "on", "off")


def load(workdir: Path, config_file: Path | None = None, **overrides: Any) -> Config:
    """Read `config_file` (if given, or /etc/dpmsfs/<name>.toml if present), apply overrides."""
    values: dict[str, Any] = {}
    path = config_file or Path("/etc/dpmsfs") / f"{instance_name(workdir)}.toml"
    if config_file is not None or path.exists():
        import tomllib  # only when there is a file: it is on every command's start-up

        try:
            with open(path, "rb") as f:
                values = tomllib.load(f)
        except FileNotFoundError:
            raise UsageError(f"{path}: configuration file not found") from None
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise UsageError(f"{path}: cannot read configuration: {exc}") from None
    known = {f.name for f in fields(Config)} - {"workdir", "local_budget"}
    unknown = set(values) - known
    if unknown:
        raise UsageError(f"{path}: unknown setting(s): {', '.join(sorted(unknown))}")
    values.update({k: v for k, v in overrides.items() if v is not None})
    store = Path(
        values.pop("store", None) or remembered_store(workdir) or default_store_dir(workdir)
    ).absolute()
    if "retention" in values:
        if not isinstance(values["retention"], dict):
            raise UsageError(f"{path}: retention must be a table ([retention])")
        values["local_budget"] = LocalBudget.from_table(values["retention"], f"{path}: [retention]")
        values["retention"] = policy_from_config(values["retention"], f"{path}: [retention]")
    if "alerts" in values:
        values["alerts"] = AlertSettings.from_table(values["alerts"], path)
    if "exclude" in values:
        values["exclude"] = tuple(str(p) for p in values["exclude"])
    if "server" in values:
        values["server"] = server_urls(values["server"])
    for key in ("token_file", "tls_ca"):
        if values.get(key):
            values[key] = Path(str(values[key]))
    try:
        config = replace(Config(workdir=workdir, store=store), **values)
    except TypeError as exc:
        raise UsageError(f"bad configuration: {exc}") from None
    check_store_location(config)
    if config.metrics_listen:
        parse_listen(config.metrics_listen)
    if 0 < config.sync_snapshot_max_seconds < config.sync_snapshot_min_seconds:
        raise UsageError("sync_snapshot_max_seconds must not be below sync_snapshot_min_seconds")
    if config.live_fuse not in ("kernel", "pyfuse3"):
        raise UsageError(f'live_fuse must be "kernel" or "pyfuse3", not {config.live_fuse!r}')
    if config.fuse_io_uring not in FUSE_IO_URING_MODES:
        raise UsageError(
            f'fuse_io_uring must be "auto", "on" or "off", not {config.fuse_io_uring!r}'
        )
    return config


def parse_listen(text: str) -> tuple[str, int]:
    """'HOST:PORT' (IPv6 as '[::1]:9310'; port 0 picks a free one) -> (host, port)."""
    host, sep, port = text.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise UsageError(f"metrics address {text!r}: expected HOST:PORT, e.g. 127.0.0.1:9310")
    return host, int(port)


def server_urls(value: Any) -> tuple[str, ...]:
    """`server` as a TOML list or a comma-separated string (`--server a,b`)."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        raise UsageError("server: need a URL or a list of URLs")
    urls = tuple(str(u).strip() for u in items if str(u).strip())
    for url in urls:
        if not re.match(r"^https?://[^/\s]+/?$", url):
            raise UsageError(f"server: {url!r} is not a URL like https://host:8765")
    return urls


def check_store_location(config: Config) -> None:
    store = config.store.resolve()
    workdir = config.workdir.resolve()
    if store == workdir or workdir in store.parents:
        raise UsageError(f"store {store} is inside the work directory {workdir}: refused")
