"""Issue 17, finding 12: idle sockets must not lock the DICOM port.

40 connections from one address that never send an A-ASSOCIATE-RQ used to
take every association slot for ``acse_timeout_s`` (here 120 s), and a real
DCMTK ``echoscu`` was answered "local limit exceeded".  Now a source address
holds at most ``dicom.max_connections_per_host`` connections and a silent one
is dropped after ``dicom.preassoc_idle_s``.
"""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest
from _wait import until

from fenji.gateway.lab.harness import NodeProcess

pytestmark = pytest.mark.timeout(300)

ECHOSCU = "/usr/bin/echoscu"


def _echo(port: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run([ECHOSCU, "-to", "20", "-aet", "ECHOSCU", "-aec", "FENJI",
                           "127.0.0.1", str(port)], capture_output=True, text=True,
                          timeout=60, check=False)


def _closed_by_server(s: socket.socket) -> bool:
    s.setblocking(False)
    try:
        return s.recv(64) is not None  # b"" (FIN) or an A-ASSOCIATE-RJ: the server spoke
    except BlockingIOError:
        return False
    except OSError:
        return True  # reset: closed too


def test_idle_sockets_do_not_lock_out_echo(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "n", name="n", workers=1,
                       extra_toml="[dicom]\nacse_timeout_s = 120.0\npreassoc_idle_s = 2.0\n"
                                  "max_connections_per_host = 8\n")
    with node:
        idle = []
        for _ in range(40):  # the attacker: another address on the same machine
            s = socket.socket()
            s.bind(("127.0.0.2", 0))
            s.connect(("127.0.0.1", node.dicom_port))
            idle.append(s)
        try:
            out = until(lambda: (r := _echo(node.dicom_port)).returncode == 0 and r, 60,
                        "echoscu to succeed while 40 idle sockets are open")
            assert out.returncode == 0
            # Every idle socket is closed by the server (refused at once past the
            # per-address limit, or dropped after preassoc_idle_s), long before
            # the 120 s ACSE timeout.
            until(lambda: all(_closed_by_server(s) for s in idle), 60,
                  "the server to close all 40 idle sockets")
        finally:
            for s in idle:
                s.close()
        log = node.log_path.read_text()
        assert "dicom.max_connections_per_host" in log and "dicom.preassoc_idle_s" in log


def _findscu(node: NodeProcess, calling: str, out: Path) -> list[str]:
    out.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["/usr/bin/findscu", "-S", "-aet", calling, "-aec", "FENJI", "-X",
                        "-od", str(out), "-k", "QueryRetrieveLevel=STUDY",
                        "-k", "StudyInstanceUID", "127.0.0.1", str(node.dicom_port)],
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    import pydicom

    return [str(pydicom.dcmread(p).StudyInstanceUID) for p in sorted(out.glob("rsp*.dcm"))]


def test_reader_workstation_finds_and_gets_only_its_services(tmp_path: Path) -> None:
    """Finding 7 on DIMSE: an AE mapped to an ECG reader neither finds nor gets a CT."""
    import pydicom
    from _data import ct_series

    from fenji.gateway.lab.dcmtk import storescu

    node = NodeProcess(tmp_path / "n", name="n", role="center", workers=1)
    node.add_user("ecgdoc", "reader", services=("ecg",))
    with open(node.config, "a", encoding="utf-8") as fh:
        fh.write('\n[[remote_aes]]\nae_title = "READWS1"\nhost = "127.0.0.1"\nport = 1104\n'
                 'reader = "ecgdoc"\n')
    with node:
        files = ct_series()[:2]
        storescu(files, node.dicom_port, calling="CT1")
        study = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
        assert study in _findscu(node, "VIEWER", tmp_path / "f1")
        assert study not in _findscu(node, "READWS1", tmp_path / "f2")

        def get(calling: str) -> list[Path]:
            got = tmp_path / f"get-{calling}"
            got.mkdir()
            subprocess.run(["/usr/bin/getscu", "-S", "-aet", calling, "-aec", "FENJI",
                            "-od", str(got), "-k", "QueryRetrieveLevel=STUDY",
                            "-k", f"StudyInstanceUID={study}", "127.0.0.1",
                            str(node.dicom_port)],
                           capture_output=True, text=True, timeout=120, check=False)
            return list(got.iterdir())

        assert len(get("VIEWER")) == 2
        assert get("READWS1") == []
