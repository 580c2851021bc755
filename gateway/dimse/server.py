"""The DICOM SCP shell: pynetdicom events in, store calls out.

One :class:`DicomService` per receiving process.  The rules (issue 2, DESIGN.md §5):

* success only after the blob is durable and its row committed;
* an identical re-send is acknowledged idempotently; same UID with other
  bytes is refused (0xC010) and recorded;
* malformed input gets a failure status naming the reason and goes to
  quarantine, never to the store;
* disk full answers 0xA700 and ingest resumes by itself when space frees;
* only allow-listed calling AE titles (and optionally source addresses);
* TCP_NODELAY on every accepted socket (pynetdicom leaves Nagle on, which
  caps C-STORE at 10-21 instances/s on loopback);
* several worker processes serve the port through the listening socket their
  node binds once (gateway/node.py), so several modalities
  at once are not serialised behind one GIL.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import socketserver
import threading
import time
from dataclasses import dataclass, field
from typing import Any, cast

from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from fenji.gateway import ingest
from fenji.gateway.config import Config
from fenji.gateway.dicom import status as st
from fenji.gateway.dicom.validate import ACCEPTED_TRANSFER_SYNTAXES
from fenji.gateway.dimse.conn_guard import ConnectionGuard
from fenji.gateway.reading import errors as reading_errors
from fenji.gateway.reading import viewer
from fenji.gateway.store.db import Store
from fenji.routing.egress import install_nodelay

log = logging.getLogger(__name__)

# Storage SOP classes pynetdicom knows do not include every ECG/SR/PDF one in
# older releases; these are added explicitly so they are never refused.
EXTRA_STORAGE_CLASSES = (
    "1.2.840.10008.5.1.4.1.1.9.1.1",  # 12-lead ECG Waveform Storage
    "1.2.840.10008.5.1.4.1.1.9.1.2",  # General ECG Waveform Storage
    "1.2.840.10008.5.1.4.1.1.9.1.3",  # Ambulatory ECG Waveform Storage
    "1.2.840.10008.5.1.4.1.1.104.1",  # Encapsulated PDF Storage
    "1.2.840.10008.5.1.4.1.1.88.11",  # Basic Text SR
    "1.2.840.10008.5.1.4.1.1.88.22",  # Enhanced SR
    "1.2.840.10008.5.1.4.1.1.88.33",  # Comprehensive SR
    "1.2.840.10008.5.1.4.1.1.88.34",  # Comprehensive 3D SR
)


class _FastPoll:
    """Stand-in for the ``time`` module inside pynetdicom's reactor loops.

    pynetdicom polls: its DUL and association threads sleep 1 ms between
    checks, and a C-STORE crosses both loops twice, which alone caps one
    association at a few hundred instances/s whatever the hardware.  This proxy
    shortens exactly those 1 ms sleeps to ``poll_s`` (dicom.poll_interval_s)
    and passes everything else through to the real module.  The cost is CPU
    while an association sits idle (bounded by dicom.network_timeout_s).
    """

    def __init__(self, poll_s: float) -> None:
        self.poll_s = poll_s

    def sleep(self, seconds: float) -> None:
        time.sleep(self.poll_s if 0 < seconds <= 0.001 else seconds)

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def install_fast_poll(poll_s: float) -> None:
    import pynetdicom.association
    import pynetdicom.dul

    proxy = _FastPoll(poll_s)
    pynetdicom.association.time = proxy  # type: ignore[assignment]
    pynetdicom.dul.time = proxy  # type: ignore[assignment]


class _Server(ConnectionGuard, ThreadedAssociationServer):
    """pynetdicom's server with fenji's socket options, address allow-list and
    pre-association guard (gateway/dimse/conn_guard.py)."""

    daemon_threads = True
    allow_hosts: frozenset[str] = frozenset()
    # The listening socket the node's supervisor bound and handed to this worker
    # (gateway/node.py): the workers of one node share the port through it, and no
    # other process can join them (no SO_REUSEPORT, issue 18).  None: bind here.
    inherited: socket.socket | None = None

    def server_bind(self) -> None:
        if self.inherited is not None:
            assert self.socket is not None
            self.socket.close()
            self.socket = self.inherited
            self.server_address = self.inherited.getsockname()
            return
        super().server_bind()

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        client, address = super().get_request()
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return client, address

    def verify_request(self, request: Any, client_address: Any) -> bool:
        if self.allow_hosts and client_address[0] not in self.allow_hosts:
            log.warning("refused connection peer=%s reason=address-not-allowed "
                        "(dicom.allow_hosts)", client_address[0])
            return False
        return super().verify_request(request, client_address)


_PYNETDICOM_LOGGERS = ("pynetdicom", "pynetdicom.dul", "pynetdicom.assoc",
                       "pynetdicom.transport", "pynetdicom.acse")


def _demote_to_debug(record: logging.LogRecord) -> bool:
    """A logging filter: re-log pynetdicom's record at DEBUG (after a cut at shutdown)."""
    if record.levelno <= logging.DEBUG:
        return True
    log.debug("after the cut at shutdown, pynetdicom said: %s", record.getMessage(),
              exc_info=record.exc_info)
    return False


@dataclass
class _AssocStats:
    assoc_id: int
    peer: str
    calling: str
    called: str
    started: float = field(default_factory=time.monotonic)
    stored: int = 0
    duplicate: int = 0
    failed: int = 0
    bytes: int = 0
    # PDU bytes received since the last C-STORE answer: bounds what pynetdicom
    # buffers for one data set.
    inflight: int = 0
    cut_off: bool = False
    cut_at_shutdown: bool = False


class DicomService:
    """Verification + Storage SCP bound to one store."""

    def __init__(self, cfg: Config, store: Store) -> None:
        self.cfg = cfg
        self.store = store
        self._stats: dict[int, _AssocStats] = {}
        self._lock = threading.Lock()
        self._next_id = 0
        self.server: _Server | None = None
        d = cfg.dicom
        ae = AE(ae_title=d.ae_title)
        ae.maximum_pdu_size = d.max_pdu_bytes
        ae.maximum_associations = d.max_associations
        ae.network_timeout = d.network_timeout_s
        ae.acse_timeout = d.acse_timeout_s
        ae.dimse_timeout = d.dimse_timeout_s
        if "*" not in d.allow_ae:
            ae.require_calling_aet = list(d.allow_ae)
        ae.require_called_aet = d.require_called_aet
        ts = list(ACCEPTED_TRANSFER_SYNTAXES)
        seen = set()
        # Storage classes accept the SCP/SCU role swap a C-GET requestor proposes
        # (it receives the instances on the same association).
        for cx in AllStoragePresentationContexts:
            uid = str(cx.abstract_syntax)
            seen.add(uid)
            ae.add_supported_context(uid, ts, scu_role=True, scp_role=True)
        for uid in EXTRA_STORAGE_CLASSES:
            if uid not in seen:
                ae.add_supported_context(uid, ts, scu_role=True, scp_role=True)
        ae.add_supported_context(Verification, ts)
        from fenji.gateway.dimse.qr import QR_CLASSES

        for uid in QR_CLASSES:  # C-FIND / C-MOVE / C-GET, patient and study root
            ae.add_supported_context(uid, ts)
        self.ae = ae
        if d.poll_interval_s < 0.001:
            install_fast_poll(d.poll_interval_s)
        install_nodelay()

    # -- lifecycle ------------------------------------------------------
    def start(self, listener: socket.socket | None = None) -> tuple[str, int]:
        """Serve on ``listener`` (a worker's share of its node's port) or bind the port."""
        handlers: list[Any] = [
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_C_FIND, self._on_find),
            (evt.EVT_C_MOVE, self._on_move),
            (evt.EVT_C_GET, self._on_get),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_RELEASED, self._on_closed, ["released"]),
            (evt.EVT_ABORTED, self._on_closed, ["aborted"]),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_DATA_RECV, self._on_data),
        ]
        _Server.allow_hosts = frozenset(self.cfg.dicom.allow_hosts)
        _Server.preassoc_idle_s = self.cfg.dicom.preassoc_idle_s
        _Server.max_per_host = self.cfg.dicom.max_connections_per_host
        _Server.inherited = listener
        server = cast(_Server, self.ae.make_server(
            (self.cfg.dicom.host, self.cfg.dicom.port), evt_handlers=handlers,
            server_class=_Server))
        self.server = server
        threading.Thread(target=server.serve_forever, name="dicom-acceptor",
                         daemon=True).start()
        host, port = server.server_address[:2]
        log.info("dicom listening ae=%s host=%s port=%d", self.cfg.dicom.ae_title, host, port)
        return str(host), int(port)

    def stop(self, grace_s: float) -> int:
        """Stop accepting, let in-flight associations finish for up to ``grace_s``
        (``dicom.stop_grace_s``), then abort the rest; return how many were cut.

        Each cut association gets one WARNING line with what it had stored and
        the bytes of the data set it was sending when it was cut (received,
        not stored: the sender must send that instance again)."""
        if self.server is None:
            return 0
        server, self.server = self.server, None
        # serve_forever() returns; the listening socket is closed.  (Not through
        # pynetdicom's shutdown(): it removes the server from a list make_server()
        # never added it to, and raised ValueError at every node stop.)
        socketserver.BaseServer.shutdown(server)
        server.server_close()
        with contextlib.suppress(ValueError):
            self.ae._servers.remove(server)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            if not [a for a in self.ae.active_associations if a.is_alive()]:
                return 0
            time.sleep(0.05)
        cut = [a for a in self.ae.active_associations if a.is_alive()]
        if cut:
            # Aborting closes sockets under pynetdicom's reader threads, which then log
            # ERROR tracebacks about a closed socket: expected here, so DEBUG only.
            for name in _PYNETDICOM_LOGGERS:
                logging.getLogger(name).addFilter(_demote_to_debug)
        for assoc in cut:
            s = self._stats.get(id(assoc))
            if s is not None:
                s.cut_at_shutdown = True
                log.warning("assoc=%d peer=%s calling=%s cut at shutdown after "
                            "dicom.stop_grace_s=%g: stored=%d bytes_stored=%d, in-flight data "
                            "set not stored: bytes_received=%d", s.assoc_id, s.peer,
                            s.calling, grace_s, s.stored, s.bytes, s.inflight)
            else:
                log.warning("assoc=? peer=%s cut at shutdown after dicom.stop_grace_s=%g",
                            assoc.requestor.address, grace_s)
            assoc.abort()
        return len(cut)

    @property
    def active(self) -> int:
        return len(self.ae.active_associations)

    # -- event handlers -------------------------------------------------
    def _stats_for(self, event: Any) -> _AssocStats:
        key = id(event.assoc)
        s = self._stats.get(key)
        if s is None:
            with self._lock:
                self._next_id += 1
                s = _AssocStats(self._next_id, str(event.assoc.requestor.address),
                                str(event.assoc.requestor.ae_title).strip(),
                                str(event.assoc.acceptor.ae_title).strip())
                self._stats[key] = s
        return s

    def _on_accepted(self, event: Any) -> None:
        s = self._stats_for(event)
        log.debug("assoc=%d peer=%s calling=%s accepted", s.assoc_id, s.peer, s.calling)

    def _on_rejected(self, event: Any) -> None:
        """One line saying which check refused the association (PS3.8 7.1.1.9)."""
        r = event.assoc.requestor
        rq = r.primitive
        calling = str(getattr(rq, "calling_ae_title", r.ae_title) or "").strip()
        called = str(getattr(rq, "called_ae_title", "") or "").strip()
        ae = self.ae
        if ae.require_calling_aet and calling not in [a.strip() for a in
                                                      ae.require_calling_aet]:
            reason = "calling-ae-not-allowed (dicom.allow_ae)"
        elif ae.require_called_aet and called != self.cfg.dicom.ae_title.strip():
            reason = f"called-ae-is-not-ours (we are {self.cfg.dicom.ae_title})"
        elif len([a for a in ae.active_associations if a.is_acceptor]) > \
                ae.maximum_associations:
            reason = "association-limit (dicom.max_associations)"
        else:
            reason = "refused"
        log.warning("assoc=- peer=%s calling=%s called=%s outcome=rejected reason=%s",
                    r.address, _safe(calling), _safe(called), reason)

    def _on_closed(self, event: Any, outcome: str) -> None:
        s = self._stats.pop(id(event.assoc), None)
        if s is None:
            return
        ms = (time.monotonic() - s.started) * 1000
        if s.cut_at_shutdown:
            outcome = "cut-at-shutdown"
        # bytes: stored; inflight_bytes: of a data set received but not answered
        # (an abort mid-transfer), so the log never says 0 after megabytes arrived.
        log.info("assoc=%d peer=%s calling=%s called=%s stored=%d duplicate=%d failed=%d "
                 "bytes=%d inflight_bytes=%d ms=%.0f outcome=%s", s.assoc_id, s.peer,
                 s.calling, s.called, s.stored, s.duplicate, s.failed, s.bytes, s.inflight,
                 ms, outcome)

    def _on_data(self, event: Any) -> None:
        data = event.data
        if not data or data[0] != 0x04:  # only P-DATA-TF carries data sets (PS3.8 9.3.5)
            return
        s = self._stats_for(event)
        s.inflight += len(data)
        limit = self.cfg.dicom.max_instance_bytes + self.cfg.dicom.max_pdu_bytes + 65536
        if s.inflight > limit and not s.cut_off:
            s.cut_off = True
            s.failed += 1
            log.warning("assoc=%d peer=%s calling=%s aborted reason=data set exceeds "
                        "dicom.max_instance_bytes=%d (%d bytes received so far)", s.assoc_id,
                        s.peer, s.calling, self.cfg.dicom.max_instance_bytes, s.inflight)
            # abort() joins the DUL thread we are running in: do it from another.
            threading.Thread(target=event.assoc.abort, daemon=True).start()

    def _on_echo(self, event: Any) -> int:
        return st.SUCCESS

    def _qr_who(self, event: Any) -> tuple[str, str]:
        s = self._stats_for(event)
        return s.calling, s.peer

    def _on_find(self, event: Any) -> Any:
        from fenji.gateway.dimse.qr import handle_find

        yield from handle_find(self.store, self.cfg, event, *self._qr_who(event))

    def _on_move(self, event: Any) -> Any:
        from fenji.gateway.dimse.qr import handle_move

        yield from handle_move(self.store, self.cfg, event, *self._qr_who(event))

    def _on_get(self, event: Any) -> Any:
        from fenji.gateway.dimse.qr import handle_get

        yield from handle_get(self.store, self.cfg, event, *self._qr_who(event))

    def _on_store(self, event: Any) -> Any:
        s = self._stats_for(event)
        try:
            return self._store(event, s)
        finally:
            s.inflight = 0

    def _store(self, event: Any, s: _AssocStats) -> Any:
        req = event.request
        raw = req.DataSet.getvalue() if req.DataSet is not None else b""
        dimse = ingest.Dimse(str(event.context.transfer_syntax),
                             str(req.AffectedSOPClassUID or ""),
                             str(req.AffectedSOPInstanceUID or ""))
        res = ingest.ingest(self.store, raw, ingest.Source("c-store", s.calling, s.peer),
                            ingest.Limits.of(self.cfg), dimse=dimse,
                            on_checked=lambda checked: self._viewer_report(checked, s))
        if not res.ok:
            s.failed += 1
            return _failure(res.status, res.reason)
        if res.outcome is ingest.Outcome.DUPLICATE:
            s.duplicate += 1
        else:
            s.stored += 1
        s.bytes += res.size
        return st.SUCCESS

    def _viewer_report(self, checked: Any, s: _AssocStats) -> ingest.IngestResult | None:
        """A reader's workstation stored an SR/PDF for a worklist study: sign it as the report.

        Returns the ingest result when this was a report (signed, or refused naming
        why), ``None`` to store it as an ordinary instance.
        """
        info = checked.info
        if info.sop_class_uid not in viewer.VIEWER_REPORT_CLASSES:
            return None
        ae = self.cfg.remote_ae(s.calling)
        reader = self.cfg.user(ae.reader) if ae is not None and ae.reader else None
        if reader is None:
            return None
        from fenji.gateway.access.users import User

        try:
            # An AE title proves nothing: the object becomes a draft the reader
            # must confirm with their own credentials, never a signed report.
            report = viewer.viewer_report_draft(
                self.store, self.cfg, User.of(reader), checked.part10,
                sop_class_uid=info.sop_class_uid, study_instance_uid=info.study_instance_uid,
                sop_instance_uid=info.sop_instance_uid, calling_ae=s.calling, peer=s.peer)
        except reading_errors.ReadingError as exc:
            status = reading_errors.refusal_status(exc)
            log.warning("assoc=%d calling=%s reader=%s report refused status=%s sop=%s "
                        "reason=%s", s.assoc_id, s.calling, reader.name, st.describe(status),
                        _safe(info.sop_instance_uid), exc)
            return ingest.refused(str(exc), status, info)
        if report is None:
            return None
        log.info("assoc=%d calling=%s reader=%s report draft case=%s sop=%s: waits for the "
                 "reader to confirm and sign it", s.assoc_id, s.calling, reader.name,
                 report.get("case_id"), _safe(info.sop_instance_uid))
        return ingest.handled(info, len(checked.part10), draft=report.get("draft"))


def _safe(text: str) -> str:
    return text.encode("unicode_escape").decode()[:80]


def _failure(status: int, reason: str) -> Dataset:
    ds = Dataset()
    ds.Status = status
    # (0000,0902) Error Comment is LO: 64 characters at most.
    ds.ErrorComment = reason.encode("ascii", "replace").decode()[:64]
    return ds
