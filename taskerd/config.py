"""The daemon's configuration: embedded defaults, then a TOML file, then command-line flags."""

from __future__ import annotations

import argparse
import os
import re
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from tasker.addresses import is_loopback
from tasker.durations import format_duration, parse_duration
from tasker.paths import default_socket_path

#: Keys whose TOML value is a duration ("5s", "1m30s" or a number of seconds).
_DURATIONS = {"kill_grace", "stop_timeout", "keep_for", "burst_interval", "on_finish_timeout"}
_SYNC_MODES = ("normal", "full")
_LEVELS = ("debug", "info", "warning", "error")
_CGROUP_MODES = ("auto", "off")
_LOG_FORMATS = ("text", "json")
#: Keys naming files ("~" expanded).
_PATHS = (
    "tls_cert", "tls_key", "tls_client_ca", "tokens_file", "dask_scheduler_file", "dask_tls_ca",
    "dask_tls_cert", "dask_tls_key",
)  # fmt: skip
#: host:port, [v6]:port or :port (every interface).
_ADDRESS = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[^:\[\]\s]*):([0-9]{1,5})")
_GROUP_KEYS = ("parallel", "max_parallel", "max_queue", "executor")
#: Where a group's tasks run: here, or on the Dask cluster of ``dask_scheduler``.
EXECUTORS = ("local", "dask")
#: A group's name: 1 to 64 of these characters.
GROUP_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
DEFAULT_GROUP = "default"
MAX_PARALLEL = 1024


@dataclass(slots=True)
class GroupConfig:
    """A group declared in ``taskerd.conf`` (``[groups.NAME]``): created at start if absent."""

    parallel: int = 1
    max_parallel: int | None = None  # None: parallel (no bursting)
    max_queue: int | None = None  # None: the daemon's max_queue
    executor: str = "local"  # "dask": its tasks run on the Dask cluster (slots: the cluster's)

    @property
    def ceiling(self) -> int:
        """The burst ceiling: ``max_parallel``, or ``parallel``."""
        return self.max_parallel if self.max_parallel is not None else self.parallel


def _default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(base) / "tasker"


@dataclass(slots=True)
class DaemonConfig:
    """Everything ``taskerd`` can be told. Durations are in seconds."""

    socket: Path = field(default_factory=default_socket_path)
    state_dir: Path = field(default_factory=_default_state_dir)
    workers: int = field(default_factory=lambda: os.cpu_count() or 2)
    max_workers: int | None = None  # None: 2 * workers
    max_queue: int = 100_000
    # How often each group measures its arrival and drain rates and decides its burst slots.
    burst_interval: float = 0.1
    log_level: str = "info"
    log_format: str = "text"  # "text", or "json": one object a line
    # host:port of the Prometheus /metrics endpoint ("" = off).
    metrics_address: str = ""
    # TCP listeners of the gRPC API besides the Unix socket (host:port or [v6]:port). Each
    # needs TLS (tls_cert, tls_key) unless it is loopback and insecure_loopback is set, and
    # every call on them but health checks needs a token of tokens_file.
    listen: list[str] = field(default_factory=list)
    tls_cert: str = ""  # PEM certificate chain of the TCP listeners
    tls_key: str = ""  # its PEM private key
    tls_client_ca: str = ""  # PEM CA bundle: when set, clients must present a certificate of it
    insecure_loopback: bool = False  # allow plaintext TCP on loopback addresses
    tokens_file: str = ""  # "NAME ROLE TOKEN" lines, mode 0600 (see taskerd.auth)
    socket_group: str = ""
    journal_sync: str = "normal"
    kill_grace: float = 5.0
    stop_timeout: float = 30.0
    output_limit: int = 1 << 20
    max_retries: int = 3
    unhealthy_exit_codes: list[int] = field(default_factory=list)
    on_create: str = ""
    on_destroy: str = ""
    # A shell command run after every task ends (see taskerd.hooks): at most
    # on_finish_concurrency at once, each stopped after on_finish_timeout.
    on_finish: str = ""
    on_finish_timeout: float = 60.0
    on_finish_concurrency: int = 4
    keep_finished: int = 10_000
    keep_for: float = 7 * 86400.0
    cgroups: str = "auto"  # "auto": a cgroup per run where cgroup v2 is writable; "off": never
    # Where the group "default" runs its tasks: "local", or "dask" (see taskerd.dask).
    executor: str = "local"
    # The Dask cluster of the groups whose executor is "dask": the scheduler's address
    # ("tcp://host:8786", "tls://...") or its scheduler file, and TLS (PEM files).
    dask_scheduler: str = ""
    dask_scheduler_file: str = ""
    dask_tls_ca: str = ""
    dask_tls_cert: str = ""
    dask_tls_key: str = ""
    # Groups to create at start (``[groups.NAME]``); "default" takes workers/max_workers.
    groups: dict[str, GroupConfig] = field(default_factory=dict)

    def on_dask(self) -> list[str]:
        """The groups whose executor is "dask"."""
        named = [name for name, g in self.groups.items() if g.executor == "dask"]
        return ([DEFAULT_GROUP] if self.executor == "dask" else []) + named

    @property
    def burst_workers(self) -> int:
        """The burst ceiling: ``max_workers``, or twice ``workers``."""
        return self.max_workers if self.max_workers is not None else 2 * self.workers

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad key."""
        checks: list[tuple[bool, str]] = [
            (self.workers >= 1, f"workers must be >= 1, got {self.workers}"),
            (self.burst_workers >= self.workers, "max_workers must be >= workers"),
            (self.burst_workers <= 1024, "max_workers must be <= 1024"),
            (self.max_queue >= 1, f"max_queue must be >= 1, got {self.max_queue}"),
            (0.01 <= self.burst_interval <= 60, "burst_interval must be between 10ms and 1m"),
            (self.log_level in _LEVELS, f"log_level must be one of {', '.join(_LEVELS)}"),
            (self.log_format in _LOG_FORMATS, "log_format must be 'text' or 'json'"),
            (not self.metrics_address or _port_ok(self.metrics_address),
             "metrics_address must be host:port, [v6]:port or :port"),
            *self._listen_checks(),
            (self.journal_sync in _SYNC_MODES, "journal_sync must be 'normal' or 'full'"),
            (self.kill_grace >= 0, "kill_grace must be >= 0"),
            (self.stop_timeout >= 0, "stop_timeout must be >= 0"),
            (self.output_limit >= 0, "output_limit must be >= 0"),
            (0 <= self.max_retries <= 100, "max_retries must be between 0 and 100"),
            (all(0 <= c <= 255 for c in self.unhealthy_exit_codes),
             "unhealthy_exit_codes must be exit statuses 0..255"),
            (self.keep_finished >= 0, "keep_finished must be >= 0"),
            (self.on_finish_timeout > 0, "on_finish_timeout must be > 0"),
            (1 <= self.on_finish_concurrency <= 64, "on_finish_concurrency must be 1 to 64"),
            (self.keep_for > 0, "keep_for must be > 0"),
            (self.cgroups in _CGROUP_MODES, "cgroups must be 'auto' or 'off'"),
            (self.executor in EXECUTORS, "executor must be 'local' or 'dask'"),
            (len(self.on_dask()) <= 1, "at most one group may have executor 'dask' (it takes "
             f"all of the cluster's slots): {', '.join(self.on_dask())}"),
            (not self.on_dask() or bool(self.dask_scheduler or self.dask_scheduler_file),
             "executor 'dask' needs dask_scheduler or dask_scheduler_file"),
            (bool(self.dask_tls_cert) == bool(self.dask_tls_key),
             "dask_tls_cert and dask_tls_key go together"),
        ]  # fmt: skip
        for name, group in self.groups.items():
            checks += [
                (GROUP_NAME.fullmatch(name) is not None and name != DEFAULT_GROUP,
                 f"groups.{name}: a name is 1 to 64 letters, digits, '-', '_' or '.', "
                 "not 'default' (which takes workers and max_workers)"),
                (1 <= group.parallel <= MAX_PARALLEL,
                 f"groups.{name}.parallel must be between 1 and {MAX_PARALLEL}"),
                (group.parallel <= group.ceiling <= MAX_PARALLEL,
                 f"groups.{name}.max_parallel must be between parallel and {MAX_PARALLEL}"),
                (group.max_queue is None or group.max_queue >= 1,
                 f"groups.{name}.max_queue must be >= 1"),
                (group.executor in EXECUTORS,
                 f"groups.{name}.executor must be 'local' or 'dask'"),
            ]  # fmt: skip
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def _listen_checks(self) -> list[tuple[bool, str]]:
        bad = next((a for a in self.listen if not _port_ok(a)), None)
        plain = next((a for a in self.listen if not _is_loopback(a)), None)
        first = plain or (self.listen[0] if self.listen else "")
        return [
            (bad is None, f"listen: {bad!r} is not host:port or [v6]:port"),
            (bool(self.tls_cert) == bool(self.tls_key), "tls_cert and tls_key go together"),
            (not self.tls_client_ca or bool(self.tls_cert), "tls_client_ca needs tls_cert"),
            (not self.listen or bool(self.tokens_file), "listen: TCP listeners need tokens_file"),
            (not self.listen or bool(self.tls_cert) or (plain is None and self.insecure_loopback),
             f"listen: {first!r} needs tls_cert and tls_key "
             "(plaintext is allowed only on loopback addresses, with insecure_loopback = true)"),
        ]  # fmt: skip

    def to_toml(self) -> str:
        """The effective configuration, as a TOML file that ``--config`` would accept."""
        lines = []
        tables = []
        for key, value in asdict(self).items():
            if value is None:
                continue
            if key == "groups":
                for name, group in value.items():
                    keys = [f"{k} = {_toml_item(v)}" for k, v in group.items() if v is not None]
                    tables.append(f"\n[groups.{name}]\n" + "\n".join(keys))
                continue
            if key in _DURATIONS:
                text = f'"{format_duration(value)}"'
            elif isinstance(value, bool | int):
                text = str(value).lower() if isinstance(value, bool) else str(value)
            elif isinstance(value, list):
                text = "[" + ", ".join(_toml_item(v) for v in value) + "]"
            else:
                text = _toml_item(str(value))
            lines.append(f"{key} = {text}")
        return "\n".join(lines) + "\n" + "".join(t + "\n" for t in tables)


def _toml_item(value: object) -> str:
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return str(value)


def _is_loopback(address: str) -> bool:
    """Whether ``address`` (host:port) is on a loopback interface only."""
    return is_loopback(address.rpartition(":")[0])


def _coerce(key: str, value: Any, default: Any) -> Any:
    """Convert one TOML value to the field's type, with an error naming the key."""
    if key in _DURATIONS:
        try:
            return parse_duration(str(value))
        except ValueError as exc:
            raise ValueError(f"{key}: {exc}") from None
    if key in ("socket", "state_dir"):
        return Path(os.path.expanduser(str(value)))
    if key == "groups":
        return _groups(value)
    if key in _PATHS and isinstance(value, str):
        return os.path.expanduser(value) if value else value
    if key == "listen":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f'{key}: must be a list of strings, as ["127.0.0.1:7700"]')
        return list(value)
    if isinstance(default, bool):
        if type(value) is not bool:
            raise ValueError(f"{key}: must be true or false, got {value!r}")
        return value
    if key == "unhealthy_exit_codes":
        if not isinstance(value, list) or not all(type(v) is int for v in value):
            raise ValueError(f"{key}: must be a list of integers")
        return list(value)
    expected = type(default) if default is not None else int
    if expected is int and (type(value) is not int):
        raise ValueError(f"{key}: must be an integer, got {value!r}")
    if expected is str and not isinstance(value, str):
        raise ValueError(f"{key}: must be a string, got {value!r}")
    return value


def _port_ok(address: str) -> bool:
    match = _ADDRESS.fullmatch(address)
    return match is not None and 0 < int(match.group(2)) < 65536


def _groups(value: Any) -> dict[str, GroupConfig]:
    """``[groups.NAME]`` tables, with errors naming the key."""
    if not isinstance(value, dict):
        raise ValueError("groups: must be tables, as [groups.NAME]")
    groups = {}
    for name, table in value.items():
        if not isinstance(table, dict):
            raise ValueError(f"groups.{name}: must be a table, as [groups.{name}]")
        for key, item in table.items():
            if key not in _GROUP_KEYS:
                raise ValueError(f"unknown config key 'groups.{name}.{key}'")
            if key == "executor":
                if not isinstance(item, str):
                    raise ValueError(f"groups.{name}.{key}: must be a string, got {item!r}")
            elif type(item) is not int:
                raise ValueError(f"groups.{name}.{key}: must be an integer, got {item!r}")
        groups[name] = GroupConfig(**table)
    return groups


def load(path: Path | None, overrides: dict[str, Any]) -> DaemonConfig:
    """Defaults, then the TOML file at ``path`` (if any), then non-None ``overrides``."""
    config = DaemonConfig()
    defaults = {f.name: getattr(config, f.name) for f in fields(config)}
    values: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as fh:
                values.update(tomllib.load(fh))
        except OSError as exc:
            raise ValueError(f"config {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"config {path}: {exc}") from None
    values.update({k: v for k, v in overrides.items() if v is not None})
    for key, value in values.items():
        if key not in defaults:
            raise ValueError(f"unknown config key {key!r}")
        setattr(config, key, _coerce(key, value, defaults[key]))
    config.validate()
    return config


class _Version(argparse.Action):
    """``-V``/``--version``: the version ``Stats`` reports, printed, then exit."""

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kw: Any) -> None:
        from taskerd.core import _version

        print(f"taskerd {_version()}")
        parser.exit()


def parser() -> argparse.ArgumentParser:
    """The ``taskerd`` command line."""
    p = argparse.ArgumentParser(
        prog="taskerd",
        description="Tasker daemon: serves the tasker.v1 gRPC API on a Unix socket.",
    )
    p.add_argument("-V", "--version", action=_Version, nargs=0, help="print the version and exit")
    p.add_argument("--socket", help="socket path (default: $XDG_RUNTIME_DIR/tasker/taskerd.sock)")
    p.add_argument("--state-dir", dest="state_dir", help="where the journal lives")
    p.add_argument("--config", type=Path, help="TOML configuration file")
    p.add_argument("--workers", type=int, help="base worker count (default: CPU count)")
    p.add_argument("--max-workers", dest="max_workers", type=int, help="burst ceiling")
    p.add_argument("--max-queue", dest="max_queue", type=int, help="queue capacity")
    p.add_argument("--log-level", dest="log_level", choices=_LEVELS)
    p.add_argument(
        "--print-config", action="store_true", help="print the effective configuration and exit"
    )
    return p


def from_args(argv: list[str] | None = None) -> tuple[DaemonConfig, bool]:
    """Parse flags and load the configuration; returns it and whether to only print it."""
    p = parser()
    args = p.parse_args(argv)
    overrides = {
        k: getattr(args, k)
        for k in ("socket", "state_dir", "workers", "max_workers", "max_queue", "log_level")
    }
    try:
        return load(args.config, overrides), bool(args.print_config)
    except ValueError as exc:
        p.error(str(exc))
