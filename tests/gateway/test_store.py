"""Store: durable put, idempotent re-send, conflicts, recovery, verify."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import pytest
from _data import ct_series

from fenji.gateway.dicom.validate import check_part10
from fenji.gateway.store.db import PutStatus, Store, StoreFull
from fenji.gateway.store.migrations import MIGRATIONS


def _checked(i: int = 0):  # type: ignore[no-untyped-def]
    return check_part10(ct_series()[i].read_bytes())


def test_put_is_durable_and_indexed(tmp_path: Path, index_url: str) -> None:
    store = Store(tmp_path / "s", index_url=index_url)
    c = _checked()
    out = store.put(c.part10, c.info, calling_ae="CT1")
    assert out.status is PutStatus.STORED
    assert out.sha256 == hashlib.sha256(c.part10).hexdigest()
    assert store.read_blob(out.sha256) == c.part10
    row = store.get_instance(c.info.sop_instance_uid)
    assert row is not None and row["sha256"] == out.sha256 and row["calling_ae"] == "CT1"
    assert not list((tmp_path / "s" / "tmp").iterdir())  # no temp file left behind
    store.close()
    again = Store(tmp_path / "s", index_url=index_url)  # reopen: schema recorded, data there
    assert again.schema_version == len(MIGRATIONS) and again.count_instances() == 1
    again.close()


def test_identical_resend_is_idempotent(tmp_path: Path, index_url: str) -> None:
    store = Store(tmp_path / "s", index_url=index_url)
    c = _checked()
    assert store.put(c.part10, c.info).status is PutStatus.STORED
    assert store.put(c.part10, c.info).status is PutStatus.DUPLICATE
    assert store.count_instances() == 1
    store.close()


def test_same_uid_other_bytes_is_a_conflict_and_keeps_the_original(tmp_path: Path,
                                                                   index_url: str) -> None:
    store = Store(tmp_path / "s", index_url=index_url)
    c = _checked()
    first = store.put(c.part10, c.info)
    altered = c.part10[:-2] + bytes([c.part10[-2] ^ 1, c.part10[-1]])
    out = store.put(altered, check_part10(altered).info)
    assert out.status is PutStatus.CONFLICT and out.existing_sha256 == first.sha256
    assert store.get_instance(c.info.sop_instance_uid)["sha256"] == first.sha256  # type: ignore[index]
    assert store.read_blob(first.sha256) == c.part10
    (ev,) = store.events("conflict")
    assert ev["sop_instance_uid"] == c.info.sop_instance_uid
    store.close()


def test_concurrent_puts_from_threads(tmp_path: Path, index_url: str) -> None:
    store = Store(tmp_path / "s", index_url=index_url)
    items = [_checked(i) for i in range(8)]
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            for c in items[k::2]:
                store.put(c.part10, c.info)
                store.put(c.part10, c.info)
        except BaseException as exc:  # pragma: no cover - surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert store.count_instances() == 8
    assert store.verify() == []
    store.close()


def test_recover_removes_temp_files_and_orphan_blobs(tmp_path: Path, index_url: str) -> None:
    store = Store(tmp_path / "s", index_url=index_url)
    c = _checked()
    kept = store.put(c.part10, c.info)
    (tmp_path / "s" / "tmp" / "half-written.tmp").write_bytes(b"x" * 100)
    orphan = store.blob_path("ab" * 32)
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(b"never indexed")
    assert store.recover() == {"tmp_removed": 1, "orphans_removed": 1}
    assert store.blob_path(kept.sha256).exists()
    store.close()


def test_verify_detects_a_damaged_blob(tmp_path: Path, index_url: str) -> None:
    store = Store(tmp_path / "s", index_url=index_url)
    c = _checked()
    out = store.put(c.part10, c.info)
    path = store.blob_path(out.sha256)
    path.chmod(0o644)
    path.write_bytes(c.part10[:-1] + b"\x01")
    (problem,) = store.verify()
    assert c.info.sop_instance_uid in problem and "hash" in problem
    store.close()


def test_reserved_space_refuses_with_store_full(tmp_path: Path, index_url: str) -> None:
    store = Store(tmp_path / "s", min_free_bytes=1 << 62, index_url=index_url)  # more than any disk
    c = _checked()
    with pytest.raises(StoreFull, match="min_free_bytes"):
        store.put(c.part10, c.info)
    assert store.count_instances() == 0
    store.close()


def test_quarantine_keeps_hostile_uid_as_text_only(tmp_path: Path, index_url: str) -> None:
    store = Store(tmp_path / "s", index_url=index_url)
    digest = store.quarantine(b"junk", "not DICOM", uid_hint="../../etc/passwd\n")
    (row,) = store.quarantined()
    assert row["sha256"] == digest and row["uid_hint"] == "../../etc/passwd\\n"
    assert (tmp_path / "s" / "quarantine" / digest).read_bytes() == b"junk"
    assert not (tmp_path / "etc").exists()
    store.close()


def test_same_data_set_from_another_sender_is_a_duplicate(tmp_path: Path, index_url: str) -> None:
    """The File Meta fenji writes names the calling AE; the data set is the identity."""
    from fenji.gateway.dicom.validate import check_dimse, split_part10

    store = Store(tmp_path / "s", index_url=index_url)
    src = ct_series()[0].read_bytes()
    meta, off = split_part10(src)
    a, b = (check_dimse(src[off:], meta["TransferSyntaxUID"],
                        affected_sop_class=meta["MediaStorageSOPClassUID"],
                        affected_sop_instance=meta["MediaStorageSOPInstanceUID"],
                        calling_ae=ae) for ae in ("CT1", "CT2"))
    assert a.part10 != b.part10
    first = store.put(a.part10, a.info, calling_ae="CT1")
    again = store.put(b.part10, b.info, calling_ae="CT2")
    assert again.status is PutStatus.DUPLICATE and again.sha256 == first.sha256
    store.close()


def test_a_failed_commit_rolls_back_and_the_store_goes_on(tmp_path: Path,
                                                           index_url: str) -> None:
    """COMMIT itself can fail (disk full, a deferred constraint): nothing of the
    transaction may stay, and the next transaction must start cleanly."""
    store = Store(tmp_path / "s", index_url=index_url)
    with store.atomic() as con:  # a constraint checked only at COMMIT
        con.execute("CREATE TABLE parent(id INTEGER PRIMARY KEY)")
        con.execute("CREATE TABLE child(pid INTEGER REFERENCES parent(id) "
                    "DEFERRABLE INITIALLY DEFERRED)")
    with pytest.raises(store.index.errors, match="(?i)FOREIGN KEY"), store.atomic() as con:
        con.execute("INSERT INTO parent VALUES (1)")
        con.execute("INSERT INTO child VALUES (2)")  # no parent 2: fails at COMMIT
    assert not store.index.in_transaction()
    with store.atomic() as con:  # would be "cannot start a transaction within a transaction"
        con.execute("INSERT INTO parent VALUES (7)")
    store.close()
    again = Store(tmp_path / "s", index_url=index_url)
    assert again.query("SELECT id FROM parent") == [{"id": 7}]  # parent 1 went with the child
    assert again.query("SELECT pid FROM child") == []
    again.close()
