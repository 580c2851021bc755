"""A throwaway PostgreSQL cluster for tests and benchmarks (issue 14): Debian's
``postgresql`` binaries, ``initdb`` and ``pg_ctl`` run as an unprivileged user
(initdb refuses root), data and unix socket in a temporary folder, TCP on a free
127.0.0.1 port.

``PgCluster.new_database()`` gives each test (or each benchmarked server) a
database of its own.  ``durable=False`` (tests) turns fsync off; a benchmark keeps
PostgreSQL's defaults (fsync and synchronous commit on), as a center would run.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg

from fenji.gateway.lab.harness import free_port

SUPERUSER = "fenji"


def pg_bindir() -> Path | None:
    """Where initdb and pg_ctl are: ``pg_config --bindir``, else the newest Debian one."""
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True,
                             check=True).stdout.strip()
        if (Path(out) / "initdb").exists():
            return Path(out)
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parent.parent.name)
                   if Path(p).parent.parent.name.isdigit() else 0)
    return Path(found[-1]).parent if found else None


def _as_user(user: str | None, cmd: list[str]) -> list[str]:
    return ["runuser", "-u", user, "--", *cmd] if user else cmd


class PgCluster:
    """A running cluster; :meth:`stop` removes it."""

    def __init__(self, *, durable: bool = False, max_connections: int = 200) -> None:
        bindir = pg_bindir()
        if bindir is None:
            raise RuntimeError("PostgreSQL server binaries not found (apt-get install postgresql; "
                               "`make debs` installs it)")
        self.bindir = bindir
        self.durable = durable
        # initdb refuses to run as root: the cluster belongs to an unprivileged user.
        self.user = "nobody" if os.geteuid() == 0 else None
        self.dir = Path(tempfile.mkdtemp(prefix="fenji-pg-"))
        self.data = self.dir / "data"
        if self.user:
            pw = pwd.getpwnam(self.user)
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        self.port = free_port()
        self._names = itertools.count(1)
        self._run([str(bindir / "initdb"), "-D", str(self.data), "-U", SUPERUSER,
                   "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync"])
        opts = (f"-c port={self.port} -c listen_addresses=127.0.0.1 "
                f"-c unix_socket_directories={self.dir} "
                f"-c max_connections={max_connections}")
        if not durable:
            # A test cluster: losing it in a power cut loses nothing.
            opts += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._run([str(bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.dir / "log"),
                   "-o", opts, "-w", "-t", "120", "start"])

    def _run(self, cmd: list[str]) -> None:
        res = subprocess.run(_as_user(self.user, cmd), capture_output=True, text=True,
                             cwd=self.dir, timeout=180)
        if res.returncode:
            log = (self.dir / "log").read_text() if (self.dir / "log").exists() else ""
            raise RuntimeError(f"{cmd[0]} failed ({res.returncode}): {res.stderr}{log}")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def new_database(self, name: str | None = None) -> str:
        """A fresh, empty database (``name``, or a unique one); its URL."""
        name = name or f"t{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.url(), autocommit=True) as con:
            con.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def version(self) -> str:
        with psycopg.connect(self.url(), autocommit=True) as con:
            row = con.execute("SHOW server_version").fetchone()
        return str(row[0]) if row else ""

    def stop(self) -> None:
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            self._run([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate",
                       "-w", "stop"])
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def cluster(*, durable: bool = False) -> Iterator[PgCluster]:
    c = PgCluster(durable=durable)
    try:
        yield c
    finally:
        c.stop()
