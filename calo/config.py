"""Configuration: every setting, its flag, its environment variable, its default and its help.

Owns turning `argv` and the environment into one frozen `Settings` value. The table
`SETTINGS` is the single place a setting is declared; `--help`, the README table and the
tests all read from it. A flag wins over its environment variable, which wins over the
default. A bad value raises `ConfigError` with one line that names the setting.

Must never: start anything, touch the network, or be read from deep inside the package
(settings are passed down as plain values).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn

HOST_NAME = re.compile(r"[a-z0-9.-]+|\[[0-9a-f:.]+\]")  # a name, an IPv4 or a [IPv6] address


class ConfigError(Exception):
    """A setting has a bad value; the message is one line naming the setting."""


@dataclasses.dataclass(frozen=True)
class Setting:
    name: str  # attribute on Settings
    flag: str | None  # None: environment only (secrets never go on a command line)
    env: tuple[str, ...]  # first one set wins
    parse: Callable[[str], Any]
    default: Any
    help: str


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError("must be between 0 and 65535")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError("must be at least 1")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise ValueError("must be a finite number of seconds, 0 or more")
    return value


MIN_INTERVAL = 0.1  # seconds; a timeout, lease or pause below this would make a timer spin


def _interval(text: str) -> float:
    """Seconds for a timeout, a lease or a pause, which set how often a timer (or a retry)
    runs: 0.1 or more."""
    value = _seconds(text)
    if value < MIN_INTERVAL:
        raise ValueError(f"must be {MIN_INTERVAL} seconds or more")
    return value


def _optional_count(text: str) -> int | None:
    return _positive_int(text) if text else None


def _optional_days(text: str) -> float | None:
    if not text:
        return None  # unset: keep forever
    value = float(text)
    if not math.isfinite(value) or value <= 0:
        raise ValueError("must be a number of days greater than 0")
    return value


def _text(text: str) -> str:
    return text


def _optional_text(text: str) -> str | None:
    return text or None


def _origins(text: str) -> tuple[str, ...]:
    origins = tuple(part.strip().rstrip("/") for part in text.split(",") if part.strip())
    for origin in origins:
        if not origin.startswith(("http://", "https://")) or "/" in origin.split("://", 1)[1]:
            raise ValueError("must be origins like https://example.com:8443, separated by commas")
    return origins


def _hosts(text: str) -> tuple[str, ...]:
    hosts = tuple(part.strip().lower() for part in text.split(",") if part.strip())
    for host in hosts:
        if host != "*" and not HOST_NAME.fullmatch(host):
            raise ValueError("must be host names or addresses without a port (or *), separated by commas")
    return hosts


def _public_url(text: str) -> str | None:
    if not text:
        return None
    url = _url(text)
    if "?" in url or "#" in url:
        raise ValueError("must be an http:// or https:// URL without query or fragment")
    return url


BEARER_TOKEN = re.compile(r"[A-Za-z0-9._~+/-]+=*")  # RFC 6750's b64token


def _api_token(text: str) -> str | None:
    if not text:
        return None
    if not BEARER_TOKEN.fullmatch(text):
        raise ValueError("must be a bearer token: ASCII letters, digits and -._~+/ (then = padding), "
                         "e.g. from `openssl rand -hex 32`")
    return text


def _database_url(text: str) -> str | None:
    if not text:
        return None  # unset: SQLite in --data-dir
    if not text.startswith(("postgresql://", "postgres://")):
        raise ValueError("must be a postgresql://user@host:port/dbname URL (unset: SQLite in --data-dir)")
    return text


def _flag(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on", ""):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be true or false")


def _url(text: str) -> str:
    if not text.startswith(("http://", "https://")):
        raise ValueError("must be an http:// or https:// URL")
    return text.rstrip("/")


DEFAULT_CLIENT_TIMEOUT = 30.0  # seconds; also calo.httpserver's default

SETTINGS: tuple[Setting, ...] = (
    Setting("host", "--host", ("CALO_HOST",), _text, "127.0.0.1", "address to listen on"),
    Setting("port", "--port", ("CALO_PORT",), _port, 8888, "TCP port to listen on (0: any free port)"),
    Setting("data_dir", "--data-dir", ("CALO_DATA_DIR",), _text, "./data",
            "directory for calo.db and the jobs.json export"),
    Setting("database_url", "--database-url", ("CALO_DATABASE_URL",), _database_url, None,
            "postgresql://user@host:port/dbname: keep jobs in PostgreSQL, shared by every server started "
            "with the same URL (needs the [postgres] extra); unset: SQLite in --data-dir"),
    Setting("instance_lease", "--instance-lease", ("CALO_INSTANCE_LEASE",), _interval, 10.0,
            "with PostgreSQL: seconds after its last heartbeat that a server counts as gone "
            "and another takes over its pending jobs"),
    Setting("database_pool_size", "--database-pool-size", ("CALO_DATABASE_POOL_SIZE",), _positive_int, 4,
            "with PostgreSQL: connections each server keeps for reads"),
    Setting("workers", "--workers", ("CALO_WORKERS",), _positive_int, 8,
            "threads in the pool that calls Unsplash"),
    Setting("delay_min", "--delay-min", ("CALO_DELAY_MIN",), _seconds, 5.0,
            "shortest job delay, seconds"),
    Setting("delay_max", "--delay-max", ("CALO_DELAY_MAX",), _seconds, 300.0,
            "longest job delay, seconds"),
    Setting("delay_step", "--delay-step", ("CALO_DELAY_STEP",), _seconds, 5.0,
            "delays are drawn from min, min+step, ..., max"),
    Setting("event_retention", "--event-retention", ("CALO_EVENT_RETENTION",), _seconds,
            7 * 24 * 3600.0, "seconds of job events kept for WebSocket replay"),
    Setting("unsplash_batch", "--unsplash-batch", ("CALO_UNSPLASH_BATCH",), _positive_int, 30,
            "photos fetched per Unsplash request (1..30; 1 disables batching)"),
    Setting("max_attempts", "--max-attempts", ("CALO_MAX_ATTEMPTS",), _positive_int, 6,
            "upstream tries per job before it fails (timeouts, refused connections, 5xx)"),
    Setting("retry_window", "--retry-window", ("CALO_RETRY_WINDOW",), _seconds, 600.0,
            "seconds after a job is due during which failed fetches are retried"),
    Setting("unsplash_timeout", "--unsplash-timeout", ("CALO_UNSPLASH_TIMEOUT",), _interval, 10.0,
            "seconds one whole Unsplash call may take (connect, headers and body); a slower one is cut off"),
    Setting("rate_limit_pause", "--rate-limit-pause", ("CALO_RATE_LIMIT_PAUSE",), _interval, 3600.0,
            "seconds all Unsplash calls pause once the request budget is spent"),
    Setting("max_pending", "--max-pending", ("CALO_MAX_PENDING",), _positive_int, 100_000,
            "pending jobs at most; past it POST /jobs answers 503"),
    Setting("max_connections", "--max-connections", ("CALO_MAX_CONNECTIONS",), _optional_count, None,
            "open connections at most (HTTP and WebSocket); past it a new one gets a 503 and is closed. "
            "Unset: as many as the file-descriptor limit allows, at most 1000; checked against it at start"),
    Setting("write_timeout", "--write-timeout", ("CALO_WRITE_TIMEOUT",), _interval, 5.0,
            "seconds a request waits for its write to commit before it is answered 503 "
            "(commit_unknown: retry with the same Idempotency-Key)"),
    Setting("client_timeout", "--client-timeout", ("CALO_CLIENT_TIMEOUT",), _interval, DEFAULT_CLIENT_TIMEOUT,
            "seconds a client may take to send a whole request (headers and body), or keep an idle connection"),
    Setting("shutdown_grace", "--shutdown-grace", ("CALO_SHUTDOWN_GRACE",), _seconds, 10.0,
            "seconds in-flight Unsplash calls may finish in after SIGTERM/SIGINT"),
    Setting("retain_days", "--retain-days", ("CALO_RETAIN_DAYS",), _optional_days, None,
            "days resolved and failed jobs are kept (fractions allowed); unset keeps every job forever"),
    Setting("stuck_after", "--stuck-after", ("CALO_STUCK_AFTER",), _seconds, 60.0,
            "seconds a due job may wait with Unsplash healthy before the server counts itself "
            "stuck: /readyz answers 503 and the systemd watchdog is not pinged"),
    Setting("allowed_origins", "--allowed-origins", ("CALO_ALLOWED_ORIGINS",), _origins, (),
            "comma-separated origins (https://host:port) allowed to use the WebSocket and, by CORS, the API"),
    Setting("allowed_hosts", "--allowed-hosts", ("CALO_ALLOWED_HOSTS",), _hosts, (),
            "comma-separated host names the server answers to (Host header, any port); others get 421. "
            "Unset: localhost, 127.0.0.1 and [::1] when --host is a loopback address, else any (*)"),
    Setting("public_url", "--public-url", ("CALO_PUBLIC_URL",), _public_url, None,
            "the URL clients reach this server at (https://jobs.example, behind a proxy); Link headers "
            "and demo image URLs are built from it"),
    Setting("private", "--private", ("CALO_PRIVATE",), _flag, False,
            "with CALO_API_TOKEN: require the token for reads too"),
    Setting("access_log", "--access-log", ("CALO_ACCESS_LOG",), _flag, False,
            "log every successful request too (errors are always logged)"),
    Setting("import_json", "--import-json", ("CALO_IMPORT_JSON",), _optional_text, None,
            "rebuild an empty or missing calo.db from this jobs.json export, then exit"),
    Setting("api_token", None, ("CALO_API_TOKEN",), _api_token, None,
            "when set, creating and retrying jobs require 'Authorization: Bearer <token>'"),
    Setting("unsplash_access_key", None, ("CALO_UNSPLASH_ACCESS_KEY", "UNSPLASH_ACCESS_KEY"),
            _optional_text, None, "Unsplash access key; without one, bundled demo images are used"),
    Setting("unsplash_api_url", None, ("CALO_UNSPLASH_API_URL",), _url,
            "https://api.unsplash.com", "Unsplash API base URL"),
)


SECRETS = ("unsplash_access_key", "api_token", "database_url")  # never echoed, logged or shown in a repr


@dataclasses.dataclass(frozen=True)
class Settings:
    """The parsed settings; defaults live in `SETTINGS`, not here."""

    host: str
    port: int
    data_dir: str
    database_url: str | None = dataclasses.field(repr=False)  # may hold a password
    instance_lease: float
    database_pool_size: int
    workers: int
    delay_min: float
    delay_max: float
    delay_step: float
    event_retention: float
    unsplash_batch: int
    max_attempts: int
    retry_window: float
    unsplash_timeout: float
    rate_limit_pause: float
    max_pending: int
    max_connections: int | None
    write_timeout: float
    client_timeout: float
    shutdown_grace: float
    retain_days: float | None
    stuck_after: float
    allowed_origins: tuple[str, ...]
    allowed_hosts: tuple[str, ...]
    public_url: str | None
    private: bool
    access_log: bool
    import_json: str | None
    api_token: str | None = dataclasses.field(repr=False)
    unsplash_access_key: str | None = dataclasses.field(repr=False)
    unsplash_api_url: str


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # argparse would print usage and exit 2
        raise ConfigError(message)


def _parser() -> argparse.ArgumentParser:
    epilog = "environment: " + ", ".join(
        f"{'/'.join(s.env)} ({s.help})" for s in SETTINGS if s.flag is None
    )
    parser = _OneLineParser(prog="calo-server", description="Calo Jobs server.", epilog=epilog)
    for setting in SETTINGS:
        if setting.flag:
            env_names = "/".join(setting.env)
            switch: dict[str, Any] = {"nargs": "?", "const": "true"} if setting.parse is _flag else {}
            parser.add_argument(
                setting.flag, dest=setting.name, metavar=_metavar(setting), **switch,
                help=f"{setting.help} (env {env_names}; default: {_shown_default(setting)})",
            )
    return parser


def _metavar(setting: Setting) -> str:
    """What `--help` shows a flag takes: HOST, PORT, SECONDS, ..."""
    by_name = {"host": "ADDRESS", "data_dir": "DIR", "import_json": "FILE", "database_url": "URL"}
    by_parse: dict[Callable[[str], Any], str] = {
        _port: "PORT", _positive_int: "N", _seconds: "SECONDS", _interval: "SECONDS", _optional_days: "DAYS",
        _origins: "ORIGINS", _hosts: "HOSTS", _public_url: "URL", _url: "URL", _flag: "BOOL",
    }
    return by_name.get(setting.name) or by_parse.get(setting.parse, "TEXT")


def _shown_default(setting: Setting) -> str:
    value = setting.default
    if value is None or value == ():
        return "unset"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _raw_value(setting: Setting, flags: argparse.Namespace, environ: Mapping[str, str]) -> tuple[str, str] | None:
    """(the text given, where: the flag or the environment variable) or None."""
    from_flag: str | None = getattr(flags, setting.name, None)
    if from_flag is not None and setting.flag:
        return from_flag, setting.flag
    return next(((environ[name], name) for name in setting.env if name in environ), None)


def _check_together(settings: Settings, given: Mapping[str, str]) -> None:
    """Checks across settings; `given` maps a setting to the flag or variable that set it."""
    def where(name: str) -> str:
        return given.get(name) or next(s.flag or s.env[0] for s in SETTINGS if s.name == name)

    if settings.delay_min > settings.delay_max:
        raise ConfigError(
            f"{where('delay_min')} ({settings.delay_min:g}) must not be greater than "
            f"{where('delay_max')} ({settings.delay_max:g})"
        )
    if settings.write_timeout <= 0:
        raise ConfigError("--write-timeout must be greater than 0")
    if settings.delay_step <= 0:
        raise ConfigError(f"{where('delay_step')} must be greater than 0")
    if settings.unsplash_batch > 30:
        raise ConfigError(f"{where('unsplash_batch')} must be between 1 and 30 (Unsplash's maximum)")


def parse_settings(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from command-line flags and the environment. Raises ConfigError."""
    environ = os.environ if environ is None else environ
    flags = _parser().parse_args(list(argv))
    values: dict[str, Any] = {s.name: s.default for s in SETTINGS}
    given: dict[str, str] = {}
    for setting in SETTINGS:
        found = _raw_value(setting, flags, environ)
        if found is None:
            continue
        raw, where = found
        given[setting.name] = where
        try:
            values[setting.name] = setting.parse(raw)
        except ValueError as exc:
            reason = str(exc) if "must" in str(exc) else "is not a valid value"
            shown = "(hidden)" if setting.name in SECRETS else repr(raw)
            raise ConfigError(f"{where} {reason}: {shown}") from None
    settings = Settings(**values)
    _check_together(settings, given)
    return settings


def help_text() -> str:
    return _parser().format_help()
