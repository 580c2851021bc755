"""The worklist and claims on a real store (no node process needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fenji.gateway import config as config_mod
from fenji.gateway import reading
from fenji.gateway.access.users import User
from fenji.gateway.audit import ledger
from fenji.gateway.store.db import Store

READER = User("dr.wang", "reader", ("imaging",))
OTHER = User("dr.li", "reader", ("imaging",))
ECG = User("dr.ecg", "reader", ("ecg",))
TECH = User("tech", "technician")


def _cfg() -> config_mod.Config:
    return config_mod.from_mapping({"node": {"name": "center", "role": "center"},
                                    "dicom": {"allow_ae": ["*"]},
                                    "reading": {"claim_ttl_s": 60}}, env={})


def _case(store: Store, case_id: str, priority: str, received_at: float,
          service: str = "imaging") -> None:
    with store.atomic() as con:
        con.execute("INSERT INTO cases(case_id, study_instance_uid, kind, priority, service, "
                    "destination, state, created_at, updated_at, sending_node, received_at, "
                    "read_state) VALUES (?, ?, 'case', ?, ?, 'center', 'received', ?, ?, "
                    "'edge', ?, 'new')", (case_id, "1.2." + case_id, priority, service,
                                          received_at, received_at, received_at))


@pytest.fixture()
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "store")
    _case(s, "a", "routine", 100.0)
    _case(s, "b", "stat", 500.0)
    _case(s, "c", "routine", 50.0)
    _case(s, "d", "urgent", 900.0)
    _case(s, "e", "stat", 800.0, service="ecg")
    return s


def test_worklist_is_stat_first_then_longest_waiting(store: Store) -> None:
    rows = reading.worklist(store, _cfg(), now=1000.0)
    assert [r["case_id"] for r in rows] == ["b", "e", "d", "c", "a"]
    assert rows[0]["waiting_s"] == 500.0 and rows[0]["sending_hospital"] == "edge"
    # A reader sees the services they read.
    assert [r["case_id"] for r in reading.worklist(store, _cfg(), user=ECG, now=1000.0)] == ["e"]
    assert "e" not in {r["case_id"] for r in reading.worklist(store, _cfg(), user=READER,
                                                               now=1000.0)}


def test_claims_conflict_expire_and_are_audited(store: Store) -> None:
    cfg = _cfg()
    out = reading.claim(store, cfg, "b", READER, now=1000.0)
    assert out["claimed_until"] == 1060.0
    with pytest.raises(reading.ReadingError, match="claimed by dr.wang"):
        reading.claim(store, cfg, "b", OTHER, now=1010.0)
    with pytest.raises(reading.Forbidden, match="not 'ecg'"):
        reading.claim(store, cfg, "e", READER, now=1010.0)
    with pytest.raises(reading.Forbidden, match="technician"):
        reading.claim(store, cfg, "a", TECH, now=1010.0)
    with pytest.raises(reading.NotFound):
        reading.claim(store, cfg, "nope", READER, now=1010.0)
    # Unused past the TTL: back in the pool, and another reader may take it.
    rows = reading.worklist(store, cfg, now=1061.0)
    assert next(r for r in rows if r["case_id"] == "b")["state"] == "new"
    assert reading.claim(store, cfg, "b", OTHER, now=1062.0)["claimed_by"] == "dr.li"
    kinds = [(e["kind"], e["actor"]) for e in ledger.events(store, case_id="b")]
    assert kinds == [("claimed", "dr.wang"), ("unclaimed", "dr.wang"), ("claimed", "dr.li")]


def test_report_needs_a_claim_and_an_amendment_a_reason(store: Store) -> None:
    cfg = _cfg()
    with pytest.raises(reading.ReadingError, match="claim it first"):
        reading.submit_report(store, cfg, "a", READER, findings="f", impression="i", now=1.0)
    with pytest.raises(reading.ReadingError, match="no report to amend"):
        reading.submit_report(store, cfg, "a", READER, findings="f", impression="i",
                              amendment_reason="typo", now=1.0)
    with pytest.raises(reading.Forbidden):
        reading.submit_report(store, cfg, "a", TECH, findings="f", impression="i", now=1.0)
    reading.claim(store, cfg, "a", READER, now=1.0)
    with pytest.raises(reading.ReadingError, match="empty"):
        reading.submit_report(store, cfg, "a", READER, findings=" ", impression="", now=2.0)
