"""A relay forwards a STAT bundle while it still arrives (cut-through), and either
hop resumes on its own after a cut; the relay's receipt and exactly-once by bundle
id are unchanged.

edge -> proxy A -> relay -> proxy B -> center, real nodes on loopback.  Proxy A
holds the edge's first connection after part of the CT bundle: while it holds,
the center must receive bytes of that bundle (the relay has not got all of it,
so it cannot have finalized it).  Proxy B cuts the relay's first connection
early (the second hop resumes); when A lets go it cuts the edge's connection
(the first hop resumes).  Everything is observed in the nodes' own records.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pydicom
import pytest
from _data import ct_series
from _nodes import index_rows
from _proxy import Proxy
from _wait import until

from fenji.gateway.lab.dcmtk import storescu
from fenji.gateway.lab.harness import NodeProcess

pytestmark = pytest.mark.timeout(900)


def _upload(node: NodeProcess, bundle_id: str) -> sqlite3.Row | None:
    rows = index_rows(node, "SELECT * FROM uploads WHERE bundle_id = ?", (bundle_id,))
    assert len(rows) <= 1, rows  # one upload per bundle id, whatever the cuts
    return rows[0] if rows else None


def test_stat_bundle_cut_through_a_relay_with_a_cut_on_each_hop(tmp_path: Path) -> None:
    files = ct_series()
    edge = NodeProcess(tmp_path / "edge", name="edge", allow_ae=["CT1"], workers=1)
    relay = NodeProcess(tmp_path / "relay", name="relay", role="center", workers=1)
    center = NodeProcess(tmp_path / "center", name="center", role="center", workers=1)
    first = Proxy(relay.http_port, cut_up=1_200_000, hold=True)
    second = Proxy(center.http_port, cut_up=300_000)
    try:
        edge.add_peer(relay, default=True, url=f"http://127.0.0.1:{first.port}")
        relay.add_peer(edge)
        relay.add_peer(center, url=f"http://127.0.0.1:{second.port}")
        center.add_peer(relay)
        with edge, relay, center:
            storescu(files, edge.dicom_port, calling="CT1")
            study = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
            case = json.loads(edge.cli("case", "send", study, "--priority", "stat",
                                       "--no-gate", "--dest", "center", "--json").stdout)
            bid = case["bundle_id"]
            assert case["bundle_bytes"] > 2_000_000  # streamed in frames, not one request
            until(first.holding.is_set, 300, "the edge's stream to reach the held point")
            # While the first hop is held, the center gets bytes of the bundle: the relay
            # forwards what it has (beyond the second hop's cut, so that hop resumed).
            at_center = until(lambda: (u := _upload(center, bid)) is not None
                              and u["offset"] > 400_000 and u, 300,
                              "the center to receive the bundle through the relay")
            at_relay = _upload(relay, bid)
            assert at_relay is not None and at_relay["state"] == "receiving"
            # not finalized at the relay: short of its length, or its length not declared
            # yet (length 0: the edge sent it while encoding it, routing/encoding.py)
            assert at_relay["length"] == 0 or at_relay["offset"] < at_relay["length"]
            assert at_center["offset"] <= at_relay["offset"]  # only what the relay committed
            assert second.connections >= 2  # the second hop was cut and resumed
            first.let_go()  # ... and the first hop is cut now, and resumes
            until(lambda: index_rows(edge, "SELECT 1 FROM cases WHERE case_id = ? AND state = "
                                   "'delivered'", (case["case_id"],)), 300,
                  "the relay's receipt at the edge")
            until(lambda: index_rows(center, "SELECT 1 FROM cases WHERE case_id = ? AND state = "
                                     "'received'", (case["case_id"],)), 300,
                  "the case at the center")
            until(lambda: index_rows(relay, "SELECT 1 FROM cases WHERE case_id = ? AND state = "
                                    "'delivered'", (case["case_id"],)), 300,
                  "the center's receipt at the relay")
            assert first.connections >= 2
            # Exactly once by bundle id, at both hops; every instance at the center.
            for node in (relay, center):
                u = _upload(node, bid)
                assert u is not None and u["state"] == "complete" and u["offset"] == u["length"]
            assert len(center.stored()) == len(files)
            forwarded = index_rows(relay, "SELECT detail FROM audit WHERE kind = 'forwarded' AND "
                                  "object = ?", (bid,))
            assert len(forwarded) == 1 and json.loads(forwarded[0]["detail"])["cut_through"]
            # The relay's receipt to the edge covers the whole bundle, as before.
            (r,) = index_rows(edge, "SELECT receipt_json FROM receipts WHERE bundle_id = ?", (bid,))
            receipt = json.loads(r["receipt_json"])
            assert receipt["receiver"] == "relay" and len(receipt["instances"]) == len(files)
    finally:
        first.stop()
        second.stop()
