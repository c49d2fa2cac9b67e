"""A real PostgreSQL server (Debian's) on a free loopback port, started and stopped by the
test run: ``initdb`` + ``pg_ctl`` as an unprivileged user (the ``postgres`` account when
the tests run as root, which initdb refuses), trust authentication on 127.0.0.1 only."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tests.support.servers import free_port
from tests.support.wait import wait_until

USER = "embedhost"
"""The database superuser initdb creates (no password: trust, loopback only)."""


def _bin(name: str) -> str:
    found = shutil.which(name) or next(
        iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None
    )
    if found is None:
        raise RuntimeError(f"PostgreSQL's {name} is not installed; run scripts/system-deps")
    return found


def _as_user() -> list[str]:
    """The prefix that runs a command as an unprivileged user (nothing if we are one)."""
    if os.geteuid() != 0:
        return []
    return ["runuser", "-u", "postgres", "--"]


@dataclass
class PostgresServer:
    port: int
    root: Path
    log_path: Path

    @property
    def url(self) -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/postgres"

    def stop(self) -> None:
        subprocess.run(
            [*_as_user(), _bin("pg_ctl"), "-D", str(self.root / "data"), "-m", "immediate",
             "-w", "stop"],
            capture_output=True, check=False, timeout=60,
        )  # fmt: skip
        shutil.rmtree(self.root, ignore_errors=True)


def start_postgres(timeout: float = 60) -> PostgresServer:
    """initdb a fresh cluster in a temporary directory and start it; ready to connect."""
    import psycopg

    # Outside pytest's tmp_path: its parents are root's, mode 0700, which the server's
    # user cannot enter.
    root = Path(tempfile.mkdtemp(prefix="embedhost-pg-"))
    if os.geteuid() == 0:
        pg = pwd.getpwnam("postgres")
        os.chown(root, pg.pw_uid, pg.pw_gid)
    port = free_port()
    data, log_path = root / "data", root / "server.log"
    try:
        subprocess.run(
            [*_as_user(), _bin("initdb"), "-D", str(data), "-U", USER, "--auth=trust",
             "-E", "UTF8", "--no-sync"],
            capture_output=True, check=True, timeout=120,
        )  # fmt: skip
        opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
        subprocess.run(
            [*_as_user(), _bin("pg_ctl"), "-D", str(data), "-l", str(log_path), "-o", opts,
             "-w", "-t", str(int(timeout)), "start"],
            capture_output=True, check=True, timeout=timeout + 10,
        )  # fmt: skip
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"PostgreSQL did not start: {exc.stderr.decode()[-2000:]}") from exc
    server = PostgresServer(port, root, log_path)

    def answers() -> bool:
        with psycopg.connect(server.url, connect_timeout=2) as conn:
            return conn.execute("SELECT 1").fetchone() == (1,)

    try:
        wait_until(answers, f"PostgreSQL on port {port}", timeout=timeout, ignore=(Exception,))
    except AssertionError:
        server.stop()
        raise
    return server
