"""A throwaway PostgreSQL server for tests, and a ``dagster.yaml`` that stores a Dagster
instance in it.

``running_postgres()`` starts a fresh server from Debian's binaries (``initdb``/``pg_ctl``
on PATH, else ``/usr/lib/postgresql/*/bin``) in a temporary directory, listening only on
127.0.0.1 with trust auth and fsync off, and yields the URL of its ``test`` database. It
skips the test when PostgreSQL, ``dagster-postgres`` or ``psycopg2`` is missing (as root
with apt-get it installs PostgreSQL first, once), and always stops the server and removes
its directory on exit.
"""

import contextlib
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

DATABASE = "test"
INSTALL_HINT = "install it with `apt-get install postgresql` (scripts/setup does, as root)"
_install_tried = False


def _pg_bin() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl``: PATH first, then the newest
    ``/usr/lib/postgresql/<version>/bin``."""
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if initdb and pg_ctl:
        bin_dir = Path(initdb).resolve().parent  # Debian's /usr/bin wrappers are not initdb itself
        if (bin_dir / "pg_ctl").exists():
            return bin_dir
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: [int(n) for n in re.findall(r"\d+", p.parent.name)],
        reverse=True,
    )
    return next((p for p in versions if (p / "initdb").exists() and (p / "pg_ctl").exists()), None)


def _install_postgres() -> None:
    """``apt-get install postgresql`` once per process, as root only; failures are left to the caller."""
    global _install_tried
    if _install_tried or os.geteuid() != 0 or not shutil.which("apt-get"):
        return
    _install_tried = True
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "postgresql"]
    if subprocess.run(install, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
        subprocess.run(install, env=env, capture_output=True)


def find_pg_bin() -> Path:
    """The PostgreSQL binaries, installed if need be, or a skip saying what is missing."""
    pytest.importorskip("psycopg2", reason="psycopg2 is not installed: pip install dagster-postgres")
    pytest.importorskip("dagster_postgres", reason="dagster-postgres is not installed: pip install dagster-postgres")
    bin_dir = _pg_bin()
    if bin_dir is None:
        _install_postgres()
        bin_dir = _pg_bin()
    if bin_dir is None:
        where = "not on PATH nor in /usr/lib/postgresql/*/bin"
        pytest.skip(f"PostgreSQL's initdb/pg_ctl are not installed ({where}): {INSTALL_HINT}")
    return bin_dir


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_postgres() -> Iterator[str]:
    """A fresh PostgreSQL server for the duration of the block; yields
    ``postgresql+psycopg2://postgres@127.0.0.1:<port>/test``: the driver is explicit because
    SQLAlchemy 2.1 maps a bare ``postgresql://`` to psycopg 3, and dagster-postgres ships psycopg2."""
    bin_dir = find_pg_bin()
    as_user: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip(f"running as root and there is no `postgres` user to run PostgreSQL as: {INSTALL_HINT}")
        if not shutil.which("runuser"):
            pytest.skip("running as root and runuser (util-linux) is missing: cannot run PostgreSQL as `postgres`")
        as_user = ["runuser", "-u", "postgres", "--"]
    root = Path(tempfile.mkdtemp(prefix="llm-assets-pg-"))
    data, log = root / "data", root / "postgres.log"
    started = False

    def run(*command: str) -> subprocess.CompletedProcess:
        return subprocess.run([*as_user, *command], cwd=root, capture_output=True, text=True)

    try:
        if as_user:
            os.chown(root, owner.pw_uid, owner.pw_gid)
        superuser = "postgres" if as_user else pwd.getpwuid(os.geteuid()).pw_name
        init = run(
            str(bin_dir / "initdb"), "-D", str(data), "-U", superuser, "-A", "trust", "--no-locale", "-E", "UTF8"
        )
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed:\n{init.stdout}\n{init.stderr}")
        for _attempt in range(3):  # another process may take the free port before the server does
            port = _free_port()
            options = (
                f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={root} "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
            )
            pg_ctl = str(bin_dir / "pg_ctl")
            start = run(pg_ctl, "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "60", "start")
            if start.returncode == 0:
                started = True
                break
        if not started:
            raise RuntimeError(f"pg_ctl start failed:\n{start.stdout}\n{start.stderr}\n{log.read_text()[-3000:]}")
        yield create_database(f"postgresql+psycopg2://{superuser}@127.0.0.1:{port}/postgres", DATABASE)
    finally:
        if started:
            run(str(bin_dir / "pg_ctl"), "-D", str(data), "stop", "-m", "immediate")
        shutil.rmtree(root, ignore_errors=True)


def create_database(postgres_url: str, name: str) -> str:
    """Create database ``name`` on the server of ``postgres_url``; its URL."""
    import psycopg2
    import sqlalchemy as sa

    url = sa.make_url(postgres_url)
    connection = psycopg2.connect(host=url.host, port=url.port, user=url.username, dbname="postgres")
    try:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE {name}")
    finally:
        connection.close()
    return url.set(database=name).render_as_string(hide_password=False)


def dagster_yaml(postgres_url: str | None) -> str:
    """The text of a ``dagster.yaml`` storing runs, events and schedules in ``postgres_url``
    (dagster-postgres), or in the default SQLite files under DAGSTER_HOME when ``None``;
    telemetry off either way."""
    storage = f'storage:\n  postgres:\n    postgres_url: "{postgres_url}"\n' if postgres_url else ""
    return f"{storage}telemetry:\n  enabled: false\n"
