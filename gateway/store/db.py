"""The node's store: content-addressed blobs plus a SQLite index (DESIGN.md §4).

Blobs are the exact Part-10 bytes received, named by their SHA-256:
written to a temp file in ``tmp/`` (same file system), fsynced, renamed into
``blobs/ab/cd/<sha256>``, and the directory fsynced.  Only then is the index
row inserted; **the row is the commit point**, and a C-STORE success is sent
only after it.  After ``kill -9`` at any instant:

* a blob without a row is an orphan of an unacknowledged store (harmless, the
  sender retries; :meth:`Store.recover` removes it);
* a temp file is never visible under ``blobs/`` (rename is atomic);
* every row points to a complete blob with the right hash.

The index is SQLite in WAL mode with ``synchronous=FULL`` (the row must be on
disk before we acknowledge), or PostgreSQL (``[store] index_url``), behind one
interface (gateway/store/index.py).  Migrations are numbered, recorded in
``schema_migrations`` and never edited once released.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from fenji.gateway.dicom.info import InstanceInfo
from fenji.gateway.errors import LocalError
from fenji.gateway.store.index import POSTGRESQL, Con, Index, SqliteIndex, parse_url
from fenji.gateway.store.index_pg import PgIndex

log = logging.getLogger(__name__)


class StoreFull(LocalError):
    """No room to store durably; maps to DICOM 0xA700 Out of Resources."""

    http_status = 507
    dicom_status = 0xA700  # Out of Resources


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


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _is_enospc(exc: BaseException, index: Index | None = None) -> bool:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return index is not None and index.is_disk_full(exc)


def open_index(url: str, default_path: Path) -> Index:
    """The index ``[store] index_url`` names; empty: the SQLite file ``default_path``."""
    dialect, target = parse_url(url, default_path)
    if dialect == POSTGRESQL:
        return PgIndex(target)
    return SqliteIndex(Path(target))


class Store:
    """Blobs + index.  Safe to share between threads of one process."""

    def __init__(self, root: Path, *, min_free_bytes: int = 0, quarantine: bool = True,
                 quarantine_max_records: int = 0, quarantine_max_bytes: int = 0,
                 index_url: str = "") -> None:
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
        for d in (self.root, self.blob_dir, self.tmp_dir, self.quarantine_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.index: Index = open_index(index_url, self.db_path)
        self.index.migrate(str(self.root))

    # -- the index (gateway/store/index.py: SQLite or PostgreSQL) ------
    def _reader(self) -> Con:
        return self.index.reader()

    @contextlib.contextmanager
    def atomic(self) -> Iterator[Con]:
        """The one transaction primitive; nested blocks become savepoints."""
        with self.index.atomic() as con:
            yield con

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
        self.index.close()

    # -- blobs ----------------------------------------------------------
    def blob_path(self, sha256: str) -> Path:
        return self.blob_dir / sha256[:2] / sha256[2:4] / sha256

    def read_blob(self, sha256: str) -> bytes:
        return self.blob_path(sha256).read_bytes()

    def _check_room(self, size: int) -> None:
        free = shutil.disk_usage(self.root).free
        if free < self.min_free_bytes + size:
            raise StoreFull(f"store {self.root}: {free} bytes free, need {size} + "
                            f"{self.min_free_bytes} reserved (store.min_free_bytes)")

    def _write_durable(self, data: bytes | memoryview, final: Path) -> None:
        """temp file, fsync, rename, fsync directory (STYLE.md, Store)."""
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.tmp_dir / f"{final.name}.{os.getpid()}.{threading.get_ident()}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # patient data
            try:
                view = memoryview(data)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, final)
            _fsync_dir(final.parent)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            if _is_enospc(exc):
                raise StoreFull(f"store {self.root}: disk full writing {final.name[:12]}…") from exc
            raise

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
        path = self.blob_path(digest)
        if not path.exists():
            self._write_durable(data, path)
        now = time.time()
        try:
            with self.atomic() as con:
                self.index.lock(con, info.sop_instance_uid)  # another process's put of it
                row = con.execute("SELECT sha256, dataset_sha256 FROM instances "
                                  "WHERE sop_instance_uid = ?",
                                  (info.sop_instance_uid,)).fetchone()
                if row is not None:  # another association won the race
                    pass
                else:
                    self._index(con, info, digest, size, now, calling_ae, peer_address)
                    if self.audit_node:
                        self._audit_received(con, info, digest, now, calling_ae, peer_address)
        except self.index.errors as exc:
            if _is_enospc(exc, self.index):
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
        path = self.blob_path(digest)
        if not path.exists():
            self._check_room(len(data))
            self._write_durable(data, path)
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
                for uid in sorted({info.sop_instance_uid for info, _, _ in entries}):
                    self.index.lock(con, uid)
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
        except self.index.errors as exc:
            if _is_enospc(exc, self.index):
                raise StoreFull(f"store {self.root}: disk full committing index rows") from exc
            raise
        return outcomes

    def _audit_received(self, con: Con, info: InstanceInfo, digest: str,
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
    def index_name_groups(con: Con, kind: str, owner: str, name: str | None) -> None:
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
    def _index(cls, con: Con, i: InstanceInfo, digest: str, size: int,
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
        except self.index.errors as exc:  # an event must never break ingest
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
                self._check_room(len(data))
                path = self.quarantine_dir / digest
                if not path.exists():
                    self._write_durable(data, path)
            except (StoreFull, OSError) as exc:
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
        except self.index.errors as exc:
            log.warning("store=%s could not index quarantine entry: %s", self.root, exc)
        if self.quarantine_max_records or self.quarantine_max_bytes:
            failures: tuple[type[BaseException], ...] = (*self.index.errors, OSError)
            try:
                self._evict_quarantine()
            except failures as exc:
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
            with contextlib.suppress(FileNotFoundError):
                (self.quarantine_dir / sha).unlink()
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
                os.replace(path, self.quarantine_dir / sha)
                _fsync_dir(self.quarantine_dir)
            else:
                path.unlink()
        except OSError as exc:
            log.warning("store=%s quarantine copy skipped: %s", self.root, exc)
        self._quarantine_record(sha, size, reason, status, calling_ae, peer_address, uid_hint)
        return sha

    def quarantined(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self._reader().execute("SELECT * FROM quarantine ORDER BY id")]

    # -- maintenance ------------------------------------------------------
    def recover(self) -> dict[str, int]:
        """Remove what a crash can leave behind: temp files and unindexed blobs."""
        removed_tmp = 0
        for p in self.tmp_dir.iterdir():
            with contextlib.suppress(OSError):
                p.unlink()
                removed_tmp += 1
        indexed = {r[0] for r in self._reader().execute("SELECT sha256 FROM instances")}
        orphans = 0
        for p in self.blob_dir.glob("*/*/*"):
            if p.name not in indexed:
                with contextlib.suppress(OSError):
                    p.unlink()
                    orphans += 1
        if removed_tmp or orphans:
            log.info("store=%s recovered tmp_removed=%d orphans_removed=%d",
                     self.root, removed_tmp, orphans)
        return {"tmp_removed": removed_tmp, "orphans_removed": orphans}

    def verify(self) -> list[str]:
        """Re-hash every indexed blob; return the problems found (empty: all good)."""
        problems = []
        for row in self.instances():
            path = self.blob_path(row["sha256"])
            try:
                h = hashlib.sha256()
                with open(path, "rb") as fh:
                    for chunk in iter(lambda: fh.read(1 << 20), b""):
                        h.update(chunk)
            except OSError as exc:
                problems.append(f"{row['sop_instance_uid']}: blob missing ({exc.strerror})")
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
