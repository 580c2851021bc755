"""The node's local API: `fenji case send` hands its release to the running node (whose
codecs are loaded) over a UNIX socket only the node's user may use."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import tempfile
from pathlib import Path

import pydicom
import pytest
from _data import DICOM_DIR, ct_series
from _nodes import edge_and_center
from _wait import until

from fenji.gateway.access import local as node_api
from fenji.gateway.lab.dcmtk import storescu

ECG = DICOM_DIR / "ecg" / "waveform_ecg_12lead.dcm"


def _study(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)


def test_case_send_is_released_by_the_running_node_and_delivered(tmp_path: Path) -> None:
    # A deep folder: the socket's path is over sun_path's 108 bytes (reached via its fd).
    edge, center = edge_and_center(tmp_path / ("d" * 90))
    sock = node_api.socket_path(edge.directory)
    assert len(str(sock)) > 108
    ct = ct_series()[:2]
    with edge, center:
        storescu([ECG, *ct], edge.dicom_port, calling="CT1")
        assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
        ecg = json.loads(edge.cli("case", "send", _study(ECG), "--priority", "urgent",
                                  "--no-gate", "--json").stdout)
        # the node released it (its log line), as the CLI (the ledger says who)
        assert f"case released case={ecg['case_id']}" in edge.log_path.read_text()
        assert ecg["next_hop"] == "center" and ecg["instances"] == 1
        local = json.loads(edge.cli("case", "send", _study(ct[0]), "--no-gate", "--json",
                                    "--in-process").stdout)
        assert f"case released case={local['case_id']}" not in edge.log_path.read_text()
        for case in (ecg, local):
            until(lambda c=case: json.loads(edge.cli("case", "show", c["case_id"], "--json")
                                            .stdout)["state"] == "delivered",
                  120, f"case {case['case_id']} delivered")
        show = json.loads(edge.cli("case", "show", ecg["case_id"], "--json").stdout)
        assert show["released_by"] == "cli"
    assert not sock.exists()  # the node removed its socket when it stopped


def test_bad_requests_are_refused_naming_the_field(tmp_path: Path) -> None:
    edge, center = edge_and_center(tmp_path)
    with edge:
        storescu([ECG], edge.dicom_port, calling="CT1")
        status, out = node_api.call(edge.directory, "/cases/release", {"study_instance_uid": 7})
        assert status == 400 and "study_instance_uid" in out["message"]
        status, out = node_api.call(edge.directory, "/cases/release",
                                    {"study_instance_uid": _study(ECG), "priority": "asap"})
        assert status == 400 and "'asap'" in out["message"]
        status, out = node_api.call(edge.directory, "/cases/release",
                                    {"study_instance_uid": _study(ECG), "operator": ["x"]})
        assert status == 400 and "operator" in out["message"]
        status, out = node_api.call(edge.directory, "/cases/release",
                                    {"study_instance_uid": "1.2.3.4"})
        assert status == 400 and "1.2.3.4" in out["message"]
        r = edge.cli("case", "send", "1.2.3.4", "--no-gate", check=False)
        assert r.returncode == 2 and "1.2.3.4" in r.stderr
    # no node: the command releases on the store itself
    out = json.loads(edge.cli("case", "send", _study(ECG), "--no-gate", "--json").stdout)
    assert out["instances"] == 1


CONNECT_AS_NOBODY = """
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.sendall(b"POST /cases/release HTTP/1.1\\r\\nHost: x\\r\\nContent-Type: application/json\\r\\n"
          b"Content-Length: 2\\r\\nConnection: close\\r\\n\\r\\n{}")
print(s.recv(200).split(b"\\r\\n")[0].decode())
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to connect as another user")
def test_another_user_is_refused_even_past_the_file_mode(tmp_path: Path) -> None:
    edge, center = edge_and_center(tmp_path)
    with edge:
        sock = node_api.socket_path(edge.directory)
        # the socket opened to everyone (a link in an open folder, mode 0666): the
        # kernel's SO_PEERCRED still names the caller
        with tempfile.TemporaryDirectory() as open_dir:
            os.chmod(open_dir, 0o755)
            exposed = Path(open_dir) / "local.sock"
            os.link(sock, exposed)
            exposed.chmod(0o666)
            r = subprocess.run(["/usr/bin/python3", "-c", CONNECT_AS_NOBODY, str(exposed)],
                               capture_output=True, text=True, timeout=60,
                               user=65534, group=65534)
        assert r.stdout.startswith("HTTP/1.1 403"), (r.stdout, r.stderr)
        assert "local API refused uid=65534" in edge.log_path.read_text()
