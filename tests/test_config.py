"""Command line and environment."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from tornado.httpclient import AsyncHTTPClient

from config import ConfigError, load_config

from daemon import ROOT
from helpers import running_app

OLD_FLAGS = [
    "--listen",
    "--tokens-file",
    "--dbhost",
    "--dbport",
    "--dbuser",
    "--dbpassword",
    "--dbname",
    "--dbsslmode",
    "--certfile",
    "--keyfile",
    "--debug",
]


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "imagelist.py"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )


def test_help_lists_every_option_and_its_environment_variable() -> None:
    out = run_cli("--help")
    assert out.returncode == 0
    for flag in [
        *OLD_FLAGS,
        "--database-url",
        "--log-format",
        "--admission-mode",
        "--max-body-size",
        "--db-timeout",
        "--reuse-port",
    ]:
        assert flag in out.stdout, flag
        assert "IMAGELIST_" + flag[2:].upper().replace("-", "_") in out.stdout, flag


def test_help_never_echoes_a_password_from_the_environment() -> None:
    out = run_cli("--help", env={"IMAGELIST_DBPASSWORD": "hunter2-secret", "PATH": "/usr/bin"})
    assert out.returncode == 0 and "hunter2-secret" not in out.stdout


# Every load_config() here gets its environment explicitly: the real one
# (STATE_DIRECTORY under systemd, XDG_DATA_HOME, HOME) must not decide.


def test_defaults_use_sqlite_in_the_data_directory() -> None:
    c = load_config([], env={"HOME": "/home/ci"})
    assert c.listen_host == "" and c.listen_port == 8000
    assert c.database_url == "sqlite:////home/ci/.local/share/imagelist/imagelist.db"
    assert not c.tls and c.tokens_file is None and c.admission_mode == "enforce"


def test_xdg_data_home_wins_over_home() -> None:
    c = load_config([], env={"HOME": "/home/ci", "XDG_DATA_HOME": "/srv/data"})
    assert c.database_url == "sqlite:////srv/data/imagelist/imagelist.db"


def test_state_directory_wins_for_the_default_store() -> None:
    env = {"STATE_DIRECTORY": "/var/lib/imagelist:/var/lib/other", "XDG_DATA_HOME": "/srv"}
    assert load_config([], env=env).database_url == "sqlite:////var/lib/imagelist/imagelist.db"


def test_db_options_select_postgres_with_a_dsn() -> None:
    c = load_config(
        [
            "--dbhost",
            "db1",
            "--dbport",
            "5433",
            "--dbuser",
            "u",
            "--dbpassword",
            "p w'x",
            "--dbname",
            "images",
            "--dbsslmode",
            "require",
        ],
        env={},
    )
    assert not c.database_url.startswith("sqlite:")
    assert c.database_url == (
        "host='db1' port='5433' user='u' password='p w\\'x' dbname='images' sslmode='require'"
    )
    import psycopg2.extensions

    parsed = psycopg2.extensions.parse_dsn(c.database_url)
    assert parsed["password"] == "p w'x" and parsed["host"] == "db1"


def test_environment_sets_options_and_flags_win() -> None:
    env = {
        "IMAGELIST_DBHOST": "envhost",
        "IMAGELIST_LISTEN": "127.0.0.1:9000",
        "IMAGELIST_DEBUG": "true",
        "IMAGELIST_REUSE_PORT": "1",
    }
    c = load_config([], env=env)
    assert "host='envhost'" in c.database_url
    assert (c.listen_host, c.listen_port, c.debug, c.reuse_port) == ("127.0.0.1", 9000, True, True)
    c = load_config(["--dbhost", "flaghost", "--listen", ":1234"], env=env)
    assert "host='flaghost'" in c.database_url and c.listen_port == 1234


def test_database_url_wins_over_db_options() -> None:
    c = load_config(["--dbhost", "ignored", "--database-url", "postgresql://a@b/c"], env={})
    assert c.database_url == "postgresql://a@b/c"
    c = load_config(["--dbhost", "ignored"], env={"IMAGELIST_DATABASE_URL": "sqlite:///x.db"})
    assert c.database_url.startswith("sqlite:///")


def test_old_single_dash_spelling_is_accepted() -> None:
    c = load_config(["-listen", ":8001", "-dbhost", "db", "-debug"], env={})
    assert c.listen_port == 8001 and "host='db'" in c.database_url and c.debug


@pytest.mark.parametrize(
    ("listen", "host", "port"),
    [
        ("[::1]:8000", "::1", 8000),
        ("[::]:8080", "::", 8080),
        ("0.0.0.0:80", "0.0.0.0", 80),  # noqa: S104 - parsed here, not bound
        ("127.0.0.1:9000", "127.0.0.1", 9000),
        (":0", "", 0),
        ("localhost:8000", "localhost", 8000),
    ],
)
def test_listen_forms(listen: str, host: str, port: int) -> None:
    c = load_config(["--listen", listen], env={})
    assert (c.listen_host, c.listen_port) == (host, port)


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--listen", "8000"], {}, "--listen"),
        (["--listen", ":http"], {}, "--listen"),
        (["--listen", ":70000"], {}, "--listen"),
        (["--certfile", "/etc/hostname"], {}, "--certfile and --keyfile"),
        (["--tokens-file", "/nonexistent/tokens.yaml"], {}, "--tokens-file"),
        (["--db-timeout", "soon"], {}, "--db-timeout"),
        (["--max-body-size", "10"], {}, "--max-body-size"),
        (["--admission-mode", "maybe"], {}, "--admission-mode"),
        (["--log-format", "xml"], {}, "--log-format"),
        (["--database-url", "sqlite:relative.db"], {}, "--database-url"),
        ([], {"IMAGELIST_DEBUG": "perhaps"}, "IMAGELIST_DEBUG"),
        ([], {"IMAGELIST_LOG_FORMAT": "xml"}, "--log-format"),
    ],
)
def test_bad_values_are_refused_naming_the_option(args, env, message) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(args, env=env)


def test_cli_refuses_bad_options_with_a_clear_message_and_exit_2() -> None:
    out = run_cli("--listen", "nonsense")
    assert out.returncode == 2
    assert out.stderr.startswith("imagelist: --listen")
    assert "Traceback" not in out.stderr


@pytest.mark.gen_test
async def test_the_app_listens_on_a_bracketed_ipv6_address(tmp_path: Path) -> None:
    http = AsyncHTTPClient(force_instance=True)
    async with running_app(f"sqlite:///{tmp_path}/db", "--listen", "[::1]:0") as running:
        assert running.url == f"http://[::1]:{running.port}"
        reply = await http.fetch(running.url + "/health/live", raise_error=False)
    http.close()
    assert reply.code == 200
