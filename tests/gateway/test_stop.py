"""Stopping cleanly (issue 18, point 8): SIGTERM gives associations in flight a bounded
grace (``dicom.stop_grace_s``), then cuts them and logs what was cut with the bytes
really received; "node stopped" is the node's last word.

A real node process, DCMTK's storescu and the link emulator between them (a thin
link, so a C-STORE is still arriving when the node is told to stop).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from _data import ct_series
from _wait import until

from fenji.gateway.lab.dcmtk import tool
from fenji.gateway.lab.harness import NodeProcess
from fenji.routing.linkemu.proxy import LinkEmulator, LinkProfile

pytestmark = pytest.mark.timeout(300)


def _big_instance(path: Path) -> Path:
    """A CT slice grown to 2048 x 2048 (8 MiB of pixels): minutes over the slow link."""
    ds = pydicom.dcmread(ct_series()[0])
    arr = np.resize(ds.pixel_array, (2048, 2048)).astype(ds.pixel_array.dtype)
    ds.Rows, ds.Columns = arr.shape
    ds.PixelData = arr.tobytes()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    return path


def test_sigterm_cuts_a_transfer_after_the_grace_and_says_how_much_arrived(
        tmp_path: Path) -> None:
    big = _big_instance(tmp_path / "big.dcm")
    node = NodeProcess(tmp_path / "node", workers=1,
                       extra_toml="[dicom]\nstop_grace_s = 1.0\n")
    link = LinkEmulator(LinkProfile(rate_up_bps=1_000_000), ("127.0.0.1", node.dicom_port))
    sender = None
    with node:
        handle = link.start_in_thread()
        try:
            sender = subprocess.Popen(
                [tool("storescu"), "-aet", "MODALITY", "-aec", "FENJI", "127.0.0.1",
                 str(handle.port), str(big)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            # An event, not a time: a good part of the data set has crossed the link.
            until(lambda: handle.stats()["bytes_up"] > 500_000, 120, "the C-STORE to be under way")
            rc = node.stop(timeout_s=120)
            assert rc == 0, node.log_tail()
        finally:
            if sender is not None and sender.poll() is None:
                sender.kill()
                sender.wait()
            handle.stop()
    log = node.log_path.read_text(errors="replace")
    lines = [ln for ln in log.splitlines() if ln.strip()]
    cut = [ln for ln in lines if "cut at shutdown" in ln]
    assert len(cut) == 1, log
    assert "dicom.stop_grace_s=1" in cut[0] and "calling=MODALITY" in cut[0]
    m = re.search(r"bytes_received=(\d+)", cut[0])
    assert m and int(m.group(1)) > 0, cut[0]  # never "bytes=0" after megabytes arrived
    closed = [ln for ln in lines if "outcome=cut-at-shutdown" in ln]
    assert len(closed) == 1 and "stored=0" in closed[0], log
    assert int(re.search(r"inflight_bytes=(\d+)", closed[0]).group(1)) > 0  # type: ignore[union-attr]
    assert "dicom stopped: 1 associations cut" in log
    # Nothing of the node (HTTP, sender, DICOM) speaks after "node stopped".
    assert "node stopped" in lines[-1], "\n".join(lines[-5:])
    assert log.count("node stopped") == 1
    assert "Traceback" not in log, log
