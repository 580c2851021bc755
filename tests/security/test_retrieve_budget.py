"""An allow-listed AE cannot empty the store (issue 17, finding 15).

Before, a C-GET by a UID list after a universal C-FIND moved every study to any
allow-listed AE.  Each calling AE now has an hourly retrieve budget
(``dicom.max_retrieve_bytes_per_hour``); beyond it a retrieve is refused whole
with 0xA702, named in the log, and other AEs keep theirs.  Real DCMTK getscu.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pydicom
import pytest
from _data import ct_series

from fenji.gateway.lab.dcmtk import storescu
from fenji.gateway.lab.harness import NodeProcess

pytestmark = pytest.mark.timeout(300)


def _getscu(node: NodeProcess, calling: str, out: Path, *keys: str) -> str:
    out.mkdir(parents=True, exist_ok=True)
    args = ["/usr/bin/getscu", "-S", "-d", "-aet", calling, "-aec", "FENJI", "-od", str(out)]
    for k in keys:
        args += ["-k", k]
    r = subprocess.run([*args, "127.0.0.1", str(node.dicom_port)], capture_output=True,
                       text=True, timeout=120)
    return r.stdout + r.stderr


def _status(output: str) -> int:
    found = re.findall(r"DIMSE Status\s*:\s*0x([0-9a-fA-F]{4})", output)
    assert found, output[-2000:]
    return int(found[-1], 16)


def test_each_ae_has_an_hourly_retrieve_budget(tmp_path: Path) -> None:
    files = ct_series()[:8]
    one = files[0].stat().st_size
    budget = one * 3  # three slices an hour, for the test
    node = NodeProcess(tmp_path / "center", name="center", role="center",
                       allow_ae=["CT1", "WS1", "WS2"], workers=1,
                       extra_toml=f"[dicom]\nmax_retrieve_bytes_per_hour = {budget}\n")
    with node:
        assert len(storescu(files, node.dicom_port, calling="CT1").sent) == len(files)
        study = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
        whole = _getscu(node, "WS1", tmp_path / "ws1",
                        "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study}")
        assert _status(whole) == 0xA702, whole[-2000:]
        assert not list((tmp_path / "ws1").iterdir())  # refused whole: nothing moved
        log = node.log_tail(100)
        assert "c-get calling=WS1 refused status=0xA702" in log
        assert "dicom.max_retrieve_bytes_per_hour" in log
        # Within the budget it works, until the budget is spent.
        sops = [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files]
        for i, sop in enumerate(sops[:3]):
            got = _getscu(node, "WS1", tmp_path / f"ws1-{i}", "QueryRetrieveLevel=IMAGE",
                          f"StudyInstanceUID={study}", f"SOPInstanceUID={sop}")
            assert _status(got) == 0, got[-2000:]
        spent = _getscu(node, "WS1", tmp_path / "ws1-x", "QueryRetrieveLevel=IMAGE",
                        f"StudyInstanceUID={study}", f"SOPInstanceUID={sops[3]}")
        assert _status(spent) == 0xA702
        # Another workstation has its own budget.
        other = _getscu(node, "WS2", tmp_path / "ws2", "QueryRetrieveLevel=IMAGE",
                        f"StudyInstanceUID={study}", f"SOPInstanceUID={sops[3]}")
        assert _status(other) == 0, other[-2000:]
