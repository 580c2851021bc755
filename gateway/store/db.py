"""The node's store: content-addressed blobs plus a SQLite index (DESIGN.md §4).

Blobs are the exact Part-10 bytes received, named by their SHA-256
(gateway/store/blobs.py): in the store folder, written to a temp file in
``tmp/`` (same file system), fsynced, renamed into ``blobs/ab/cd/<sha256>``,
and the directory fsynced; or, with ``store.blob_url = s3://…``, PUT to an
S3-compatible bucket and confirmed by its checksum.  Only then is the index
row inserted; **the row is the commit point**, and a C-STORE success is sent
only after it.  After ``kill -9`` at any instant:

* a blob without a row is an orphan of an unacknowledged store (harmless, the
  sender retries; :meth:`Store.recover` removes it);
* a temp file is never visible under ``blobs/`` (rename is atomic);
* every row points to a complete blob with the right hash.

The index is SQLite in WAL mode with ``synchronous=FULL`` (the row must be on
disk before we acknowledge).  One writer connection per process, guarded by a
lock; each thread reads through its own connection.  Migrations are numbered,
recorded in ``schema_migrations`` and never edited once released.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, BinaryIO

from fenji.gateway.config import DICOMWEB_READ_CHUNK_BYTES
from fenji.gateway.dicom.info import InstanceInfo
from fenji.gateway.errors import LocalError
from fenji.gateway.store.blobs import BlobStoreError, S3Blobs, StoreFull, open_blobs
from fenji.gateway.store.migrations import MIGRATIONS
from fenji.gateway.store.upload_parts import LocalParts, S3Parts

log = logging.getLogger(__name__)


class BatchConflict(LocalError):
    """An instance of an all-or-nothing batch is already held with other bytes."""

    http_status = 409
    dicom_status = 0xC010  # SOP Instance conflict (gateway/dicom/status.py)

    def __init__(self, sop_instance_uid: str, stored_sha256: str, offered_sha256: str) -> None:
        super().__init__(f"SOP Instance UID {sop_instance_uid} already stored with other bytes "
                         f"(sha256 {stored_sha256[:12]}…, offered {offered_sha256[:12]}…)")
        self.sop_instance_uid = sop_instance_uid


class StoreError(LocalError):
    """The store is damaged or cannot be opened."""



class PutStatus(Enum):
    STORED = "stored"
    DUPLICATE = "duplicate"  # identical bytes already held: idempotent success
    CONFLICT = "conflict"  # same SOP Instance UID, different bytes: refused


@dataclass(frozen=True, slots=True)
class PutOutcome:
    status: PutStatus
    sha256: str
    size: int
    existing_sha256: str | None = None


def _is_enospc(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if isinstance(exc, sqlite3.OperationalError | sqlite3.DatabaseError):
        text = str(exc).lower()
        return "disk is full" in text or "database or disk is full" in text
    return False


class Store:
    """Blobs + index.  Safe to share between threads of one process."""

    def __init__(self, root: Path, *, min_free_bytes: int = 0, quarantine: bool = True,
                 quarantine_max_records: int = 0, quarantine_max_bytes: int = 0,
                 blob_url: str = "", blob_access_key_id: str = "",
                 blob_secret_access_key: str = "") -> None:
        self.root = Path(root)
        # Bounds of the quarantine (0: none); past them the oldest records go.
        self.quarantine_max_records = quarantine_max_records
        self.quarantine_max_bytes = quarantine_max_bytes
        # Set by the node (open_store): every stored instance is then a
        # "received" event in the audit ledger, in the same transaction.
        self.audit_node: str | None = None
        self.blob_dir = self.root / "blobs"
        self.tmp_dir = self.root / "tmp"
        self.quarantine_dir = self.root / "quarantine"
        self.db_path = self.root / "index.sqlite"
        self.min_free_bytes = min_free_bytes
        self.keep_quarantine = quarantine
        for d in (self.root, self.tmp_dir):
            d.mkdir(parents=True, exist_ok=True)
        # Blobs and quarantined bytes: the store folder, or one bucket (store.blob_url).
        self.blobs = open_blobs(blob_url, self.blob_dir, self.tmp_dir, store_root=self.root,
                                sub="blobs", fanout=True, min_free_bytes=min_free_bytes,
                                access_key_id=blob_access_key_id,
                                secret_access_key=blob_secret_access_key)
        self.quarantine_blobs = open_blobs(
            blob_url, self.quarantine_dir, self.tmp_dir, store_root=self.root, sub="quarantine",
            fanout=False, min_free_bytes=min_free_bytes,
            client=self.blobs.client if isinstance(self.blobs, S3Blobs) else None)
        if isinstance(self.blobs, S3Blobs):
            try:
                self.blobs.check()
            except BlobStoreError as exc:
                raise StoreError(f"store.blob_url = {blob_url!r}: {exc}") from exc
        self._wlock = threading.RLock()
        self._local = threading.local()
        self._writer = self._connect()
        self._depth = 0
        self._migrate()

    # -- connections and transactions ----------------------------------
    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.db_path, timeout=30.0, isolation_level=None,
                              check_same_thread=False)
        con.row_factory = sqlite3.Row
        con.execute("PRAGMA journal_mode=WAL")
        # FULL: the WAL is fsynced at every commit; a row we acknowledged is on disk.
        con.execute("PRAGMA synchronous=FULL")
        con.execute("PRAGMA foreign_keys=ON")
        con.execute("PRAGMA busy_timeout=30000")
        return con

    def _reader(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            con = self._connect()
            con.execute("PRAGMA query_only=ON")
            self._local.con = con
        return con

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

    def _migrate(self) -> None:
        with self.atomic() as con:
            con.execute("CREATE TABLE IF NOT EXISTS schema_migrations "
                        "(version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)")
            done = {r[0] for r in con.execute("SELECT version FROM schema_migrations")}
            for version, entry in MIGRATIONS:
                if version in done:
                    continue
                sql = entry
                for stmt in sql.split(";"):
                    if stmt.strip():
                        con.execute(stmt)
                con.execute("INSERT INTO schema_migrations VALUES (?, ?)", (version, time.time()))
                log.info("store=%s migrated schema to version %d", self.root, version)

    def query(self, sql: str, args: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        """Read-only query on this thread's reader connection."""
        return [dict(r) for r in self._reader().execute(sql, args)]

    def query_one(self, sql: str, args: tuple[Any, ...] = ()) -> dict[str, Any] | None:
        row = self._reader().execute(sql, args).fetchone()
        return dict(row) if row else None

    @property
    def schema_version(self) -> int:
        row = self._reader().execute("SELECT max(version) FROM schema_migrations").fetchone()
        return int(row[0] or 0)

    def close(self) -> None:
        with self._wlock:
            with contextlib.suppress(sqlite3.Error):
                self._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._writer.close()
        con = getattr(self._local, "con", None)
        if con is not None:
            con.close()
            self._local.con = None
        self.blobs.close()

    # -- blobs (gateway/store/blobs.py) -----------------------------------
    def blob_path(self, sha256: str) -> Path:
        """The blob's file: the local blob folder only (tests, tools); readers use
        :meth:`open_blob`, :meth:`blob_chunks` or :meth:`blob_file`."""
        path = self.blobs.local_path(sha256)
        if path is None:
            raise StoreError(f"blob {sha256[:12]}… is an object in {self.blobs.where}, not a "
                             "file: read it with Store.open_blob or Store.blob_chunks")
        return path

    def blob_file(self, sha256: str) -> Path | None:
        """The blob's file when blobs are local (sendfile), else ``None``."""
        return self.blobs.local_path(sha256)

    def read_blob(self, sha256: str) -> bytes:
        return self.blobs.read(sha256)

    def open_blob(self, sha256: str) -> BinaryIO:
        """A seekable file object of the blob (close it); on S3, ranged GETs."""
        return self.blobs.open(sha256)

    def blob_chunks(self, sha256: str, offset: int, length: int,
                    chunk_bytes: int = DICOMWEB_READ_CHUNK_BYTES) -> Iterator[bytes]:
        """``length`` bytes of the blob from ``offset``, at most ``chunk_bytes`` at a time."""
        return self.blobs.chunks(sha256, offset, length, chunk_bytes)

    def _check_room(self, size: int) -> None:
        self.blobs.check_room(size)

    def upload_parts(self, folder: Path) -> LocalParts | S3Parts:
        """Where uploads in progress wait: ``folder`` here, or beside the blobs in the
        bucket, where every center process sharing it can resume them."""
        if isinstance(self.blobs, S3Blobs):
            return S3Parts(self.blobs, self.tmp_dir)
        return LocalParts(folder)

    # -- instances ------------------------------------------------------
    def put(self, data: bytes, info: InstanceInfo, *, calling_ae: str | None = None,
            peer_address: str | None = None, sha256: str | None = None) -> PutOutcome:
        """Store ``data`` (exact Part-10 bytes) durably and index it.

        Returns when the row is committed.  Raises :class:`StoreFull` when
        there is no room (nothing is indexed then).
        """
        digest = sha256 or hashlib.sha256(data).hexdigest()
        size = len(data)
        existing = self._reader().execute(
            "SELECT sha256, dataset_sha256 FROM instances WHERE sop_instance_uid = ?",
            (info.sop_instance_uid,)).fetchone()
        if existing is not None:
            return self._duplicate_or_conflict(existing, digest, size, info, calling_ae)
        self._check_room(size)
        self.blobs.put(data, digest)  # returns once durable (or confirmed by the bucket)
        now = time.time()
        try:
            with self.atomic() as con:
                row = con.execute("SELECT sha256, dataset_sha256 FROM instances "
                                  "WHERE sop_instance_uid = ?",
                                  (info.sop_instance_uid,)).fetchone()
                if row is not None:  # another association won the race
                    pass
                else:
                    self._index(con, info, digest, size, now, calling_ae, peer_address)
                    if self.audit_node:
                        self._audit_received(con, info, digest, now, calling_ae, peer_address)
        except sqlite3.Error as exc:
            if _is_enospc(exc):
                raise StoreFull(f"store {self.root}: disk full committing index row") from exc
            raise
        if row is not None:
            return self._duplicate_or_conflict(row, digest, size, info, calling_ae)
        return PutOutcome(PutStatus.STORED, digest, size)

    def stage_blob(self, data: bytes) -> tuple[str, int]:
        """Write ``data`` durably as a blob without indexing it: invisible until
        :meth:`index_staged` commits its row (recovery removes it after a crash).

        Raises :class:`StoreFull` when there is no room.
        """
        digest = hashlib.sha256(data).hexdigest()
        if self.blobs.local_path(digest) is None or not self.blobs.exists(digest):
            self._check_room(len(data))
            self.blobs.put(data, digest)
        return digest, len(data)

    def index_staged(self, entries: list[tuple[InstanceInfo, str, int]], *,
                     calling_ae: str | None = None,
                     peer_address: str | None = None) -> list[PutOutcome]:
        """Index staged blobs ``(info, sha256, size)`` in ONE transaction: all or none.

        An instance already held with the same data set is a duplicate; one held
        with other bytes makes the whole batch roll back with :class:`BatchConflict`.
        """
        now = time.time()
        outcomes: list[PutOutcome] = []
        try:
            with self.atomic() as con:
                for info, digest, size in entries:
                    row = con.execute("SELECT sha256, dataset_sha256 FROM instances "
                                      "WHERE sop_instance_uid = ?",
                                      (info.sop_instance_uid,)).fetchone()
                    if row is not None:
                        if row["sha256"] == digest or row["dataset_sha256"] == info.dataset_sha256:
                            outcomes.append(PutOutcome(PutStatus.DUPLICATE, row["sha256"], size,
                                                       row["sha256"]))
                            continue
                        raise BatchConflict(info.sop_instance_uid, row["sha256"], digest)
                    self._index(con, info, digest, size, now, calling_ae, peer_address)
                    if self.audit_node:
                        self._audit_received(con, info, digest, now, calling_ae, peer_address)
                    outcomes.append(PutOutcome(PutStatus.STORED, digest, size))
        except sqlite3.Error as exc:
            if _is_enospc(exc):
                raise StoreFull(f"store {self.root}: disk full committing index rows") from exc
            raise
        return outcomes

    def _audit_received(self, con: sqlite3.Connection, info: InstanceInfo, digest: str,
                        now: float, calling_ae: str | None, peer: str | None) -> None:
        """The ledger's "received" event commits with the index row (DESIGN §3 step 10)."""
        from fenji.gateway.audit import ledger

        who = calling_ae or "unknown"
        role = "node" if who.startswith("node:") else "reader" if who.startswith(
            ("reader:", "viewer:")) else "modality"
        ledger.record(self, "received", node=str(self.audit_node), actor=who, role=role,
                      obj=info.sop_instance_uid, con=con, at=now,
                      detail={"study": info.study_instance_uid, "sha256": digest,
                              "sop_class": info.sop_class_uid, "from": peer})

    def _duplicate_or_conflict(self, existing: Any, digest: str, size: int, info: InstanceInfo,
                               calling_ae: str | None) -> PutOutcome:
        # The instance is its data set: the File Meta fenji writes for a C-STORE
        # names the calling AE, so the same data set re-sent by another sender
        # (or relayed) is the same instance, answered idempotently.
        have = existing["sha256"]
        if have == digest or existing["dataset_sha256"] == info.dataset_sha256:
            return PutOutcome(PutStatus.DUPLICATE, have, size, have)
        self.record_event("conflict", sop_instance_uid=info.sop_instance_uid,
                          calling_ae=calling_ae, stored_sha256=have, offered_sha256=digest,
                          offered_size=size)
        return PutOutcome(PutStatus.CONFLICT, digest, size, have)

    @staticmethod
    def index_name_groups(con: sqlite3.Connection, kind: str, owner: str, name: str | None) -> None:
        """A person name's component groups for matching (migration 8); the first name
        indexed for an owner stays, like the row it belongs to."""
        if not name:
            return
        for grp, text in enumerate(name.split("=")[:3]):
            text = text.rstrip("^ ")
            if text:
                con.execute("INSERT OR IGNORE INTO name_groups(kind, owner, grp, name) "
                            "VALUES (?, ?, ?, ?)", (kind, owner, grp, text))

    @classmethod
    def _index(cls, con: sqlite3.Connection, i: InstanceInfo, digest: str, size: int,
               now: float, calling_ae: str | None, peer: str | None) -> None:
        if i.patient_id is not None:
            new = con.execute(
                "INSERT INTO patients(patient_id, patient_name, birth_date, sex) "
                "VALUES (?, ?, ?, ?) ON CONFLICT(patient_id) DO NOTHING",
                (i.patient_id, i.patient_name, i.birth_date, i.sex)).rowcount
            if new:
                cls.index_name_groups(con, "patient", i.patient_id, i.patient_name)
        new_study = con.execute("SELECT 1 FROM studies WHERE study_instance_uid = ?",
                                (i.study_instance_uid,)).fetchone() is None
        con.execute(
            "INSERT INTO studies(study_instance_uid, patient_id, study_date, study_time, "
            "accession_number, study_description, first_received_at, last_received_at, "
            "referring_physician, study_id, patient_name, birth_date, sex) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(study_instance_uid) "
            "DO UPDATE SET last_received_at = excluded.last_received_at",
            (i.study_instance_uid, i.patient_id, i.study_date, i.study_time,
             i.accession_number, i.study_description, now, now, i.referring_physician,
             i.study_id, i.patient_name, i.birth_date, i.sex))
        if new_study:
            cls.index_name_groups(con, "study_patient", i.study_instance_uid, i.patient_name)
            cls.index_name_groups(con, "study_referring", i.study_instance_uid,
                             i.referring_physician)
        con.execute(
            "INSERT INTO series(series_instance_uid, study_instance_uid, modality, "
            "series_number, series_description) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT(series_instance_uid) DO NOTHING",
            (i.series_instance_uid, i.study_instance_uid, i.modality, i.series_number,
             i.series_description))
        con.execute(
            "INSERT INTO instances(sop_instance_uid, sop_class_uid, study_instance_uid, "
            "series_instance_uid, transfer_syntax_uid, instance_number, sha256, "
            "dataset_sha256, size, received_at, calling_ae, peer_address, "
            "specific_character_set, charset_source) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (i.sop_instance_uid, i.sop_class_uid, i.study_instance_uid, i.series_instance_uid,
             i.transfer_syntax_uid, i.instance_number, digest, i.dataset_sha256, size, now,
             calling_ae, peer, i.specific_character_set, i.charset_source))

    def get_instance(self, sop_instance_uid: str) -> dict[str, Any] | None:
        row = self._reader().execute("SELECT * FROM instances WHERE sop_instance_uid = ?",
                                     (sop_instance_uid,)).fetchone()
        return dict(row) if row else None

    def instances(self, *, study_instance_uid: str | None = None) -> Iterator[dict[str, Any]]:
        sql = "SELECT * FROM instances"
        args: tuple[Any, ...] = ()
        if study_instance_uid:
            sql += " WHERE study_instance_uid = ?"
            args = (study_instance_uid,)
        sql += " ORDER BY received_at, sop_instance_uid"
        for row in self._reader().execute(sql, args):
            yield dict(row)

    def count_instances(self) -> int:
        return int(self._reader().execute("SELECT count(*) FROM instances").fetchone()[0])

    # -- events and quarantine ------------------------------------------
    def record_event(self, kind: str, *, sop_instance_uid: str | None = None,
                     calling_ae: str | None = None, **detail: Any) -> None:
        try:
            with self.atomic() as con:
                con.execute("INSERT INTO events(at, kind, sop_instance_uid, calling_ae, detail) "
                            "VALUES (?, ?, ?, ?, ?)",
                            (time.time(), kind, sop_instance_uid, calling_ae,
                             json.dumps(detail, sort_keys=True, default=str)))
        except sqlite3.Error as exc:  # an event must never break ingest
            log.warning("store=%s could not record event kind=%s: %s", self.root, kind, exc)

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        sql, args = "SELECT * FROM events", ()
        if kind:
            sql, args = sql + " WHERE kind = ?", (kind,)  # type: ignore[assignment]
        return [dict(r) for r in self._reader().execute(sql + " ORDER BY id", args)]

    def quarantine(self, data: bytes, reason: str, *, status: int | None = None,
                   calling_ae: str | None = None, peer_address: str | None = None,
                   uid_hint: str | None = None) -> str:
        """Keep rejected bytes apart from good data (never served, never forwarded)."""
        digest = hashlib.sha256(data).hexdigest()
        if self.keep_quarantine:
            try:
                self.quarantine_blobs.check_room(len(data))
                self.quarantine_blobs.put(data, digest)
            except (StoreFull, BlobStoreError, OSError) as exc:
                log.warning("store=%s quarantine copy skipped: %s", self.root, exc)
        # The UID hint may be hostile (path traversal, control characters): keep
        # it only as escaped, bounded text.
        self._quarantine_record(digest, len(data), reason, status, calling_ae, peer_address,
                                uid_hint)
        return digest

    def _quarantine_record(self, sha: str, size: int, reason: str, status: int | None,
                           calling_ae: str | None, peer_address: str | None,
                           uid_hint: str | None) -> None:
        """The quarantine's row (kept even when its bytes could not be), then its bounds."""
        hint = None if uid_hint is None else uid_hint.encode("unicode_escape").decode()[:128]
        try:
            with self.atomic() as con:
                con.execute("INSERT INTO quarantine(at, sha256, size, reason, status, calling_ae, "
                            "peer_address, uid_hint) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                            (time.time(), sha, size, reason, status, calling_ae,
                             peer_address, hint))
        except sqlite3.Error as exc:
            log.warning("store=%s could not index quarantine entry: %s", self.root, exc)
        if self.quarantine_max_records or self.quarantine_max_bytes:
            try:
                self._evict_quarantine()
            except (sqlite3.Error, BlobStoreError, OSError) as exc:
                log.warning("store=%s quarantine eviction failed: %s", self.root, exc)

    def _evict_quarantine(self) -> None:
        """Drop the oldest quarantine records (and files no record still names) until
        the quarantine is within its bounds; log what went (issue 17: 10,000 tiny
        STOW-RS parts made 12,000 rows)."""
        max_n = self.quarantine_max_records or (1 << 62)
        max_b = self.quarantine_max_bytes or (1 << 62)
        gone: list[tuple[int, str, int, float]] = []
        with self.atomic() as con:
            n, total = con.execute("SELECT count(*), coalesce(sum(size), 0) FROM quarantine"
                                   ).fetchone()
            after = 0
            while n > max_n or total > max_b:
                batch = con.execute("SELECT id, sha256, size, at FROM quarantine WHERE id > ? "
                                    "ORDER BY id LIMIT 500", (after,)).fetchall()
                if not batch:
                    break
                for qid, sha, size, at in batch:
                    if n <= max_n and total <= max_b:
                        break
                    gone.append((qid, sha, size, at))
                    n, total, after = n - 1, total - size, qid
            if not gone:
                return
            con.execute("DELETE FROM quarantine WHERE id <= ?", (gone[-1][0],))
            orphans = {sha for _, sha, _, _ in gone if con.execute(
                "SELECT 1 FROM quarantine WHERE sha256 = ? LIMIT 1", (sha,)).fetchone() is None}
        for sha in orphans:
            self.quarantine_blobs.delete(sha)
        log.warning("store=%s quarantine evicted records=%d bytes=%d oldest_at=%.0f "
                    "(store.quarantine_max_records=%d, store.quarantine_max_bytes=%d)",
                    self.root, len(gone), sum(g[2] for g in gone), gone[0][3],
                    self.quarantine_max_records, self.quarantine_max_bytes)

    def quarantine_file(self, path: Path, reason: str, *, status: int | None = None,
                        calling_ae: str | None = None, peer_address: str | None = None,
                        uid_hint: str | None = None) -> str | None:
        """Move a refused file (a whole bundle) into quarantine without reading it into
        memory; the record is kept even when the file cannot be."""
        digest = hashlib.sha256()
        try:
            with open(path, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(chunk)
            size = path.stat().st_size
        except OSError as exc:
            log.warning("store=%s quarantine of %s skipped: %s", self.root, path.name, exc)
            return None
        sha = digest.hexdigest()
        try:
            if self.keep_quarantine:
                self.quarantine_blobs.put_file(path, sha)
            else:
                path.unlink()
        except (OSError, BlobStoreError) as exc:
            log.warning("store=%s quarantine copy skipped: %s", self.root, exc)
        self._quarantine_record(sha, size, reason, status, calling_ae, peer_address, uid_hint)
        return sha

    def quarantined(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self._reader().execute("SELECT * FROM quarantine ORDER BY id")]

    # -- maintenance ------------------------------------------------------
    def recover(self, *, sweep_blobs: bool | None = None) -> dict[str, int]:
        """Remove what a crash can leave behind: temp files and unindexed blobs.

        ``sweep_blobs``: look for unindexed blobs (default: in the local folder,
        at every start; a bucket is listed only when asked, by ``fenji store
        recover``: a regional center's bucket holds millions of objects, and
        its orphans are rare and harmless).  In a bucket another center process
        may be between its PUT and its commit: an unindexed object is removed
        only once older than ``blobs.orphan_grace_s`` (an S3 put always
        rewrites, so its age is fresh).
        """
        removed_tmp = 0
        for p in self.tmp_dir.iterdir():
            with contextlib.suppress(OSError):
                p.unlink()
                removed_tmp += 1
        if sweep_blobs is None:
            sweep_blobs = not isinstance(self.blobs, S3Blobs)
        orphans = 0
        if not sweep_blobs:
            if removed_tmp:
                log.info("store=%s recovered tmp_removed=%d", self.root, removed_tmp)
            return {"tmp_removed": removed_tmp, "orphans_removed": 0}
        indexed = {r[0] for r in self._reader().execute("SELECT sha256 FROM instances")}
        grace = self.blobs.orphan_grace_s
        now = time.time()
        for b in self.blobs.listing():
            if b.name not in indexed and (not grace or now - b.modified_at >= grace):
                with contextlib.suppress(OSError, BlobStoreError):
                    self.blobs.delete(b.name)
                    orphans += 1
        if removed_tmp or orphans:
            log.info("store=%s recovered tmp_removed=%d orphans_removed=%d",
                     self.root, removed_tmp, orphans)
        return {"tmp_removed": removed_tmp, "orphans_removed": orphans}

    def verify(self) -> list[str]:
        """Re-hash every indexed blob; return the problems found (empty: all good)."""
        problems = []
        for row in self.instances():
            try:
                h = hashlib.sha256()
                with self.blobs.open(row["sha256"]) as fh:
                    for chunk in iter(lambda: fh.read(1 << 20), b""):
                        h.update(chunk)
            except OSError as exc:
                problems.append(f"{row['sop_instance_uid']}: blob missing ({exc.strerror})")
                continue
            except BlobStoreError as exc:
                problems.append(f"{row['sop_instance_uid']}: blob unreadable ({exc})")
                continue
            if h.hexdigest() != row["sha256"]:
                problems.append(f"{row['sop_instance_uid']}: blob hash {h.hexdigest()} "
                                f"!= indexed {row['sha256']}")
        return problems

    def usage(self) -> dict[str, int]:
        r = self._reader()
        n, total = r.execute("SELECT count(*), coalesce(sum(size), 0) FROM instances").fetchone()
        q = r.execute("SELECT count(*), coalesce(sum(size), 0) FROM quarantine").fetchone()
        du = shutil.disk_usage(self.root)
        return {"instances": int(n), "bytes": int(total), "quarantined": int(q[0]),
                "quarantined_bytes": int(q[1]), "disk_free_bytes": du.free,
                "disk_total_bytes": du.total}
