"""A STAT case goes at once on a second connection while a routine bundle's stream is
held up on the first; the routine one resumes by offset afterwards, exactly once.

edge -> proxy -> center.  The proxy holds the edge's first connection after part of
the routine bundle: nothing more passes and no answer comes back, as when the link
holds a write.  Released then, the STAT ECG must be received by the center while
that connection is still held; when it lets go (and cuts), the routine bundle
resumes at the center's offset and arrives once.
"""

from __future__ import annotations

import json
from pathlib import Path

import pydicom
import pytest
from _data import DICOM_DIR, ct_series
from _nodes import index_rows
from _proxy import Proxy
from _wait import until

from fenji.gateway.lab.dcmtk import storescu
from fenji.gateway.lab.harness import NodeProcess
from fenji.gateway.lab.synth import derive

pytestmark = pytest.mark.timeout(1200)


def _state(node: NodeProcess, case_id: str) -> str | None:
    rows = index_rows(node, "SELECT state FROM cases WHERE case_id = ?", (case_id,))
    return str(rows[0]["state"]) if rows else None


def test_stat_goes_on_a_second_connection_while_the_routine_one_is_held(
        tmp_path: Path) -> None:
    big = derive(ct_series(), tmp_path / "big", 12, prefix="big")
    ecg = DICOM_DIR / "ecg" / "waveform_ecg_12lead.dcm"
    # A held request is not given up for 15 minutes: only a second connection lets the
    # STAT case through within the deadline below.
    edge = NodeProcess(tmp_path / "edge", name="edge", allow_ae=["CT1"], workers=1,
                       extra_toml="[transfer]\nrequest_timeout_s = 900\n")
    center = NodeProcess(tmp_path / "center", name="center", role="center", workers=1)
    proxy = Proxy(center.http_port, cut_up=400_000, hold=True)
    edge.add_peer(center, default=True, url=f"http://127.0.0.1:{proxy.port}")
    center.add_peer(edge)
    try:
        with edge, center:
            storescu([*big, ecg], edge.dicom_port, calling="CT1")
            study = str(pydicom.dcmread(big[0], stop_before_pixels=True).StudyInstanceUID)
            routine = json.loads(edge.cli("case", "send", study, "--no-gate",
                                          "--json").stdout)
            assert routine["bundle_bytes"] > 600_000  # it streams in frames, past the hold
            assert proxy.holding.wait(300), "the routine stream never reached the hold"
            stat = json.loads(edge.cli(
                "case", "send", str(pydicom.dcmread(ecg, stop_before_pixels=True)
                                    .StudyInstanceUID),
                "--priority", "stat", "--no-gate", "--json").stdout)
            until(lambda: _state(center, stat["case_id"]) == "received", 120,
                  "the STAT case at the center while the routine connection is held")
            assert proxy.holding.is_set() and proxy.connections >= 2
            # the routine bundle has not arrived: its connection is still held
            assert _state(center, routine["case_id"]) is None
            proxy.let_go()  # ... and the proxy cuts it: the routine one resumes
            until(lambda: _state(center, routine["case_id"]) == "received", 300,
                  "the routine case at the center")
            until(lambda: _state(edge, routine["case_id"]) == "delivered", 120,
                  "the routine case delivered at the edge")
            ups = index_rows(center, "SELECT state FROM uploads WHERE bundle_id = ?",
                     (routine["bundle_id"],))
            assert [u["state"] for u in ups] == ["complete"]  # one upload, whatever the cut
            n = index_rows(center, "SELECT count(*) AS n FROM case_instances WHERE case_id = ?",
                   (routine["case_id"],))[0]["n"]
            assert n == routine["instances"]
            log = edge.log_path.read_text()
            assert f"case={routine['case_id']}" in log and "outcome=yielded" in log
    finally:
        proxy.stop()
