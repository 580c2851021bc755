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

from fenji.gateway.harness import NodeProcess

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
