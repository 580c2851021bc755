"""A center process killed while it sends: another takes its outbox job over through
the heartbeat, not after the job's lease (issue 14, part 3).

Two `fenji node` processes of one center (``[node] shared_store``) on one index
(SQLite, or a fresh PostgreSQL database).  A case released at the center is
queued for a peer whose address is a black hole (it accepts and never answers),
so the process that claims the job hangs in its request.  That process is
killed with SIGKILL.  ``outbox.lease_s`` is an hour: only the survivor's
heartbeat, finding the dead pid, can hand the job on, and the survivor's
sender then claims it.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from _data import ct_series
from _wait import until

from fenji.gateway import config as config_mod
from fenji.gateway.cases.case import release
from fenji.gateway.lab.dcmtk import storescu
from fenji.gateway.lab.harness import NodeProcess, free_port
from fenji.gateway.lab.synth import derive
from fenji.gateway.node import open_store
from fenji.gateway.store.db import Store

pytestmark = pytest.mark.timeout(600)


@contextlib.contextmanager
def black_hole() -> Iterator[int]:
    """A TCP port that accepts connections, reads and never answers."""
    srv = socket.create_server(("127.0.0.1", free_port()))
    conns: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        srv.settimeout(0.5)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError, OSError):
                c, _ = srv.accept()
                c.setblocking(False)
                conns.append(c)
            for c in conns:
                with contextlib.suppress(OSError):
                    c.recv(1 << 16)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield srv.getsockname()[1]
    finally:
        stop.set()
        t.join(timeout=10)
        for c in conns:
            c.close()
        srv.close()


def _owner_pid(store: Store, job_id: int) -> int | None:
    row = store.query_one("SELECT state, lease_owner FROM outbox WHERE job_id = ?", (job_id,))
    if row is None or row["state"] != "leased" or not row["lease_owner"]:
        return None
    return int(str(row["lease_owner"]).rsplit(":", 1)[1])


def test_a_killed_senders_job_is_taken_over_by_the_other_process(
        tmp_path: Path, index_url: str) -> None:
    env = {"FENJI_STORE_INDEX_URL": index_url} if index_url else {}
    extra = ("[node]\nshared_store = true\n[outbox]\nlease_s = 3600.0\n"
             "[transfer]\nrequest_timeout_s = 3000.0\n")
    procs = []
    for _ in range(2):
        dicom, http = free_port(), free_port()
        p = NodeProcess(tmp_path / "center", name="center", role="center", workers=1,
                        dicom_port=dicom, http_port=http, allow_ae=["*"], extra_toml=extra,
                        env={**env, "FENJI_DICOM_PORT": str(dicom),
                             "FENJI_HTTP_PORT": str(http)})
        procs.append(p)
    a, b = procs
    a.log_path = tmp_path / "center-a.log"
    b.log_path = tmp_path / "center-b.log"
    edge = NodeProcess(tmp_path / "edge", name="edge")  # its key only: never started
    files = derive(ct_series()[:3], tmp_path / "src", 3, prefix="hand")
    study = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    with black_hole() as port:
        a.add_peer(edge, url=f"http://127.0.0.1:{port}")  # one config for both
        store: Store | None = None
        try:
            a.start()
            b.start()
            assert len(storescu(files, a.dicom_port, calling="CT1").sent) == len(files)
            store = open_store(config_mod.load(a.config, env=env))
            rel = release(store, study, destination="edge", sender_node="center", hop="edge")
            job = store.query_one("SELECT job_id FROM outbox WHERE bundle_id = ?",
                                  (rel.bundle_id,))
            assert job is not None
            job_id = int(job["job_id"])
            first = until(lambda: _owner_pid(store, job_id), 120, "a process to lease the job")
            by_pid = {p.proc.pid: p for p in (a, b) if p.proc is not None}
            assert first in by_pid, (first, by_pid)
            victim = by_pid[first]
            survivor = next(pid for pid in by_pid if pid != first)
            victim.kill()  # SIGKILL, mid-request to the black hole
            # The lease has an hour left: only the heartbeat hands the job on.
            until(lambda: _owner_pid(store, job_id) == survivor, 120,
                  "the surviving process to take the killed one's job over")
            row = store.query_one("SELECT attempts FROM outbox WHERE job_id = ?", (job_id,))
            assert row is not None and row["attempts"] == 0  # handed on, not a failure
            left = store.query("SELECT pid FROM processes")
            assert [r["pid"] for r in left] == [survivor]
        finally:
            for p in (a, b):
                p.stop()
            if store is not None:
                store.close()
