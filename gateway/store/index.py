"""The store's index: one small interface, two backends (SQLite, PostgreSQL).

Everything fenji asks of its index goes through an :class:`Index`:

* :meth:`Index.atomic` — the one transaction primitive; nested blocks are
  savepoints (sqlite-utils).  It yields a :data:`Con`, whose ``execute`` takes
  SQL with ``?`` placeholders and returns a cursor (``fetchone``, ``fetchall``,
  iteration, ``rowcount``);
* :meth:`Index.reader` — a read-only connection for one statement's rows;
* :meth:`Index.migrate` — the numbered migrations of
  :mod:`fenji.gateway.store.migrations`, recorded in ``schema_migrations``;
* :meth:`Index.lock` — serialise transactions on a key until COMMIT (the center's
  processes storing one SOP Instance UID); :meth:`Index.hold` / :meth:`Index.held`
  — a key held across transactions until released or until its process dies (a
  release in two commits), for every process of the center, on any machine;
* :meth:`Index.notify` / :meth:`Index.listen` — a wake-up for every process of the
  center on other machines (PostgreSQL NOTIFY; on SQLite, whose processes share one
  machine, nothing: the FIFO of :mod:`fenji.routing.wakeup` reaches them).

Callers write SQLite's SQL once; the PostgreSQL backend
(:mod:`fenji.gateway.store.index_pg`) translates its dialect in ONE place,
:func:`fenji.gateway.store.index_pg.pg_sql`.  The few things that cannot be
translated word for word (``FOR UPDATE SKIP LOCKED``, the ledger's advisory lock,
wildcard matching) ask :attr:`Index.dialect`.

The SQLite backend is today's store unchanged: WAL, ``synchronous=FULL``, one
writer connection per process guarded by a lock, one reader per thread.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

from fenji.gateway.errors import LocalError
from fenji.gateway.store.migrations import MIGRATIONS

log = logging.getLogger(__name__)

SQLITE = "sqlite"
POSTGRESQL = "postgresql"


class IndexUrlError(LocalError):
    """``[store] index_url`` names nothing fenji can open (the message says why)."""


class Cursor(Protocol):
    """What ``Con.execute`` returns: sqlite3's cursor, or the PostgreSQL backend's."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Con(Protocol):
    """A connection inside :meth:`Index.atomic` (or a reader): ``?`` placeholders, rows
    that index by position and by column name.  Use this in type hints, never
    ``sqlite3.Connection``."""

    def execute(self, sql: str, parameters: Any = ..., /) -> Any: ...

    def executemany(self, sql: str, parameters: Any, /) -> Any: ...


class Listener(Protocol):
    """What :meth:`Index.listen` returns: ``close()`` stops listening."""

    def close(self) -> None: ...


class Index(Protocol):
    """A store's index backend."""

    dialect: str
    url: str
    # Errors of the driver (a failed statement, a lost connection).
    errors: tuple[type[BaseException], ...]

    def atomic(self) -> contextlib.AbstractContextManager[Con]: ...

    def reader(self) -> Con: ...

    def migrate(self, label: str) -> None: ...

    def in_transaction(self) -> bool: ...

    def lock(self, con: Con, key: str) -> None: ...

    def hold(self, key: str) -> contextlib.AbstractContextManager[None]: ...

    def held(self, key: str) -> bool: ...

    def tables(self) -> set[str]: ...

    def columns(self, table: str) -> set[str]: ...

    def is_disk_full(self, exc: BaseException) -> bool: ...

    def notify(self, channel: str) -> None: ...

    def listen(self, channel: str, callback: Callable[[], None]) -> Listener: ...

    def close(self) -> None: ...


def dialect_of(con: Con) -> str:
    """The dialect of a connection :meth:`Index.atomic` yielded (for the few statements
    that differ: ``FOR UPDATE SKIP LOCKED``, advisory locks)."""
    return str(getattr(con, "dialect", SQLITE))


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{Path(path).resolve()}"


def parse_url(url: str, default_path: Path) -> tuple[str, str]:
    """``(dialect, target)`` for ``[store] index_url``: empty means the SQLite file in
    the store folder.  Raises :class:`IndexUrlError` naming the value."""
    url = url.strip()
    if not url:
        return SQLITE, str(default_path)
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///") - 1:]
        if path in ("/", ""):
            raise IndexUrlError(f"store.index_url = {url!r}: no file path after sqlite:///")
        return SQLITE, path
    if url.startswith(("postgresql://", "postgres://")):
        return POSTGRESQL, url
    raise IndexUrlError(f"store.index_url = {url!r}: expected postgresql://user@host:port/db "
                        f"or sqlite:///path (empty: the SQLite file in the store folder)")


def apply_migrations(index: Index, label: str, statements: Any) -> None:
    """Apply the migrations ``index`` has not seen, all in one transaction.
    ``statements(sql)`` splits (and translates) one migration's text."""
    with index.atomic() as con:
        con.execute("CREATE TABLE IF NOT EXISTS schema_migrations "
                    "(version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)")
        done = {r[0] for r in con.execute("SELECT version FROM schema_migrations")}
        for version, sql in MIGRATIONS:
            if version in done:
                continue
            for stmt in statements(sql):
                con.execute(stmt)
            con.execute("INSERT INTO schema_migrations VALUES (?, ?)", (version, time.time()))
            log.info("store=%s migrated schema to version %d", label, version)


class SqliteIndex:
    """The default: a SQLite file in WAL mode (DESIGN.md §4)."""

    dialect = SQLITE
    errors: tuple[type[BaseException], ...] = (sqlite3.Error,)

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.url = sqlite_url(self.path)
        self._wlock = threading.RLock()
        self._local = threading.local()
        self._writer = self._connect()
        self._depth = 0

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.path, timeout=30.0, isolation_level=None,
                              check_same_thread=False)
        con.row_factory = sqlite3.Row
        con.execute("PRAGMA journal_mode=WAL")
        # FULL: the WAL is fsynced at every commit; a row we acknowledged is on disk.
        con.execute("PRAGMA synchronous=FULL")
        con.execute("PRAGMA foreign_keys=ON")
        con.execute("PRAGMA busy_timeout=30000")
        return con

    def reader(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            con = self._connect()
            con.execute("PRAGMA query_only=ON")
            self._local.con = con
        return con

    def in_transaction(self) -> bool:
        return self._writer.in_transaction

    @contextlib.contextmanager
    def atomic(self) -> Iterator[sqlite3.Connection]:
        """The one transaction primitive; nested blocks become savepoints."""
        with self._wlock:
            con = self._writer
            if self._depth == 0:
                con.execute("BEGIN IMMEDIATE")
                name = None
            else:
                name = f"sp{self._depth}"
                con.execute(f"SAVEPOINT {name}")
            self._depth += 1
            try:
                yield con
            except BaseException:
                self._depth -= 1
                if name is None:
                    con.execute("ROLLBACK")
                else:
                    con.execute(f"ROLLBACK TO {name}")
                    con.execute(f"RELEASE {name}")
                raise
            else:
                self._depth -= 1
                if name is None:
                    try:
                        con.execute("COMMIT")
                    except BaseException:
                        # A COMMIT that fails (disk full, a deferred constraint) may
                        # leave the transaction open: its writes would ride along with
                        # the next one, whose BEGIN would fail anyway.  Undo them here.
                        if con.in_transaction:
                            with contextlib.suppress(sqlite3.Error):
                                con.execute("ROLLBACK")
                        raise
                else:
                    con.execute(f"RELEASE {name}")

    def migrate(self, label: str) -> None:
        apply_migrations(self, label, lambda sql: [s for s in sql.split(";") if s.strip()])

    def lock(self, con: Con, key: str) -> None:
        """Serialise transactions on ``key``: nothing to do, BEGIN IMMEDIATE already
        admits one writer at a time."""

    def _lock_file(self, key: str) -> Path:
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", key)[:80]
        tag = hashlib.sha256(key.encode()).hexdigest()[:12]  # "a:b" and "a_b" apart
        return self.path.parent / "locks" / f"{safe}-{tag}.lock"

    @contextlib.contextmanager
    def hold(self, key: str) -> Iterator[None]:
        """Hold ``key`` across transactions until the block ends or the process dies:
        an exclusive ``flock`` of a file beside the index (a SQLite index keeps every
        process on this machine, so the kernel's lock is the center's)."""
        path = self._lock_file(key)
        path.parent.mkdir(exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            with contextlib.suppress(OSError):
                path.unlink()
            os.close(fd)  # and with it the lock

    def held(self, key: str) -> bool:
        """Whether a live process holds ``key`` (:meth:`hold`)."""
        try:
            fd = os.open(self._lock_file(key), os.O_RDWR)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # closing drops a lock this call took
        return False

    def tables(self) -> set[str]:
        return {r[0] for r in self.reader().execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}

    def columns(self, table: str) -> set[str]:
        return {r["name"] for r in self.reader().execute(
            "SELECT name FROM pragma_table_info(?)", (table,))}

    def is_disk_full(self, exc: BaseException) -> bool:
        if isinstance(exc, sqlite3.OperationalError | sqlite3.DatabaseError):
            text = str(exc).lower()
            return "disk is full" in text or "database or disk is full" in text
        return False

    def notify(self, channel: str) -> None:
        """Nothing: a SQLite index keeps every process on this machine, and the
        wake-up FIFO reaches them all."""

    def listen(self, channel: str, callback: Callable[[], None]) -> Listener:
        return _NotListening()

    def close(self) -> None:
        with self._wlock:
            with contextlib.suppress(sqlite3.Error):
                self._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._writer.close()
        con = getattr(self._local, "con", None)
        if con is not None:
            con.close()
            self._local.con = None


class _NotListening:
    def close(self) -> None:
        pass
