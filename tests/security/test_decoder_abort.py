"""A JPEG-LS instance whose Rows exceed its codestream makes python-gdcm abort the
whole process when it decodes it.  Ingest refuses such a file now; one stored before
that check (put in the store directly here) must still never reach a decoder: the gate
calls it damaged, WADO-RS answers 406, and the node stays up."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
import requests
from _data import DICOM_DIR

from fenji.codecs.compress.bundle import make_preview
from fenji.gateway.cases import image_checks as ic
from fenji.gateway.dicom.validate import Rejected, check_part10
from fenji.gateway.lab.harness import NodeProcess
from fenji.gateway.store.db import Store

pytestmark = pytest.mark.timeout(300)
SOURCE = DICOM_DIR / "other" / "ct_jpegls_lossless.dcm"


def _too_many_rows() -> tuple[bytes, pydicom.Dataset]:
    ds = pydicom.dcmread(SOURCE)
    ds.Rows = ds.Rows * 2
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue(), ds


def test_the_abort_is_real_in_a_child_process() -> None:
    """Why the checks exist: python-gdcm aborts (SIGABRT), no Python exception."""
    code = ("import io, pydicom, sys; sys.path.insert(0, 'tests');"
            "from security.test_decoder_abort import _too_many_rows;"
            "pydicom.dcmread(io.BytesIO(_too_many_rows()[0])).pixel_array")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120,
                          cwd=Path(__file__).parents[2])
    assert done.returncode != 0 and b"Traceback" not in done.stderr, done.stderr[-500:]


def _decoded_is_406_and_node_up(node: NodeProcess, ds: pydicom.Dataset, why: str) -> None:
    """The instance as Explicit VR LE and its frame 1 decoded: 406 naming ``why``;
    its metadata still served, the node's process still running."""
    url = (f"{node.http_url}/dicom-web/studies/{ds.StudyInstanceUID}/series/"
           f"{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}")
    h = node.auth("dr")
    for path, accept in (("", 'multipart/related; type="application/dicom"'),
                         ("/frames/1", 'multipart/related; type="application/octet-stream"'
                                       "; transfer-syntax=1.2.840.10008.1.2.1")):
        r = requests.get(url + path, headers={**h, "Accept": accept}, timeout=120)
        assert r.status_code == 406, (path, r.status_code, r.text[:300])
        assert why in r.json()["message"], r.json()
    r = requests.get(url + "/metadata", headers=h, timeout=60)
    assert r.status_code == 200  # the node is still there
    assert node.proc is not None and node.proc.poll() is None


def test_a_stored_instance_that_lies_about_its_rows_never_reaches_the_decoder(
        tmp_path: Path) -> None:
    data, ds = _too_many_rows()
    with pytest.raises(Rejected, match="its codestream is 512 x 512"):
        check_part10(data)
    got = ic.frames_of(pydicom.dcmread(io.BytesIO(data)))  # in this process: no abort
    assert isinstance(got, ic.iq.Damaged) and "does not describe" in got.error
    assert make_preview(data) is None  # the console's thumbnail and the bundle's preview
    node = NodeProcess(tmp_path / "n", name="n", role="center", workers=1,
                       users={"dr": "reader"})
    store = Store(node.directory / "store")
    info = check_part10(SOURCE.read_bytes()).info  # as if stored before the check
    store.put(data, info)
    store.close()
    with node:
        _decoded_is_406_and_node_up(node, ds, "does not describe")


def test_a_jpeg_that_aborts_the_decoder_is_damaged_and_the_node_stays_up(
        tmp_path: Path) -> None:
    """A JPEG whose header is consistent but whose stream makes python-gdcm abort
    (tests/_corrupt.py): ingest takes it from DCMTK storescu (nothing there decodes),
    the gate calls it damaged and holds the case, WADO-RS answers 406 for decoded
    frames and for a transcode, and the node is still up.  Before the decoding
    child existed each of those ended the node's process."""
    from _corrupt import aborting_jpeg

    from fenji.gateway.lab.dcmtk import storescu

    data = aborting_jpeg()
    ds = pydicom.dcmread(io.BytesIO(data))
    got = ic.frames_of(ds)  # in this process: the abort happens in a child
    assert isinstance(got, ic.iq.Damaged) and "decoder crashed" in got.error, got
    assert make_preview(data) is None
    f = tmp_path / "bad.dcm"
    f.write_bytes(data)
    node = NodeProcess(tmp_path / "n", name="n", allow_ae=["CT1"], workers=1,
                       users={"dr": "reader"})
    center = NodeProcess(tmp_path / "center", name="center", role="center", workers=1)
    node.add_peer(center, default=True)  # never started: a held case goes nowhere
    with node:
        pushed = storescu([f], node.dicom_port, calling="CT1")
        assert not pushed.failed, pushed.output[-800:]
        _decoded_is_406_and_node_up(node, ds, "decoder crashed")
        held = node.cli("case", "send", str(ds.StudyInstanceUID), "--priority", "urgent",
                        "--operator", "technician Zhang", "--json", check=False)
        assert held.returncode == 3, held.stderr
        assert "HELD" in held.stderr and "decoder crashed" in held.stderr, held.stderr
        _decoded_is_406_and_node_up(node, ds, "decoder crashed")
