"""Command-line options and IMAGELIST_* environment variables -> one frozen Config.

Every option can come from the environment (`--dbhost` <- `IMAGELIST_DBHOST`)
so a systemd EnvironmentFile can hold them; a flag on the command line wins.
The old Go service's flags keep their names, and its single-dash spelling
(`-dbhost x`, Go's flag package style) is accepted too; so are its
unprefixed environment variables (`DBHOST`, ...) and its database defaults
(LEGACY_ENV, LEGACY_DB_DEFAULTS), for an upgrade in place.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from config.dsn import DsnError, check_postgres_dsn, redacted

ENV_PREFIX = "IMAGELIST_"

# The Go service's environment variables, honoured where neither the flag
# nor its IMAGELIST_ variable is set: its EnvironmentFile works unchanged.
LEGACY_ENV = {
    "listen": "LISTEN",
    "tokens-file": "TOKENS_FILE",
    "dbhost": "DBHOST",
    "dbport": "DBPORT",
    "dbuser": "DBUSER",
    "dbpassword": "DBPASSWORD",
    "dbname": "DBNAME",
    "dbsslmode": "DBSSLMODE",
    "certfile": "CERTFILE",
    "keyfile": "KEYFILE",
    "debug": "DEBUG",
}
# The Go service's defaults for the parts of the connection not given, once
# PostgreSQL is chosen through the --db* options. Not its password
# ("postgres"): a default password is no password.
LEGACY_DB_DEFAULTS = {
    "host": "localhost",
    "port": "5432",
    "user": "postgres",
    "dbname": "imagelist",
    "sslmode": "disable",
}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


# Parser destinations that are commands, not settings: no environment
# variable sets them (an environment file must never make the service a
# one-shot command).
COMMAND_LINE_ONLY = frozenset({"help", "version", "action"})


class ConfigError(ValueError):
    """A bad option value; the message names the option."""


@dataclass(frozen=True, slots=True)
class Config:
    listen_host: str
    listen_port: int
    database_url: str
    tokens_file: str | None
    certfile: str | None
    keyfile: str | None
    debug: bool
    log_format: str
    max_body_size: int
    db_pool_size: int
    db_timeout: float
    db_connect_timeout: float
    shutdown_timeout: float
    reuse_port: bool
    admission_mode: str
    max_connections: int = 0  # 0: from the descriptor limit at start
    #: "serve", or "migrate" / "migrate-dry-run" (run, or report, and exit),
    #: or "show-tokens" (print the tokens file's names and scopes, and exit).
    action: str = "serve"
    #: The Go service's environment variables this configuration took.
    legacy_env: tuple[str, ...] = ()
    replica_max_age: float = 600.0
    #: Days audit events are kept; 0 keeps every event.
    events_retention_days: int = 365

    @property
    def tls(self) -> bool:
        return self.certfile is not None


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # main() prints ConfigError as "imagelist: ..." and exits 2, like argparse.
        raise ConfigError(f"{message} (see --help)")


def env_name(option: str) -> str:
    return ENV_PREFIX + option.upper().replace("-", "_")


def legacy_env(env: Mapping[str, str]) -> dict[str, str]:
    """option -> Go service variable, for each such variable that is set
    (non-empty) where the option's IMAGELIST_ variable is not."""
    return {
        option: name
        for option, name in LEGACY_ENV.items()
        if env.get(name) and env_name(option) not in env
    }


def version() -> str:
    try:
        return importlib.metadata.version("imagelist")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def build_parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    parser = _Parser(
        prog="imagelist",
        description="Container-image allowlist service (REST API, Kubernetes admission).",
        epilog=(
            "Every option can also be set from the environment as IMAGELIST_<OPTION>, "
            "e.g. IMAGELIST_DBHOST=db1 or IMAGELIST_DEBUG=true; a command-line flag wins. "
            "The Go service's variables (DBHOST, DBPORT, DBUSER, DBPASSWORD, DBNAME, "
            "DBSSLMODE, TOKENS_FILE, CERTFILE, KEYFILE, LISTEN, DEBUG) are read where "
            "neither is set. "
            "Storage: PostgreSQL when --database-url names one or any --db* option is "
            "given, else an embedded SQLite file (default: $STATE_DIRECTORY/imagelist.db "
            "under systemd, else ~/.local/share/imagelist/imagelist.db)."
        ),
    )

    legacy = legacy_env(env)

    def from_env(name: str) -> tuple[str, str | None]:
        """The variable that sets option `name`, and its value (or None)."""
        envvar = legacy.get(name, env_name(name))
        return envvar, env.get(envvar)

    def add(name: str, help: str, default: str | None = None, **kw: Any) -> None:
        _, value = from_env(name)
        # Help shows the built-in default only: an environment value may be
        # a password and must not be echoed by --help.
        shown = f" (default: {default})" if default is not None else ""
        parser.add_argument(
            f"--{name}",
            f"-{name}",
            default=default if value is None else value,
            help=f"{help}{shown} [env {env_name(name)}]",
            **kw,
        )

    def flag(name: str, help: str) -> None:
        envvar, value = from_env(name)
        raw = (value or "").strip().lower()
        if raw not in _TRUE | _FALSE:
            raise ConfigError(f"{envvar}={value!r}: expected true or false")
        parser.add_argument(
            f"--{name}",
            f"-{name}",
            action="store_true",
            default=raw in _TRUE,
            help=f"{help} [env {env_name(name)}]",
        )

    parser.add_argument("--version", "-version", action="version", version=f"imagelist {version()}")
    # COMMAND_LINE_ONLY: actions, not settings.
    actions = parser.add_mutually_exclusive_group()
    actions.add_argument(
        "--migrate",
        dest="action",
        action="store_const",
        const="migrate",
        default="serve",
        help="bring the database schema up to date (adopting the Go service's table) and exit",
    )
    actions.add_argument(
        "--migrate-dry-run",
        dest="action",
        action="store_const",
        const="migrate-dry-run",
        help="report what --migrate would change, change nothing, and exit",
    )
    actions.add_argument(
        "--show-tokens",
        dest="action",
        action="store_const",
        const="show-tokens",
        help="print each token of --tokens-file: its name, whether it is enabled, and the "
        "repositories it may write (never a secret), and exit; non-zero when the file is invalid",
    )
    add("listen", "address to listen on, [HOST]:PORT", ":8000", metavar="[HOST]:PORT")
    add(
        "tokens-file", "YAML file of bearer tokens; enables auth for PUT and DELETE", metavar="PATH"
    )
    add(
        "database-url",
        "PostgreSQL URL/DSN (multi-host allowed) or sqlite:///PATH; wins over the --db* options",
        metavar="URL",
    )
    # No argparse defaults here: whether any --db* option is given selects
    # PostgreSQL; LEGACY_DB_DEFAULTS then fill in the rest (database_url).
    add("dbhost", "PostgreSQL host (or comma-separated hosts); default localhost", metavar="HOST")
    add("dbport", "PostgreSQL port; default 5432", metavar="PORT")
    add("dbuser", "PostgreSQL user; default postgres", metavar="USER")
    add("dbpassword", "PostgreSQL password; no default", metavar="PASSWORD")
    add("dbname", "PostgreSQL database name; default imagelist", metavar="NAME")
    add(
        "dbsslmode",
        "PostgreSQL sslmode (disable, require, verify-full, ...); default disable",
        metavar="MODE",
    )
    add("certfile", "TLS certificate (PEM); TLS is on when --keyfile is also given", metavar="PATH")
    add("keyfile", "TLS private key (PEM)", metavar="PATH")
    flag("debug", "log at debug level")
    add("log-format", "log line format: json or console", "json", metavar="FORMAT")
    add("max-body-size", "largest accepted request body, in bytes", "1048576", metavar="BYTES")
    add("db-pool-size", "largest number of pooled PostgreSQL connections", "10", metavar="N")
    add("db-timeout", "seconds a database query or pool wait may take", "5", metavar="SECONDS")
    add(
        "db-connect-timeout",
        "seconds a database connection attempt may take",
        "3",
        metavar="SECONDS",
    )
    add(
        "shutdown-timeout",
        "seconds to let in-flight requests finish on SIGTERM",
        "10",
        metavar="SECONDS",
    )
    add(
        "max-connections",
        "most client connections held open; unset or 0: from the file-descriptor limit",
        metavar="N",
    )
    flag("reuse-port", "set SO_REUSEPORT so several instances can share one port")
    add(
        "admission-mode",
        "enforce: deny images not on the list; warn: admit but return "
        "and log the would-be denials (for rolling the policy out)",
        "enforce",
        metavar="enforce|warn",
    )
    add(
        "replica-max-age",
        "seconds admission decisions may come from the in-memory replica alone "
        "while the database does not answer, counted from when the replica "
        "was last known current; after that they fail with 503",
        "600",
        metavar="SECONDS",
    )
    add(
        "events-retention-days",
        "days the audit trail (GET /events) keeps an event; older ones are "
        "pruned hourly; 0 keeps every event",
        "365",
        metavar="DAYS",
    )
    return parser


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep:
        raise ConfigError(f"--listen {value!r}: expected [HOST]:PORT, e.g. :8000")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        number = int(port)
    except ValueError:
        raise ConfigError(f"--listen {value!r}: port {port!r} is not a number") from None
    if not 0 <= number <= 65535:
        raise ConfigError(f"--listen {value!r}: port out of range")
    return host, number


def _number(name: str, raw: Any, kind: type[int] | type[float], minimum: float) -> int | float:
    try:
        value: int | float = kind(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"--{name} {raw!r}: not a number") from None
    if value < minimum:
        raise ConfigError(f"--{name} {raw!r}: must be at least {minimum}")
    return value


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def database_url(ns: argparse.Namespace, env: Mapping[str, str]) -> str:
    if ns.database_url:
        return str(ns.database_url)
    parts = {
        "host": ns.dbhost,
        "port": ns.dbport,
        "user": ns.dbuser,
        "password": ns.dbpassword,
        "dbname": ns.dbname,
        "sslmode": ns.dbsslmode,
    }
    given = {k: str(v) for k, v in parts.items() if v not in (None, "")}
    if given:
        full = {k: given.get(k, LEGACY_DB_DEFAULTS.get(k)) for k in parts}
        return " ".join(f"{k}={_quote(v)}" for k, v in full.items() if v is not None)
    return "sqlite:///" + default_sqlite_path(env)


def default_sqlite_path(env: Mapping[str, str]) -> str:
    """systemd's StateDirectory= when set, else the XDG data directory."""
    state = env.get("STATE_DIRECTORY")
    if state:
        return os.path.join(state.split(":")[0], "imagelist.db")
    home = env.get("HOME") or os.path.expanduser("~")
    base = env.get("XDG_DATA_HOME") or os.path.join(home, ".local", "share")
    return os.path.join(base, "imagelist", "imagelist.db")


def load_config(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> Config:
    env = os.environ if env is None else env
    ns = build_parser(env).parse_args(argv)
    # A Go service variable counts as used unless a flag overrode it (for
    # --debug, a flag that agrees with it: the same either way).
    used = tuple(
        name
        for option, name in legacy_env(env).items()
        if option == "debug" or getattr(ns, option.replace("-", "_")) == env[name]
    )
    host, port = parse_listen(str(ns.listen))
    if bool(ns.certfile) != bool(ns.keyfile):
        raise ConfigError("--certfile and --keyfile must be given together for TLS")
    for name in ("certfile", "keyfile", "tokens_file"):
        path = getattr(ns, name)
        if path and not os.path.isfile(path):
            problem = "is a directory, not a file" if os.path.isdir(path) else "no such file"
            raise ConfigError(f"--{name.replace('_', '-')} {path}: {problem}")
    if ns.action == "show-tokens" and not ns.tokens_file:
        raise ConfigError(f"--show-tokens needs --tokens-file (or {env_name('tokens-file')})")
    if ns.log_format not in ("json", "console"):
        raise ConfigError(f"--log-format {ns.log_format!r}: expected json or console")
    if ns.admission_mode not in ("enforce", "warn"):
        raise ConfigError(f"--admission-mode {ns.admission_mode!r}: expected enforce or warn")
    url = database_url(ns, env)
    if url.startswith("sqlite:") and not url.startswith("sqlite:///"):
        raise ConfigError(f"--database-url {url!r}: a SQLite URL is sqlite:///PATH")
    if url.startswith("sqlite:") and ns.database_url:
        # Only the default store's directory is created: a mistyped
        # explicit path must not start the daemon on a new, empty store.
        directory = os.path.dirname(os.path.abspath(url[len("sqlite:///") :]))
        if not os.path.isdir(directory):
            raise ConfigError(f"--database-url {url!r}: directory {directory} does not exist")
    if not url.startswith("sqlite:"):
        try:
            check_postgres_dsn(url)
        except DsnError as exc:
            given = "--database-url" if ns.database_url else "the --db* options give"
            raise ConfigError(f"{given} {redacted(url)!r}: {exc}") from None
    return Config(
        listen_host=host,
        listen_port=port,
        database_url=url,
        tokens_file=ns.tokens_file or None,
        certfile=ns.certfile or None,
        keyfile=ns.keyfile or None,
        debug=bool(ns.debug),
        log_format=str(ns.log_format),
        max_body_size=int(_number("max-body-size", ns.max_body_size, int, 1024)),
        db_pool_size=int(_number("db-pool-size", ns.db_pool_size, int, 1)),
        db_timeout=float(_number("db-timeout", ns.db_timeout, float, 0.1)),
        db_connect_timeout=float(_number("db-connect-timeout", ns.db_connect_timeout, float, 1)),
        shutdown_timeout=float(_number("shutdown-timeout", ns.shutdown_timeout, float, 0)),
        reuse_port=bool(ns.reuse_port),
        admission_mode=str(ns.admission_mode),
        max_connections=int(_number("max-connections", ns.max_connections or 0, int, 0)),
        action=str(ns.action),
        legacy_env=used,
        replica_max_age=float(_number("replica-max-age", ns.replica_max_age, float, 0)),
        events_retention_days=int(
            _number("events-retention-days", ns.events_retention_days, int, 0)
        ),
    )
