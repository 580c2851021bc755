"""What the sender's events do to a case's state (reading/delivery.py), and a restarted
node's stale outbox leases (node.return_stale_leases), on a real store."""

from __future__ import annotations

from pathlib import Path

import pytest

from fenji.gateway import config as config_mod
from fenji.gateway.node import return_stale_leases
from fenji.gateway.reading.delivery import NodeEvents
from fenji.gateway.store.db import Store
from fenji.routing import outbox_db
from fenji.routing.outbox import OutboxPolicy
from fenji.routing.transfer_client import Delivered


def _store(tmp_path: Path, state: str = "released") -> Store:
    s = Store(tmp_path / "s")
    with s.atomic() as con:
        con.execute("INSERT INTO cases(case_id, study_instance_uid, kind, priority, service, "
                    "destination, state, created_at, updated_at) VALUES "
                    "('c1', '1.2.3', 'case', 'stat', 'imaging', 'center', ?, 0, 0)", (state,))
    return s


def _events(s: Store) -> NodeEvents:
    cfg = config_mod.from_mapping({"node": {"name": "edge"}, "dicom": {"allow_ae": ["*"]}},
                                  env={})
    return NodeEvents(cfg, s)


def _receipt(s: Store, ev: NodeEvents, bundle: str, instances: int, now: float) -> None:
    out = Delivered({"instances": [{"sop_instance_uid": f"1.{i}"} for i in range(instances)]},
                    "sig", "center", 10, 0.1)
    job = {"case_id": "c1", "bundle_id": bundle, "destination": "center"}
    with s.atomic() as con:
        ev.receipt(con, job, out, True, now)


def _state(s: Store) -> str:
    row = s.query_one("SELECT state FROM cases WHERE case_id = 'c1'")
    assert row is not None
    return str(row["state"])


def test_sent_then_only_the_full_bundles_receipt_delivers(tmp_path: Path) -> None:
    s = _store(tmp_path)
    ev = _events(s)
    ev.sent({"case_id": "c1", "bundle_id": "p1", "destination": "center"}, 1.0, 100)
    assert _state(s) == "sent"
    _receipt(s, ev, "p1", 0, 2.0)  # the STAT preview: no instances
    assert _state(s) == "sent"
    _receipt(s, ev, "b1", 4, 3.0)
    assert _state(s) == "delivered"
    s.close()


@pytest.mark.parametrize("state", ["reported", "amended", "acknowledged"])
def test_a_late_receipt_never_moves_a_case_back(tmp_path: Path, state: str) -> None:
    s = _store(tmp_path, state)
    ev = _events(s)
    ev.sent({"case_id": "c1", "bundle_id": "b1", "destination": "center"}, 1.0, 100)
    _receipt(s, ev, "b1", 4, 2.0)
    assert _state(s) == state
    s.close()


def test_a_receipt_for_a_held_case_is_kept_and_moves_nothing(tmp_path: Path) -> None:
    s = _store(tmp_path, "held")
    _receipt(s, _events(s), "b1", 4, 2.0)
    assert _state(s) == "held"
    assert s.query("SELECT kind FROM audit WHERE kind = 'receipt'") == [{"kind": "receipt"}]
    s.close()


def test_a_restarted_node_gives_back_its_dead_processs_leases(tmp_path: Path) -> None:
    s = Store(tmp_path / "s")
    policy = OutboxPolicy()
    outbox_db.enqueue(s, "b1", "c1", "center", 0, 100, 1.0)
    job = outbox_db.claim(s, "edge:4242", 2.0, policy)
    assert job is not None
    assert outbox_db.claim(s, "edge:4343", 3.0, policy) is None  # leased until 62.0
    assert return_stale_leases(s, 3.0) == 1
    again = outbox_db.claim(s, "edge:4343", 3.0, policy)  # at once, not after lease_s
    assert again is not None and again["job_id"] == job["job_id"]
    s.close()
