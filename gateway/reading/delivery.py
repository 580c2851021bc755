"""What a delivery means to this node: the sender's events, turned into audit and states.

``routing`` moves bundles and knows nothing of cases, reports or the ledger; its
:class:`~fenji.routing.sender.SenderLoop` reports each event to a
:class:`~fenji.routing.sender.SenderEvents`.  :class:`NodeEvents` is the node's:

* a receipt: the ledger's "receipt" event (once per bundle), a returned report's
  ``returned_at``, and the case forward to ``delivered`` (never back from ``reported``);
* the first time a bundle goes on the wire: the ledger's "sent" event, the case to ``sent``;
* a dead letter: the ledger's "dead_lettered" event, for someone to act on;
* a report handed to a non-fenji egress (PACS/HIS): ``report_delivered``.
"""

from __future__ import annotations

import logging
from typing import Any

from fenji.gateway.audit import ledger
from fenji.gateway.cases import states
from fenji.gateway.config import Config
from fenji.gateway.reading.report_return import report_delivered
from fenji.gateway.store.db import Store
from fenji.gateway.store.index import Con
from fenji.routing.transfer_client import Delivered

log = logging.getLogger(__name__)


class NodeEvents:
    """The node's answer to its sender's events (routing.sender.SenderEvents)."""

    def __init__(self, cfg: Config, store: Store) -> None:
        self.cfg = cfg
        self.store = store
        self.node = cfg.node.name

    def receipt(self, con: Con, job: dict[str, Any], out: Delivered,
                fresh: bool, now: float) -> None:
        report = con.execute("SELECT report_id, case_id FROM reports WHERE report_id = ?",
                             (job["case_id"],)).fetchone()
        if report is not None:  # a report bundle went back down (reading/report_return.py)
            con.execute("UPDATE reports SET returned_at = coalesce(returned_at, ?) "
                        "WHERE report_id = ?", (now, report[0]))
        if fresh and self.node:
            ledger.record(self.store, "receipt", node=self.node, actor=str(out.signer),
                          role="node", obj=job["bundle_id"],
                          case_id=report[1] if report else job["case_id"],
                          detail={"destination": job["destination"],
                                  "what": "report" if report else "case",
                                  "instances": len(out.receipt.get("instances", [])),
                                  "receiver_time": out.receipt.get("received_at")},
                          con=con, at=now)
        # The full bundle's receipt delivers the case; a STAT preview's (no instances)
        # does not.  The table never moves it back: the report can come back before a
        # resent bundle's receipt (a center restarted mid-way).
        if report is None and out.receipt.get("instances"):
            self._move(con, job, "receipt", now)

    def _move(self, con: Con, job: dict[str, Any], event: str,
              now: float) -> None:
        """The case's state after a sender event, through the one table; a bundle that
        is not a case here (a report passing a relay, an unknown case) moves nothing."""
        try:
            states.move(con, job["case_id"], event, who=states.NODE, now=now)
        except states.NoSuchCase:
            pass
        except states.CaseStateError as exc:  # the receipt itself is kept all the same
            log.warning("bundle %s: %s", job["bundle_id"], exc)

    def sent(self, job: dict[str, Any], now: float, bytes_total: int) -> None:
        """The ledger's "sent" event: once per bundle, whatever the attempts."""
        with self.store.atomic() as con:
            report = con.execute("SELECT case_id FROM reports WHERE report_id = ?",
                                 (job["case_id"],)).fetchone()
            case_id = report[0] if report else job["case_id"]
            if report is None:
                self._move(con, job, "send", now)
            if con.execute("SELECT 1 FROM audit WHERE case_id = ? AND kind = 'sent' AND "
                           "object = ?", (case_id, job["bundle_id"])).fetchone():
                return  # a resumed or retried upload
            ledger.record(self.store, "sent", node=self.node, actor=self.node, role="node",
                          obj=job["bundle_id"], case_id=case_id, con=con, at=now,
                          detail={"destination": job["destination"],
                                  "what": "report" if report else "case",
                                  "bytes": bytes_total, "priority": job.get("priority")})

    def dead(self, job: dict[str, Any], reason: str, now: float) -> None:
        ledger.record(self.store, "dead_lettered", node=self.node, actor=self.node,
                      role="node", obj=job["bundle_id"], case_id=job["case_id"], at=now,
                      detail={"destination": job["destination"], "job": job["job_id"],
                              "reason": reason[:500]})

    def egress_delivered(self, job: dict[str, Any], target: str, now: float) -> None:
        report_delivered(self.store, self.cfg, job["case_id"], target, now)
