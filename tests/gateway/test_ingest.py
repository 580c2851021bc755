"""The one ingest path (gateway/ingest): one function, one result type, one set of limits."""

from __future__ import annotations

import ast
import io
from pathlib import Path

import pydicom
import pytest
from _data import ECG_DIR, REPO, ct_series

from fenji.gateway import config as config_mod
from fenji.gateway import ingest
from fenji.gateway.dicom import status as st
from fenji.gateway.ingest.ecg_files import FolderWatcher, ingest_files
from fenji.gateway.store.db import Store

SRC = ingest.Source("import", "import")


def _other_bytes_same_uid(data: bytes) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.StudyDescription = "changed after the first send"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_only_the_ingest_package_validates_and_stores() -> None:
    """No shell calls the validator or ``Store.put`` itself: every way in is one path."""
    offenders = []
    for folder in ("gateway", "routing"):
        for path in (REPO / folder).rglob("*.py"):
            if path.parts[-2] == "ingest" or path.name == "store.py":
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute | ast.Name):
                    name = node.func.attr if isinstance(node.func, ast.Attribute) \
                        else node.func.id
                    if name in ("check_part10", "check_dimse", "put", "index_staged"):
                        is_put = name in ("put", "index_staged")
                        owner = node.func.value if isinstance(node.func, ast.Attribute) else None
                        if is_put and not (owner is not None and "store" in ast.unparse(owner)):
                            continue  # queue.put and the like
                        offenders.append(f"{path.relative_to(REPO)}:{node.lineno} {name}")
    assert offenders == []


def test_outcomes_and_statuses(tmp_path: Path) -> None:
    store = Store(tmp_path / "s")
    try:
        data = ct_series()[0].read_bytes()
        limits = ingest.Limits()
        first = ingest.ingest(store, data, SRC, limits)
        assert first.outcome is ingest.Outcome.STORED and first.status == st.SUCCESS
        assert first.http_status == 201 and first.info is not None
        again = ingest.ingest(store, data, SRC, limits)
        assert again.outcome is ingest.Outcome.DUPLICATE and again.ok
        other = ingest.ingest(store, _other_bytes_same_uid(data), SRC, limits)
        assert other.outcome is ingest.Outcome.CONFLICT and other.status == st.SOP_INSTANCE_CONFLICT
        assert "new UIDs" in other.reason and other.http_status == 409
        bad = ingest.ingest(store, data[:1000], SRC, limits)
        assert bad.outcome is ingest.Outcome.REJECTED and not bad.ok and bad.reason
        assert len(store.quarantined()) == 1
        empty = ingest.ingest(store, b"", SRC, limits)
        assert empty.outcome is ingest.Outcome.REJECTED and "empty" in empty.reason
        assert store.count_instances() == 1
    finally:
        store.close()


def test_store_full_is_its_own_outcome(tmp_path: Path) -> None:
    store = Store(tmp_path / "s", min_free_bytes=1 << 62)
    try:
        res = ingest.ingest(store, ct_series()[0].read_bytes(), SRC, ingest.Limits())
        assert res.outcome is ingest.Outcome.FULL and res.status == st.OUT_OF_RESOURCES
        assert res.http_status == 507 and store.count_instances() == 0
    finally:
        store.close()


def test_limits_come_from_the_config(tmp_path: Path) -> None:
    env = {"FENJI_DICOM_MAX_INSTANCE_BYTES": "4096", "FENJI_STORE_MAX_INFLATE_BYTES": "8192",
           "FENJI_INGEST_MAX_RECORD_BYTES": "2048"}
    cfg = config_mod.from_mapping({"dicom": {"allow_ae": ["*"]}}, env=env)
    limits = ingest.Limits.of(cfg)
    assert (limits.max_instance_bytes, limits.max_inflate_bytes,
            limits.max_record_bytes) == (4096, 8192, 2048)
    store = Store(tmp_path / "s")
    try:
        res = ingest.ingest(store, ct_series()[0].read_bytes(), SRC, limits)
        assert res.outcome is ingest.Outcome.REJECTED
        assert "dicom.max_instance_bytes = 4096" in res.reason
        ecg = ingest_files(store, {"a.hea": b"x" * 1500, "a.dat": b"y" * 1500},
                           source="test", limits=limits)
        assert ecg["outcome"] == "rejected" and "ingest.max_record_bytes = 2048" in ecg["reason"]
    finally:
        store.close()


def test_hook_sees_valid_instances_and_can_end_the_ingest(tmp_path: Path) -> None:
    store = Store(tmp_path / "s")
    seen = []

    def refuse(checked):  # type: ignore[no-untyped-def]
        seen.append(checked.info.sop_instance_uid)
        return ingest.refused("not now", st.NOT_AUTHORIZED, checked.info)

    try:
        res = ingest.ingest(store, ct_series()[0].read_bytes(), SRC, ingest.Limits(),
                            on_checked=refuse)
        assert res.outcome is ingest.Outcome.REFUSED and res.status == st.NOT_AUTHORIZED
        assert seen and store.count_instances() == 0 and store.quarantined() == []
        broken = ingest.ingest(store, ct_series()[0].read_bytes(), SRC, ingest.Limits(),
                               on_checked=lambda c: 1 / 0)  # a bug in a hook: never success
        assert broken.outcome is ingest.Outcome.FAILED and store.count_instances() == 0
    finally:
        store.close()


def test_batch_is_all_or_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path / "s")
    files = [p.read_bytes() for p in ct_series()[:3]]
    try:
        batch = ingest.Batch(store, ingest.Source("bundle", "node:edge"), ingest.Limits())
        batch.add(files[0])
        batch.add(files[1])
        with pytest.raises(ingest.core.Rejected):
            batch.add(files[2][:1000])
        assert store.count_instances() == 0  # staged, not visible
        # A conflict found only at commit time rolls the whole batch back.
        batch = ingest.Batch(store, ingest.Source("bundle", "node:edge"), ingest.Limits())
        for f in files:
            batch.add(f)
        assert ingest.ingest(store, _other_bytes_same_uid(files[2]), SRC,
                             ingest.Limits()).outcome is ingest.Outcome.STORED
        with pytest.raises(ingest.core.Rejected, match="other bytes"):
            batch.commit()
        assert store.count_instances() == 1
        ok = ingest.Batch(store, ingest.Source("bundle", "node:edge"), ingest.Limits())
        for f in files[:2]:
            ok.add(f)
        results = ok.commit()
        assert [r.outcome for r in results] == [ingest.Outcome.STORED] * 2
        assert store.count_instances() == 3
    finally:
        store.close()


def test_ecg_conflict_is_a_conflict_and_full_store_keeps_the_files(tmp_path: Path) -> None:
    store = Store(tmp_path / "s")
    try:
        data = ct_series()[0].read_bytes()
        assert ingest_files(store, {"a.dcm": data}, source="t")["outcome"] == "stored"
        res = ingest_files(store, {"a.dcm": _other_bytes_same_uid(data)}, source="t")
        assert res["outcome"] == "conflict" and "already stored" in res["reason"]
    finally:
        store.close()
    full = Store(tmp_path / "full", min_free_bytes=1 << 62)
    watch = tmp_path / "watch"
    watch.mkdir()
    src = ECG_DIR / "cinc2021"
    for ext in (".hea", ".mat"):
        for p in src.glob(f"A0001{ext}"):
            (watch / p.name).write_bytes(p.read_bytes())
    try:
        watcher = FolderWatcher(full, watch, settle_s=0)
        results = watcher.scan(now=1e12)
        assert [r["outcome"] for r in results] == ["full"]
        assert (watch / "A0001.hea").exists()  # not lost, not failed: tried again later
        assert not list((watch / "failed").iterdir())
    finally:
        full.close()


def test_an_ecg_with_the_carts_pdf_goes_to_the_ecg_readers() -> None:
    from fenji.gateway.cases.case import service_of

    twelve_lead, pdf = "1.2.840.10008.5.1.4.1.1.9.1.1", "1.2.840.10008.5.1.4.1.1.104.1"
    ct = "1.2.840.10008.5.1.4.1.1.2"
    assert service_of([twelve_lead]) == "ecg"
    assert service_of([twelve_lead, pdf]) == "ecg"
    assert service_of([pdf]) == "imaging"  # a PDF alone is no ECG
    assert service_of([twelve_lead, ct]) == "imaging"
