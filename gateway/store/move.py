"""Moving a center's store: a SQLite index and a blob folder to PostgreSQL and/or S3.

``fenji store migrate`` (gateway/cli/store.py) opens the source store (the node's
config, its node stopped) and the target store (the same config with another
``index_url`` and/or ``blob_url``), then :func:`move` runs three steps, each of
which can be cut at any instant and run again:

1. **check the target** (:func:`check_target`): it must be empty, or hold only what
   this source holds (a previous run of the same move, cut short).  Every row the
   target has must be in the source with the same values (looked up by primary
   key), every blob in the target's folder or bucket must be one the source's index
   names.  Anything else is another center's data: :class:`TargetConflict`, naming
   the table and key (or the blob), before anything is written;
2. **copy** — blobs first (the row stays the commit point in the target too), each
   read from the source, its SHA-256 checked, written to the target and confirmed
   as a node writes it; a blob already in the target is re-read and kept only when
   its hash is right (else rewritten: ``repaired``).  Then every table the schema
   has, in primary-key batches of ``INSERT OR IGNORE`` (``ON CONFLICT DO NOTHING``
   on PostgreSQL), one transaction per batch; a table without a primary key in one
   transaction.  PostgreSQL's identity sequences are moved past the copied ids;
3. **verify** (:func:`verify_target`): every blob the index names re-read from the
   target and its SHA-256 compared with the index's; every table's row count and an
   order-free digest of its rows (the sum of each row's SHA-256) compared between
   source and target.  The ledger's chain is verified on the target by the caller
   (``fenji audit verify``'s check; the audit package sits above the store).

The tables are the schema's: every table the source has must be one a migration
creates (:data:`KNOWN_TABLES`, read from the migrations' text) and must exist in
the target with at least the source's columns; otherwise :class:`UnknownTable`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from fenji.gateway.errors import LocalError
from fenji.gateway.store.blobs import Blobs, BlobStoreError, StoreFull
from fenji.gateway.store.db import Store
from fenji.gateway.store.index import POSTGRESQL, Index
from fenji.gateway.store.migrations import AUDIT_EXTRA_SQL, MIGRATIONS
from fenji.gateway.store.upload_parts import LocalParts, UploadParts

log = logging.getLogger(__name__)
_T = TypeVar("_T")

# Rows per INSERT batch and per lookup: one transaction each, small enough that a
# composite-key lookup stays one short statement.
BATCH_ROWS = 500
# A blob up to this size is copied in memory; a larger one through a temp file
# (a 2 GB cine must not be held whole).  With BLOB_THREADS at once: at most
# 4 x 32 MiB held.
COPY_IN_MEMORY_BYTES = 32 * 1024 * 1024
# Blobs copied or verified at once (object stores answer each request with a
# round trip; a few in flight keep the link busy, 2 cores keep it modest).
BLOB_THREADS = 4
# Chunks of an upload in progress moved to a bucket at a time.
UPLOAD_CHUNK_BYTES = 8 * 1024 * 1024
# Conflicts named in one error.
MAX_NAMED = 5

# Tables of the schema (from the migrations' own text, never a second list), and
# SQLite's internal ones that are not data.
_CREATE = re.compile(r"CREATE\s+TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?(\w+)", re.I)
KNOWN_TABLES: frozenset[str] = frozenset(
    _CREATE.findall(AUDIT_EXTRA_SQL + "".join(sql for _, sql in MIGRATIONS)))
# Recorded by each index's own migrate(); compared, not copied.
SCHEMA_TABLE = "schema_migrations"
# Who is alive on the source (gateway/store/processes.py): not data, and it changes
# while a running center beats; the target's processes register themselves.
NOT_MOVED = frozenset({"processes"})


class MoveError(LocalError):
    """A store cannot be moved (the message says which store and why)."""


class TargetUnreachable(MoveError):
    """The target index or bucket does not answer (the message names its URL)."""


class TargetConflict(MoveError):
    """The target holds data that is not this source's (another center's)."""

    http_status = 409


class UnknownTable(MoveError):
    """A table the migrations do not create, or one the target lacks."""


def redact(url: str) -> str:
    """``url`` without a password (``user:pw@`` or ``?password=``), for messages.

    >>> redact("postgresql://fenji:s3cret@db:5432/center?password=x&sslmode=require")
    'postgresql://fenji@db:5432/center?sslmode=require'
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    netloc = parts.netloc
    if "@" in netloc:
        user, host = netloc.rsplit("@", 1)
        netloc = f"{user.split(':', 1)[0]}@{host}"
    query = urlencode([(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
                       if k.lower() not in ("password", "aws_secret_access_key")], safe="/:")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


Progress = Callable[[str, int, int], None]  # (what, done, total)


@dataclass
class BlobCounts:
    total: int = 0
    copied: int = 0
    present: int = 0  # already in the target with the right hash (an earlier run)
    repaired: int = 0  # in the target with a wrong hash: rewritten
    missing: int = 0  # not in the source (quarantine copies may have been evicted)
    bytes_copied: int = 0


@dataclass
class MoveReport:
    """What :func:`move` did and found; ``ok`` only when the target verified."""

    tables: dict[str, int] = field(default_factory=dict)  # rows per table in the target
    rows_copied: int = 0
    blobs: BlobCounts = field(default_factory=BlobCounts)
    quarantine: BlobCounts = field(default_factory=BlobCounts)
    upload_parts: int = 0
    blobs_verified: int = 0
    bytes_verified: int = 0
    tables_verified: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "tables": dict(self.tables), "rows_copied": self.rows_copied,
                "blobs": vars(self.blobs), "quarantine_blobs": vars(self.quarantine),
                "upload_parts": self.upload_parts,
                "verified": {"blobs": self.blobs_verified, "bytes": self.bytes_verified,
                             "tables": self.tables_verified},
                "problems": list(self.problems)}


# -- tables -------------------------------------------------------------------------
@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[str, ...]  # the source's, in its order
    key: tuple[str, ...]  # primary key columns; () for none


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def tables_of(source: Store, target: Store | None) -> list[Table]:
    """The source's tables, checked against the schema and the target's columns."""
    index = source.index
    names = sorted(t for t in index.tables() if not t.startswith("sqlite_")
                   and t != SCHEMA_TABLE and t not in NOT_MOVED)
    unknown = [t for t in names if t not in KNOWN_TABLES]
    if unknown:
        raise UnknownTable(f"source index {redact(index.url)} has table(s) "
                           f"{', '.join(unknown)} that no migration creates: fenji does not "
                           "know how to move them (known: " + ", ".join(sorted(KNOWN_TABLES))
                           + ")")
    out = []
    have = target.index.tables() if target is not None else set()
    for name in names:
        if index.dialect != "sqlite":
            raise MoveError(f"source index {redact(index.url)} is not SQLite: move a "
                            "PostgreSQL index with pg_dump / pg_restore")
        rows = index.reader().execute(
            "SELECT name, pk FROM pragma_table_info(?) ORDER BY cid", (name,)).fetchall()
        columns = tuple(r[0] for r in rows)
        key = tuple(r[0] for r in sorted((r for r in rows if r[1]), key=lambda r: r[1]))
        if target is not None:
            if name not in have:
                raise UnknownTable(f"table {name} of the source is missing in the target "
                                   f"index {redact(target.index.url)}")
            lacking = set(columns) - target.index.columns(name)
            if lacking:
                raise UnknownTable(f"table {name}: the target index {redact(target.index.url)} "
                                   f"lacks column(s) {', '.join(sorted(lacking))}")
        out.append(Table(name, columns, key))
    return out


def _select(t: Table) -> str:
    return "SELECT " + ", ".join(_quote(c) for c in t.columns) + f" FROM {_quote(t.name)}"


def _batches(index: Index, t: Table) -> Iterator[list[Any]]:
    """Every row of ``t``, in key order, BATCH_ROWS at a time (keyset paging: each
    database orders and compares its keys the same way, whatever its collation)."""
    if not t.key:
        yield list(index.reader().execute(_select(t)).fetchall())
        return
    keys = ", ".join(_quote(c) for c in t.key)
    order = f" ORDER BY {keys} LIMIT {BATCH_ROWS}"
    after: tuple[Any, ...] | None = None
    pos = [t.columns.index(c) for c in t.key]
    while True:
        if after is None:
            sql, args = _select(t) + order, ()
        else:
            sql = _select(t) + f" WHERE ({keys}) > ({', '.join('?' for _ in t.key)})" + order
            args = after
        rows = list(index.reader().execute(sql, args).fetchall())
        if not rows:
            return
        yield rows
        after = tuple(rows[-1][p] for p in pos)


def _lookup(index: Index, t: Table, keys: Sequence[tuple[Any, ...]]) -> dict[tuple[Any, ...], Any]:
    """The rows of ``t`` whose primary keys are ``keys``, by key."""
    if not keys:
        return {}
    one = "(" + " AND ".join(f"{_quote(c)} = ?" for c in t.key) + ")"
    sql = _select(t) + " WHERE " + " OR ".join(one for _ in keys)
    pos = [t.columns.index(c) for c in t.key]
    return {tuple(r[p] for p in pos): r for r in index.reader().execute(
        sql, [v for k in keys for v in k]).fetchall()}


def _canon(row: Any) -> bytes:
    return json.dumps(list(row), ensure_ascii=False, separators=(",", ":"),
                      default=str).encode()


def _digest(index: Index, t: Table) -> tuple[int, str]:
    """``(rows, digest)``: the sum mod 2**256 of each row's SHA-256 (order-free)."""
    n, total = 0, 0
    for rows in _batches(index, t):
        for r in rows:
            n += 1
            total = (total + int.from_bytes(hashlib.sha256(_canon(r)).digest(), "big")) % (1 << 256)
    return n, f"{total:064x}"


def _differs(a: Any, b: Any, columns: Sequence[str]) -> str | None:
    for c, x, y in zip(columns, a, b, strict=True):
        if _canon([x]) != _canon([y]):
            return f"{c} = {_short(y)} in the target, {_short(x)} in the source"
    return None


def _short(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 40 else s[:39] + "…"


def _key_text(t: Table, key: tuple[Any, ...]) -> str:
    return ", ".join(f"{c}={v}" for c, v in zip(t.key, key, strict=True))


def _check_tables(source: Store, target: Store, tables: list[Table]) -> None:
    """Every target row must be the source's row with that key (TargetConflict)."""
    found: list[str] = []
    for t in tables:
        n = int(target.index.reader().execute(
            f"SELECT count(*) FROM {_quote(t.name)}").fetchone()[0])
        if n == 0:
            continue
        if not t.key:  # copied in one transaction: all of the source's rows, or none
            if _digest(target.index, t) != _digest(source.index, t):
                found.append(f"table {t.name}: the target's {n} rows are not the source's")
            continue
        pos = [t.columns.index(c) for c in t.key]
        for rows in _batches(target.index, t):
            keys = [tuple(r[p] for p in pos) for r in rows]
            theirs = _lookup(source.index, t, keys)
            for k, r in zip(keys, rows, strict=True):
                src = theirs.get(k)
                why = ("not in the source" if src is None else _differs(src, r, t.columns))
                if why:
                    found.append(f"table {t.name}: {_key_text(t, k)}: {why}")
            if len(found) >= MAX_NAMED:
                break
        if len(found) >= MAX_NAMED:
            break
    if found:
        raise TargetConflict(f"target index {redact(target.index.url)} holds data that is not "
                             "this center's: another center's, or rows this center changed "
                             "after an earlier run (a node ran in between); empty it or "
                             "choose another database: " + "; ".join(found[:MAX_NAMED]))


def _copy_table(source: Store, target: Store, t: Table, progress: Progress,
                done: list[int], total: int) -> int:
    cols = ", ".join(_quote(c) for c in t.columns)
    sql = (f"INSERT OR IGNORE INTO {_quote(t.name)} ({cols}) VALUES "
           f"({', '.join('?' for _ in t.columns)})")
    copied = 0
    if not t.key and int(target.index.reader().execute(
            f"SELECT count(*) FROM {_quote(t.name)}").fetchone()[0]):
        return 0  # already whole (checked by _check_tables)
    for rows in _batches(source.index, t):
        with target.atomic() as con:
            cur = con.executemany(sql, [tuple(r) for r in rows])
            # Rows inserted (sqlite3 and psycopg both sum executemany's rowcounts);
            # rows already there from an earlier run are skipped.
            copied += max(0, int(cur.rowcount))
        done[0] += len(rows)
        progress("rows", done[0], total)
    return copied


def _advance_sequences(target: Store) -> None:
    """PostgreSQL: each identity column's sequence past the largest copied id (an id
    given explicitly does not move it; the next insert would collide)."""
    if target.index.dialect != POSTGRESQL:
        return  # SQLite's AUTOINCREMENT follows explicit ids by itself
    with target.atomic() as con:
        idents = con.execute(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND is_identity = 'YES'").fetchall()
        for table, column in idents:
            con.execute(f"SELECT setval(pg_get_serial_sequence(?, ?), "
                        f"coalesce(max({_quote(column)}), 0) + 1, false) FROM {_quote(table)}",
                        (table, column))


# -- blobs --------------------------------------------------------------------------
def _hash_of(blobs: Blobs, sha: str) -> tuple[str, int]:
    """The SHA-256 and size of blob ``sha`` as ``blobs`` holds it (OSError: absent)."""
    h, n = hashlib.sha256(), 0
    with blobs.open(sha) as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
            n += len(chunk)
    return h.hexdigest(), n


def _target_has(blobs: Blobs, sha: str) -> str | None:
    """``None`` when the target lacks the blob; else its actual hash."""
    try:
        if not blobs.exists(sha):
            return None
        return _hash_of(blobs, sha)[0]
    except FileNotFoundError:
        return None


def _copy_blob(src: Blobs, dst: Blobs, sha: str, size: int, tmp_dir: Path) -> str:
    """Copy one blob, checking its hash on the way: "copied", "present", "repaired",
    "missing" (not in the source).  Raises MoveError on a corrupt source blob."""
    have = _target_has(dst, sha)
    if have == sha:
        return "present"
    try:
        if size <= COPY_IN_MEMORY_BYTES:
            data = src.read(sha)
            got = hashlib.sha256(data).hexdigest()
            if got != sha:
                raise MoveError(f"source blob {sha} in {src.where} has hash {got}: the source "
                                "is damaged (fenji store verify names the instance)")
            dst.put(data, sha)
        else:
            fd, name = tempfile.mkstemp(dir=tmp_dir, prefix="migrate-", suffix=".tmp")
            path = Path(name)
            try:
                h = hashlib.sha256()
                with os.fdopen(fd, "wb") as out, src.open(sha) as fh:
                    for chunk in iter(lambda: fh.read(1 << 20), b""):
                        h.update(chunk)
                        out.write(chunk)
                if h.hexdigest() != sha:
                    raise MoveError(f"source blob {sha} in {src.where} has hash "
                                    f"{h.hexdigest()}: the source is damaged")
                dst.put_file(path, sha)  # uploads (or moves) and removes the temp file
            finally:
                path.unlink(missing_ok=True)
    except FileNotFoundError:
        return "missing"
    return "copied" if have is None else "repaired"


def _blob_names(source: Store, sql: str) -> list[tuple[str, int]]:
    return [(r[0], int(r[1])) for r in source.index.reader().execute(sql).fetchall()]


_INSTANCE_BLOBS = ("SELECT sha256, max(size) FROM instances GROUP BY sha256 ORDER BY sha256")
_QUARANTINE_BLOBS = ("SELECT sha256, max(size) FROM quarantine GROUP BY sha256 ORDER BY sha256")


def _check_blobs(source: Store, target: Store) -> None:
    """Every blob in the target's home must be one the source's index names."""
    for blobs, sql in ((target.blobs, _INSTANCE_BLOBS),
                       (target.quarantine_blobs, _QUARANTINE_BLOBS)):
        known = {s for s, _ in _blob_names(source, sql)}
        foreign = []
        for b in blobs.listing():
            if b.name not in known:
                foreign.append(b.name)
                if len(foreign) >= MAX_NAMED:
                    break
        if foreign:
            raise TargetConflict(f"target blobs {blobs.where} hold blob(s) this center's index "
                                 f"does not name ({', '.join(f[:16] + '…' for f in foreign)}): "
                                 "another center's data? Empty it, or choose another prefix")


def _bounded_map(pool: ThreadPoolExecutor, fn: Callable[[Any], _T], items: Sequence[Any]
                 ) -> Iterator[_T]:
    """``pool.map`` a slice at a time: map() submits everything at once, and a
    regional center's million blobs would be a million futures in memory."""
    step = BLOB_THREADS * 64
    for at in range(0, len(items), step):
        yield from pool.map(fn, items[at:at + step])


def _copy_blobs(src: Blobs, dst: Blobs, names: list[tuple[str, int]], tmp_dir: Path,
                counts: BlobCounts, progress: Progress, what: str, *,
                missing_ok: bool) -> list[str]:
    problems: list[str] = []
    counts.total = len(names)

    def one(item: tuple[str, int]) -> tuple[str, int, str]:
        sha, size = item
        try:
            return sha, size, _copy_blob(src, dst, sha, size, tmp_dir)
        except (MoveError, BlobStoreError, StoreFull, OSError) as exc:
            return sha, size, f"error: {exc}"

    with ThreadPoolExecutor(BLOB_THREADS) as pool:
        for n, (sha, size, outcome) in enumerate(_bounded_map(pool, one, names), start=1):
            if outcome == "copied":
                counts.copied += 1
                counts.bytes_copied += size
            elif outcome == "repaired":
                counts.repaired += 1
                counts.bytes_copied += size
            elif outcome == "present":
                counts.present += 1
            elif outcome == "missing":
                counts.missing += 1
                if not missing_ok:
                    problems.append(f"blob {sha} is missing in the source {src.where}")
            else:
                problems.append(f"blob {sha}: {outcome[7:]}")
            progress(what, n, len(names))
    return problems


def _move_upload_parts(source: Store, target: Store) -> int:
    """Uploads still arriving keep their bytes where any process can resume them:
    the committed bytes of each ``receiving`` upload, into the target's parts."""
    src_parts: UploadParts = source.upload_parts(source.root / "uploads")
    dst_parts: UploadParts = target.upload_parts(target.root / "uploads")
    if not isinstance(src_parts, LocalParts) or isinstance(dst_parts, LocalParts):
        return 0  # same home (the local folder), or already in a bucket
    moved = 0
    for upload_id, committed in target.index.reader().execute(
            "SELECT upload_id, offset FROM uploads WHERE state = 'receiving' AND offset > 0"
            ).fetchall():
        path = src_parts.local_file(upload_id)
        if path is None or not path.exists():
            continue
        dst_parts.create(upload_id)
        with open(path, "rb") as fh:
            for at in range(0, int(committed), UPLOAD_CHUNK_BYTES):
                dst_parts.append(upload_id, at,
                                 fh.read(min(UPLOAD_CHUNK_BYTES, int(committed) - at)))
        moved += 1
    return moved


# -- verification -------------------------------------------------------------------
def verify_target(source: Store, target: Store, tables: list[Table], report: MoveReport,
                  progress: Progress, *, copy_index: bool) -> None:
    """Re-read every indexed blob from the target and compare its SHA-256 with the
    index's; compare every table's rows (count and digest) between source and target."""
    names = _blob_names(source, _INSTANCE_BLOBS)

    def one(item: tuple[str, int]) -> tuple[str, int, str | None]:
        sha, size = item
        try:
            got, n = _hash_of(target.blobs, sha)
        except FileNotFoundError:
            return sha, 0, f"blob {sha} is missing in the target {target.blobs.where}"
        except (OSError, BlobStoreError) as exc:
            return sha, 0, f"blob {sha} unreadable in the target: {exc}"
        if got != sha:
            return sha, n, (f"blob {sha} in the target {target.blobs.where} has hash {got} "
                            "(corrupt)")
        return sha, n, None

    bad: dict[str, str] = {}
    with ThreadPoolExecutor(BLOB_THREADS) as pool:
        for i, (sha, n, problem) in enumerate(_bounded_map(pool, one, names), start=1):
            if problem:
                bad[sha] = problem
            else:
                report.blobs_verified += 1
                report.bytes_verified += n
            progress("verify blobs", i, len(names))
    if bad:  # name the instances, as `fenji store verify` does
        for sha, problem in bad.items():
            uids = [r[0] for r in target.index.reader().execute(
                "SELECT sop_instance_uid FROM instances WHERE sha256 = ? LIMIT 3",
                (sha,)).fetchall()]
            report.problems.append(f"{problem}; instance(s) {', '.join(uids) or '?'}")
    for t in tables:
        n_src, d_src = _digest(source.index, t)
        report.tables[t.name] = n_src
        if not copy_index:
            report.tables_verified += 1
            continue
        n_dst, d_dst = _digest(target.index, t)
        report.tables[t.name] = n_dst
        if n_dst != n_src:
            report.problems.append(f"table {t.name}: {n_dst} rows in the target, {n_src} in "
                                   "the source")
        elif d_dst != d_src:
            report.problems.append(f"table {t.name}: the target's rows differ from the "
                                   "source's (same count, other values)")
        else:
            report.tables_verified += 1
    if copy_index:
        src_v = source.index.reader().execute(f"SELECT max(version) FROM {SCHEMA_TABLE}"
                                              ).fetchone()[0]
        dst_v = target.index.reader().execute(f"SELECT max(version) FROM {SCHEMA_TABLE}"
                                              ).fetchone()[0]
        if src_v != dst_v:
            report.problems.append(f"schema version {dst_v} in the target, {src_v} in the "
                                   "source")


# -- the whole move -----------------------------------------------------------------
def check_target(source: Store, target: Store, *, copy_index: bool, copy_blobs: bool
                 ) -> list[Table]:
    """The tables to move; raises TargetConflict / UnknownTable before any write."""
    tables = tables_of(source, target if copy_index else None)
    if copy_index:
        _check_tables(source, target, tables)
    if copy_blobs:
        _check_blobs(source, target)
    return tables


def move(source: Store, target: Store, *, copy_index: bool, copy_blobs: bool,
         progress: Progress, verify_only: bool = False) -> MoveReport:
    """Copy ``source`` into ``target`` (index and/or blobs) and verify it (module doc)."""
    report = MoveReport()
    # --verify-only writes nothing, so it need not refuse: what differs is reported.
    tables = check_target(source, target, copy_index=copy_index and not verify_only,
                          copy_blobs=copy_blobs and not verify_only)
    if verify_only and copy_index:
        tables = tables_of(source, target)  # the target's columns checked too
    if not verify_only:
        if copy_blobs:
            report.problems += _copy_blobs(
                source.blobs, target.blobs, _blob_names(source, _INSTANCE_BLOBS),
                source.tmp_dir, report.blobs, progress, "blobs", missing_ok=False)
            report.problems += _copy_blobs(
                source.quarantine_blobs, target.quarantine_blobs,
                _blob_names(source, _QUARANTINE_BLOBS), source.tmp_dir, report.quarantine,
                progress, "quarantine", missing_ok=True)
        if copy_index:
            total = sum(int(source.index.reader().execute(
                f"SELECT count(*) FROM {_quote(t.name)}").fetchone()[0]) for t in tables)
            done = [0]
            for t in tables:
                report.rows_copied += _copy_table(source, target, t, progress, done, total)
            _advance_sequences(target)
        if copy_blobs:
            report.upload_parts = _move_upload_parts(source, target)
    verify_target(source, target, tables, report, progress, copy_index=copy_index)
    return report
