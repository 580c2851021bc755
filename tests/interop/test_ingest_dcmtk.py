"""Ingest against real DCMTK peers: echoscu and storescu into a running node."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pydicom
import pydicom.data
import pytest
from _data import ct_series, good_files, malformed_files
from _wait import until
from pynetdicom import AE

from fenji.gateway.dicom import status as st
from fenji.gateway.dicom.validate import ACCEPTED_TRANSFER_SYNTAXES, check_part10, split_part10
from fenji.gateway.lab.dcmtk import echoscu, storescu, tool
from fenji.gateway.lab.harness import NodeProcess

TIMEOUT = pytest.mark.timeout(600)


@pytest.fixture
def node(tmp_path: Path):  # type: ignore[no-untyped-def]
    with NodeProcess(tmp_path / "edge", name="edge-test", allow_ae=["STORESCU", "ECHOSCU",
                                                                     "RAWSCU"]) as n:
        yield n


def _dataset_sha(path: Path) -> str:
    data = path.read_bytes()
    _, off = split_part10(data)
    return hashlib.sha256(data[off:]).hexdigest()


def _same_elements(a: Path, b: Path) -> bool:
    """Element-for-element equality, ignoring what DCMTK re-encodes on the wire
    (group lengths, Data Set Trailing Padding, sequence length encoding)."""
    da, db = pydicom.dcmread(a), pydicom.dcmread(b)
    skip = {0xFFFCFFFC}

    def elems(ds: pydicom.Dataset) -> dict[int, object]:
        return {int(e.tag): e.value for e in ds if int(e.tag) not in skip
                and e.tag.element != 0 and e.VR != "SQ"}

    return elems(da) == elems(db)


def _pydicom_good_files() -> list[Path]:
    folder = Path(pydicom.data.__file__).parent / "test_files"
    out = []
    for p in sorted(folder.glob("*.dcm")):
        try:
            check_part10(p.read_bytes(), max_inflate_bytes=64 << 20)
        except Exception:
            continue
        out.append(p)
    return out


@TIMEOUT
def test_echo_and_unknown_ae_rejected(node: NodeProcess) -> None:
    assert echoscu(node.dicom_port, calling="ECHOSCU")
    assert not echoscu(node.dicom_port, calling="INTRUDER")
    # The node logs a rejection after it answered: wait for the line, not for time.
    until(lambda: "reason=calling-ae-not-allowed (dicom.allow_ae)" in node.log_tail(200), 60,
          "the node to log the refused calling AE")
    line = next(x for x in node.log_tail(200).splitlines() if "calling-ae-not-allowed" in x)
    assert "calling=INTRUDER" in line and "outcome=rejected" in line
    # A modality configured with a typo in our AE title is refused, and the log says so
    # with the title it really asked for.
    assert not echoscu(node.dicom_port, calling="ECHOSCU", called="FENJ")
    until(lambda: "called=FENJ outcome=rejected reason=called-ae-is-not-ours"
          in node.log_tail(200), 60, "the node to log the wrong called AE")
    # A storescu from an unknown AE stores nothing.
    r = storescu(good_files()[:2], node.dicom_port, calling="INTRUDER")
    assert not r.sent
    assert node.stored() == []


@TIMEOUT
def test_storescu_sends_every_shared_and_pydicom_file(node: NodeProcess, tmp_path: Path) -> None:
    r = storescu(good_files(), node.dicom_port)
    # Every well-formed shared file must go through.
    assert set(good_files()) == set(r.sent), {str(k): v for k, v in r.failed.items()}
    # pydicom ships one image in many transfer syntaxes under one SOP Instance
    # UID: the first copy is stored, the others are conflicts (refused, kept apart).
    more = storescu(_pydicom_good_files(), node.dicom_port)
    assert len(more.sent) > 20
    stored = {row["sop_instance_uid"]: row for row in node.stored()}
    for path, why in more.failed.items():
        if "ignoring file" in why or "Bad DICOM file" in why:
            continue  # storescu itself would not read it: nothing was sent
        uid = check_part10(path.read_bytes()).info.sop_instance_uid
        assert uid in stored and stored[uid]["dataset_sha256"] != _dataset_sha(path), (path, why)
    r.sent += more.sent
    identical = 0
    store_dir = node.directory / "store" / "blobs"
    for path in r.sent:
        uid = check_part10(path.read_bytes()).info.sop_instance_uid
        row = stored[uid]
        blob = store_dir / str(row["sha256"])[:2] / str(row["sha256"])[2:4] / str(row["sha256"])
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == row["sha256"]
        assert row["size"] == blob.stat().st_size and row["calling_ae"] == "STORESCU"
        if row["dataset_sha256"] == _dataset_sha(path):
            identical += 1
        else:  # DCMTK re-encoded it on the wire: same content, other bytes
            assert _same_elements(path, blob), path
    assert identical >= len(r.sent) // 2
    assert node.cli("store", "verify").returncode == 0


def _raw_send(paths: list[Path], port: int) -> dict[Path, int | None]:
    """Send each file's data set bytes exactly as on disk (pynetdicom reads the
    File Meta and, with STORE_SEND_CHUNKED_DATASET, streams the rest without
    decoding it: otherwise pydicom would decode and re-encode, repairing some)."""
    from pynetdicom import _config

    _config.STORE_SEND_CHUNKED_DATASET = True
    ae = AE(ae_title="RAWSCU")
    for p in paths:
        try:
            meta, _ = split_part10(p.read_bytes())
        except Exception:
            continue
        ae.add_requested_context(meta["MediaStorageSOPClassUID"], meta["TransferSyntaxUID"])
    out: dict[Path, int | None] = {}
    assoc = ae.associate("127.0.0.1", port, ae_title="FENJI")
    assert assoc.is_established
    try:
        for p in paths:
            try:
                status = assoc.send_c_store(p)
            except Exception:
                out[p] = None  # pynetdicom could not even read it: nothing was sent
                continue
            out[p] = int(status.Status) if "Status" in status else None
            if not assoc.is_established:
                assoc = ae.associate("127.0.0.1", port, ae_title="FENJI")
    finally:
        assoc.release()
        _config.STORE_SEND_CHUNKED_DATASET = False
    return out


# Defects that live only in the File Meta, which DIMSE does not carry: over
# C-STORE the data set itself is valid; as files they are rejected (part 3).
META_ONLY = {"missing-file-meta.dcm", "meta-sop-uid-mismatch.dcm"}


@TIMEOUT
def test_malformed_files_never_stored(node: NodeProcess) -> None:
    bad = [p for p in malformed_files() if p.name != "deflate-bomb.dcm"]
    raw_sha = {}
    for p in bad:
        if p.name in META_ONLY:
            continue
        try:
            raw_sha[p] = _dataset_sha(p)
        except Exception:
            raw_sha[p] = hashlib.sha256(p.read_bytes()).hexdigest()
    # 1. Through DCMTK storescu.  DCMTK itself refuses many; for the ones it
    #    re-encodes into valid data (odd lengths padded, file meta dropped),
    #    what arrives is no longer the malformed byte sequence.
    r = storescu(bad, node.dicom_port)
    stored = node.stored()
    assert not {row["dataset_sha256"] for row in stored} & set(raw_sha.values())
    for p in r.sent:
        assert p.name in {"odd-length-element.dcm", "odd-length-pixeldata.dcm",
                          "missing-file-meta.dcm", "meta-sop-uid-mismatch.dcm"}, p
    # 2. Byte for byte, as a broken modality would send them: every one that
    #    can be sent at all gets a named failure status.
    statuses = _raw_send(bad, node.dicom_port)
    for p, status in statuses.items():
        assert status is None or status in (st.CANNOT_UNDERSTAND, st.INSTANCE_TOO_LARGE,
                                            st.DATASET_DOES_NOT_MATCH_SOP_CLASS), (p, status)
    assert sum(s is not None for s in statuses.values()) >= 8
    after = node.stored()
    assert not {row["dataset_sha256"] for row in after} & set(raw_sha.values())
    # 3. As files (watched folder / import): all 18 rejected, quarantined.
    res = node.cli("store", "import", "--json", *map(str, malformed_files()), check=False)
    assert res.returncode == 1
    outcomes = [json.loads(line) for line in res.stdout.splitlines()]
    assert len(outcomes) == len(malformed_files())
    assert all(o["outcome"] == "rejected" for o in outcomes), outcomes
    assert len(node.stored()) == len(after)
    assert "rejected status=" in node.log_tail(400)


@TIMEOUT
def test_deflate_bomb_refused_with_bounded_memory(node: NodeProcess) -> None:
    bomb = next(p for p in malformed_files() if p.name == "deflate-bomb.dcm")
    statuses = _raw_send([bomb], node.dicom_port)
    assert statuses[bomb] == st.INSTANCE_TOO_LARGE
    assert node.stored() == []
    assert echoscu(node.dicom_port, calling="ECHOSCU")  # the node is still serving


@TIMEOUT
def test_resend_is_idempotent_and_conflict_refused(node: NodeProcess, tmp_path: Path) -> None:
    src = ct_series()[0]
    assert storescu([src], node.dicom_port).sent == [src]
    assert storescu([src], node.dicom_port).sent == [src]  # identical: success again
    rows = node.stored()
    assert len(rows) == 1
    ds = pydicom.dcmread(src)
    ds.SeriesDescription = "CHANGED BY TEST"
    changed = tmp_path / "changed.dcm"
    ds.save_as(changed)
    r = storescu([changed], node.dicom_port)
    # DCMTK names every 0xCxxx status "CannotUnderstand"; the log names 0xC010.
    assert not r.sent and "CannotUnderstand" in r.failed[changed]
    assert node.stored() == rows  # the stored copy is untouched
    assert "SOP Instance conflict" in node.log_tail(100)


def test_accepted_transfer_syntaxes_cover_the_shared_data() -> None:
    for p in good_files():
        meta, _ = split_part10(p.read_bytes())
        assert meta["TransferSyntaxUID"] in ACCEPTED_TRANSFER_SYNTAXES, p


def test_dcmtk_is_called_by_full_path() -> None:
    assert tool("storescu").startswith("/usr/")
    out = subprocess.run([tool("storescu"), "--version"], capture_output=True, text=True)
    assert "dcmtk" in (out.stdout + out.stderr).lower()
