"""Issue 17 finding 13: bytes in flight of one STOW-RS part and of an ECG upload are
bounded.  Each part streams into a temp file in the store's ``tmp/`` (bounded by
the limits) instead of a buffer that grew to the part and was then copied.

Against a real node process; memory is the VmHWM/VmRSS of the process serving HTTP.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np
import pydicom
import pytest
import requests
from _data import ct_series
from _tools import proc_vm, reset_peak_rss
from pydicom.uid import generate_uid

from fenji.gateway.lab.harness import NodeProcess

pytestmark = pytest.mark.timeout(600)

MIB = 1 << 20
INSTANCE_CAP = 96 * MIB
RECORD_CAP = 4 * MIB




def _instance(n_bytes: int) -> bytes:
    ds = pydicom.dcmread(ct_series()[0])
    side = int((n_bytes / 2) ** 0.5)
    pixels = np.resize(ds.pixel_array, (side, side)).astype("<u2")
    ds.Rows = ds.Columns = side
    ds.PixelData = pixels.tobytes()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _stow_body(data: bytes) -> Iterator[bytes]:
    """Streamed, so the client's copy is not counted twice here either."""
    yield b"--b\r\nContent-Type: application/dicom\r\n\r\n"
    view = memoryview(data)
    for i in range(0, len(data), MIB):
        yield bytes(view[i:i + MIB])
    yield b"\r\n--b--\r\n"


@pytest.fixture(scope="module")
def center(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    node = NodeProcess(tmp_path_factory.mktemp("spool") / "center", name="center",
                       role="center", workers=1, users={"tech": "technician"},
                       extra_toml=f"[dicom]\nmax_instance_bytes = {INSTANCE_CAP}\n"
                                  f"[ingest]\nmax_record_bytes = {RECORD_CAP}\n")
    with node:
        yield node


def _tmp_files(node: NodeProcess) -> list[str]:
    return sorted(p.name for p in (node.directory / "store" / "tmp").iterdir())


def _stow(node: NodeProcess, data: bytes) -> requests.Response:
    return requests.post(f"{node.http_url}/dicom-web/studies", data=_stow_body(data),
                         timeout=300, headers={
                             **node.auth("tech"),
                             "Content-Type": 'multipart/related; type="application/dicom"; '
                                             "boundary=b"})


def test_a_large_stow_part_costs_about_its_size_once(center: NodeProcess) -> None:
    """A 64 MiB part held as a growing bytearray plus a bytes() copy cost twice its
    size; streamed to a temp file, the node holds it once (while it is checked)."""
    assert center.proc is not None
    data = _instance(64 * MIB)
    rss_before = reset_peak_rss(center.proc.pid)
    r = _stow(center, data)
    assert r.status_code == 200, r.text
    growth = proc_vm(center.proc.pid, "VmHWM:") - rss_before
    print(f"STOW part {len(data) / MIB:.0f} MiB: peak growth {growth / MIB:.0f} MiB")
    assert growth < 1.5 * len(data), f"peak grew {growth / MIB:.0f} MiB"
    assert _tmp_files(center) == []  # the spooled part is gone


def test_a_stow_part_over_the_cap_is_refused_and_leaves_no_temp_file(
        center: NodeProcess) -> None:
    r = _stow(center, _instance(INSTANCE_CAP + 4 * MIB))
    assert r.status_code == 409, r.text
    failed = r.json()["00081198"]["Value"][0]
    assert failed["00081197"]["Value"] == [0xC011]
    assert _tmp_files(center) == []


def test_an_ecg_upload_over_the_cap_is_never_held_whole(center: NodeProcess) -> None:
    """aiohttp's part.read() read a whole part before the cap was checked: a 64 MiB
    .dat was in memory (twice) before the 413.  Now the part stops at the cap."""
    assert center.proc is not None
    dat = np.zeros(64 * MIB, dtype=np.uint8).tobytes()
    rss_before = reset_peak_rss(center.proc.pid)
    r = requests.post(f"{center.http_url}/api/ecg", headers=center.auth("tech"), timeout=300,
                      files={"hea": ("big.hea", b"big 12 500 2796202\n"),
                             "dat": ("big.dat", dat)})
    assert r.status_code == 413, r.text
    assert f"ingest.max_record_bytes = {RECORD_CAP}" in r.json()["message"]
    growth = proc_vm(center.proc.pid, "VmHWM:") - rss_before
    print(f"ECG upload of {len(dat) / MIB:.0f} MiB over a {RECORD_CAP / MIB:.0f} MiB cap: "
          f"peak growth {growth / MIB:.0f} MiB")
    assert growth < 16 * MIB, f"peak grew {growth / MIB:.0f} MiB"
    assert _tmp_files(center) == []
