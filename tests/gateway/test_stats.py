"""Statistics, fees and liability on hand-built stores with known answers."""

from __future__ import annotations

import datetime as dt
import doctest
import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fenji.gateway import config as config_mod
from fenji.gateway import reports
from fenji.gateway.audit import ledger, stats
from fenji.gateway.cases import gate as quality_gate
from fenji.gateway.keys import fingerprint
from fenji.gateway.store.db import Store

T0 = dt.datetime(2026, 11, 3, 8, 0, tzinfo=dt.UTC).timestamp()


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="milliseconds")


def _case(store: Store, cid: str, *, priority: str = "routine", service: str = "imaging",
          sending_node: str | None = None, released_at: float | None = T0,
          received_at: float | None = None, state: str = "released",
          read_state: str | None = None, claimed_by: str | None = None) -> None:
    with store.atomic() as con:
        con.execute("INSERT INTO cases(case_id, study_instance_uid, kind, priority, service, "
                    "destination, state, released_by, released_at, created_at, updated_at, "
                    "sending_node, received_at, read_state, claimed_by) VALUES "
                    "(?, ?, 'case', ?, ?, 'center', ?, 'cli', ?, ?, ?, ?, ?, ?, ?)",
                    (cid, f"1.2.826.0.1.3680043.8.498.{abs(hash(cid)) % 10**9}", priority,
                     service, state, released_at, released_at or received_at or T0,
                     released_at or T0, sending_node, received_at, read_state, claimed_by))


def _report(store: Store, cid: str, *, version: int = 1, signed_at: float,
            origin: str = "center", returned_at: float | None = None,
            received_at: float | None = None, reader: str = "dr.wang",
            supersedes: str | None = None, reason: str | None = None) -> str:
    rid = f"2.25.{uuid.uuid4().int}"
    doc = {"report_id": rid, "version": version, "case_id": cid, "reader": reader,
           "reader_display": "王医生", "center": origin, "signed_at": _iso(signed_at),
           "findings": "右肺下叶结节 8 mm", "impression": "随访", "critical": False,
           "supersedes": supersedes, "amendment_reason": reason}
    with store.atomic() as con:
        if supersedes:
            con.execute("UPDATE reports SET status = 'superseded', superseded_by = ? "
                        "WHERE report_id = ?", (rid, supersedes))
        con.execute("INSERT INTO reports(report_id, case_id, version, supersedes, status, "
                    "reader, signed_at, critical, amendment_reason, report_json, signature, "
                    "origin_node, returned_at, received_at, created_at) VALUES "
                    "(?, ?, ?, ?, 'current', ?, ?, 0, ?, ?, ?, ?, ?, ?, ?)",
                    (rid, cid, version, supersedes, reader, signed_at, reason,
                     json.dumps(doc, ensure_ascii=False), "00" * 64, origin, returned_at,
                     received_at, signed_at))
    return rid


def _event(store: Store, kind: str, cid: str, at: float, *, node: str = "center",
           actor: str = "dr.wang", role: str = "reader", **detail: Any) -> None:
    ledger.record(store, kind, node=node, actor=actor, role=role, obj=cid, case_id=cid,
                  detail=detail, at=at)


def center_store(root: Path) -> Store:
    """A center with cases from edge-a (imaging) and edge-b (ECG); known turnarounds.

    edge-a imaging STAT: 600, 900, 1200, 3000 s; routine: 3600, 7200 s; one
    routine case received, opened, not yet reported.  edge-b ECG urgent: 1800 s
    and one claimed, unreported; one edge-b case arrived after an override.
    """
    s = Store(root)
    tat = {"a1": ("stat", 600), "a2": ("stat", 900), "a3": ("stat", 1200),
           "a4": ("stat", 3000), "a5": ("routine", 3600), "a6": ("routine", 7200)}
    for i, (cid, (prio, t)) in enumerate(tat.items()):
        rel = T0 + 3600 * i
        _case(s, cid, priority=prio, sending_node="edge-a", released_at=rel,
              received_at=rel + 60, state="received", read_state="reported")
        _event(s, "arrived", cid, rel + 60, actor="edge-a", role="node")
        _event(s, "claimed", cid, rel + 120)
        _report(s, cid, signed_at=rel + t - 30, returned_at=rel + t)
    # a2 was amended (twice): two amendments, turnaround still from the first report.
    first = s.query_one("SELECT report_id FROM reports WHERE case_id = 'a2'")
    assert first is not None
    r2 = _report(s, "a2", version=2, signed_at=T0 + 7 * 86400, returned_at=T0 + 7 * 86400 + 5,
                 supersedes=first["report_id"], reason="measurement corrected")
    _report(s, "a2", version=3, signed_at=T0 + 8 * 86400, returned_at=T0 + 8 * 86400 + 5,
            supersedes=r2, reason="typo")
    _case(s, "a7", sending_node="edge-a", released_at=T0, received_at=T0 + 50,
          state="received", read_state="new")
    _event(s, "opened", "a7", T0 + 500, detail_via="wado-rs")
    _case(s, "b1", priority="urgent", service="ecg", sending_node="edge-b",
          released_at=T0 + 100, received_at=T0 + 160, state="received", read_state="reported")
    _report(s, "b1", signed_at=T0 + 1800, returned_at=T0 + 1900)
    _case(s, "b2", priority="urgent", service="ecg", sending_node="edge-b",
          released_at=T0 + 200, received_at=T0 + 260, state="received", read_state="claimed",
          claimed_by="dr.li")
    # b3: held at edge-b, overridden; the edge's events came with the case.
    _case(s, "b3", priority="routine", service="ecg", sending_node="edge-b",
          released_at=T0 + 400, received_at=T0 + 460, state="received", read_state="new")
    edge_b = Store(root.parent / "edge-b")
    _event(edge_b, "held", "b3", T0 + 300, node="edge-b", actor="tech", role="technician",
           reasons=["lead V3 off for 4.2 s"])
    _event(edge_b, "override", "b3", T0 + 400, node="edge-b", actor="tech",
           role="technician", reason="patient cannot be re-recorded")
    ledger.import_events(s, ledger.export_case(edge_b, "b3"), via="edge-b")
    edge_b.close()
    return s


def test_center_stats(tmp_path: Path) -> None:
    s = center_store(tmp_path / "center")
    doc = stats.stats(s, node="center", role="center")
    rows = {(r["hospital"], r["service"]): r for r in doc["rows"]}
    assert set(rows) == {("edge-a", "imaging"), ("edge-b", "ecg")}
    a = rows[("edge-a", "imaging")]
    assert (a["cases"], a["sent"], a["received"], a["read"], a["reported"]) == (7, 0, 7, 7, 6)
    assert (a["held"], a["overrides"], a["amendments"]) == (0, 0, 2)
    stat = a["turnaround"]["stat"]
    assert stat["n"] == 4 and stat["median_s"] == 1050.0 and stat["p90_s"] == pytest.approx(2460.0)
    routine = a["turnaround"]["routine"]
    assert routine == {"n": 2, "median_s": 5400.0, "p90_s": pytest.approx(6840.0)}
    b = rows[("edge-b", "ecg")]
    assert (b["cases"], b["received"], b["read"], b["reported"]) == (3, 3, 2, 1)
    assert (b["held"], b["overrides"], b["rejection_rate"]) == (1, 1, round(1 / 3, 4))
    assert b["turnaround"] == {"urgent": {"n": 1, "median_s": 1800.0, "p90_s": 1800.0}}
    assert doc["total"]["cases"] == 10 and doc["total"]["reported"] == 7
    # The window: only cases released from T0 + 2 h (a3..a6) on.
    win = stats.stats(s, node="center", role="center", since=T0 + 7200,
                      until=T0 + 86400)
    assert [(r["hospital"], r["cases"]) for r in win["rows"]] == [("edge-a", 4)]
    assert win["since"] == "2026-11-03T10:00:00Z"
    s.close()


def edge_store(root: Path) -> Store:
    """An edge's own cases: reports came back (received_at); one held and superseded."""
    s = Store(root)
    for cid, prio, back in (("e1", "stat", 1500), ("e2", "stat", 2500), ("e3", "routine", 9000)):
        _case(s, cid, priority=prio)
        _event(s, "released", cid, T0, node="edge", actor="tech", role="technician")
        _report(s, cid, signed_at=T0 + back - 100, received_at=T0 + back)
    _case(s, "e4", priority="routine", released_at=None, state="superseded")
    _event(s, "held", "e4", T0 - 600, node="edge", actor="tech", role="technician",
           reasons=["slice 17 missing"])
    _case(s, "e5", priority="urgent")  # released, nothing back yet
    return s


def test_edge_stats(tmp_path: Path) -> None:
    s = edge_store(tmp_path / "edge")
    doc = stats.stats(s, node="edge", role="edge")
    assert len(doc["rows"]) == 1
    r = doc["rows"][0]
    assert (r["hospital"], r["service"]) == ("edge", "imaging")
    assert (r["cases"], r["sent"], r["received"], r["reported"], r["held"]) == (5, 4, 0, 3, 1)
    assert r["rejection_rate"] == 0.2
    assert r["turnaround"]["stat"] == {"n": 2, "median_s": 2000.0, "p90_s": 2400.0}
    assert r["turnaround"]["routine"]["median_s"] == 9000.0
    s.close()


SERVICES = (config_mod.ServiceSection(name="imaging", price=80.0, currency="CNY",
                                      inviting_share=0.2),
            config_mod.ServiceSection(name="ecg", price=30.5, currency="CNY",
                                      inviting_share=0.2))


def fees_store(root: Path) -> Store:
    s = Store(root)
    nov = dt.datetime(2026, 11, 10, tzinfo=dt.UTC).timestamp()
    for cid in ("i1", "i2", "i3"):
        _case(s, cid, sending_node="edge-a", received_at=nov - 3600)
        _report(s, cid, signed_at=nov, returned_at=nov + 60)
    # Amended in December: counted once, in November.
    first = s.query_one("SELECT report_id FROM reports WHERE case_id = 'i1'")
    assert first is not None
    _report(s, "i1", version=2, signed_at=nov + 30 * 86400, supersedes=first["report_id"],
            reason="addendum")
    for cid in ("g1", "g2"):
        _case(s, cid, service="ecg", sending_node="edge-b", received_at=nov)
        _report(s, cid, signed_at=nov + 100)
    # First report in October (UTC), amended in November: October's.
    _case(s, "old", sending_node="edge-a", received_at=nov - 40 * 86400)
    r = _report(s, "old", signed_at=nov - 20 * 86400)
    _report(s, "old", version=2, signed_at=nov, supersedes=r, reason="late correction")
    # 2026-10-31 23:30 UTC is 1 November 07:30 in Shanghai.
    _case(s, "late", sending_node="edge-b", received_at=nov - 11 * 86400)
    _report(s, "late", signed_at=dt.datetime(2026, 10, 31, 23, 30,
                                             tzinfo=dt.UTC).timestamp())
    _case(s, "p1", service="pathology", sending_node="edge-a", received_at=nov)
    _report(s, "p1", signed_at=nov + 200)
    return s


def test_fees_split_and_unpriced_service(tmp_path: Path) -> None:
    s = fees_store(tmp_path / "center")
    doc = stats.fees(s, SERVICES, node="center", month="2026-11")
    rows = {(r["hospital"], r["service"]): r for r in doc["rows"]}
    img = rows[("edge-a", "imaging")]
    assert img["reported"] == 3 and img["cases"] == ["i1", "i2", "i3"]
    assert (img["fee_total"], img["inviting_amount"], img["invited_amount"]) == (240.0, 48.0,
                                                                                 192.0)
    ecg = rows[("edge-b", "ecg")]
    assert (ecg["reported"], ecg["fee_total"], ecg["inviting_amount"],
            ecg["invited_amount"]) == (2, 61.0, 12.2, 48.8)
    path = rows[("edge-a", "pathology")]
    assert path["price"] is None and path["fee_total"] is None
    assert doc["warnings"] == ["service 'pathology' is not in the service catalog "
                               "([[services]]): 1 reported case(s) from edge-a are not priced"]
    assert doc["totals"] == [{"currency": "CNY", "fee_total": 301.0, "inviting_amount": 60.2,
                              "invited_amount": 240.8}]
    # In Shanghai time the late-October report belongs to November.
    from zoneinfo import ZoneInfo

    sh = stats.fees(s, SERVICES, node="center", month="2026-11", tz=ZoneInfo("Asia/Shanghai"))
    assert {(r["hospital"], r["service"]): r["reported"] for r in sh["rows"]}[
        ("edge-b", "imaging")] == 1
    with pytest.raises(stats.StatsError, match="month = '2026-13' is not YYYY-MM"):
        stats.fees(s, SERVICES, node="center", month="2026-13")
    s.close()


# ---------------------------------------------------------------------------
# Liability: real signatures
# ---------------------------------------------------------------------------

EDGE_KEY = Ed25519PrivateKey.generate()
CENTER_KEY = Ed25519PrivateKey.generate()
READER_KEY = Ed25519PrivateKey.generate()


def liability_store(root: Path, edge_key: Ed25519PrivateKey = EDGE_KEY) -> tuple[Store, str]:
    """An edge case held for quality, overridden by tech, reported and amended by dr.wang."""
    s = Store(root)
    cid = "c-liab"
    _case(s, cid, priority="stat")
    qreport = {"verdict": quality_gate.UNACCEPTABLE,
               "reasons": ["lead V3 off for 4.2 s", "baseline wander 1.3 mV"]}
    _event(s, "held", cid, T0 - 300, node="edge", actor="tech", role="technician",
           reasons=qreport["reasons"])
    att = quality_gate.attest(qreport, case_id=cid, study_instance_uid="1.2.3", node="edge",
                              operator="tech", key=edge_key,
                              override_reason="patient cannot be re-recorded", now=T0)
    _event(s, "override", cid, T0, node="edge", actor="tech", role="technician",
           reason="patient cannot be re-recorded")
    with s.atomic() as con:
        con.execute("INSERT INTO quality(case_id, verdict, report_json, attestation_json, "
                    "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)",
                    (cid, qreport["verdict"], json.dumps(qreport), json.dumps(att), T0, T0))
    end = reports.endorse_reader(CENTER_KEY, "center", "dr.wang", "王医生", READER_KEY.public_key())
    prev = None
    for version, reason in ((1, None), (2, "size corrected to 9 mm")):
        doc = reports.build_report(
            case={"case_id": cid, "study_instance_uid": "1.2.3", "service": "ecg",
                  "priority": "stat", "sender": "edge"},
            manifest_sha256="ab" * 32, attestation=att,
            instances=[{"sop_class_uid": "1.2.840.10008.5.1.4.1.1.9.1.1",
                        "sop_instance_uid": "1.2.3.4", "series_instance_uid": "1.2.3.5"}],
            reader="dr.wang", reader_display="王医生", center="center",
            findings="ST elevation V2-V4", impression="STEMI", critical=True, version=version,
            supersedes=prev, amendment_reason=reason, signed_at=T0 + 600 * version)
        signed = reports.sign_report(doc, READER_KEY)
        report = signed["report"]
        with s.atomic() as con:
            if prev:
                con.execute("UPDATE reports SET status = 'superseded', superseded_by = ? "
                            "WHERE report_id = ?", (report["report_id"], prev))
            con.execute("INSERT INTO reports(report_id, case_id, version, supersedes, status, "
                        "reader, signed_at, critical, amendment_reason, report_json, "
                        "signature, endorsement_json, origin_node, received_at, created_at) "
                        "VALUES (?, ?, ?, ?, 'current', 'dr.wang', ?, 1, ?, ?, ?, ?, 'center', "
                        "?, ?)",
                        (report["report_id"], cid, version, prev, T0 + 700 * version, reason,
                         json.dumps(report, ensure_ascii=False), signed["signature"],
                         json.dumps(end), T0 + 700 * version, T0 + 700 * version))
        prev = report["report_id"]
    return s, cid


TRUSTED = {"edge": EDGE_KEY.public_key(), "center": CENTER_KEY.public_key()}


def test_liability_shows_override_and_report_versions(tmp_path: Path) -> None:
    s, cid = liability_store(tmp_path / "edge")
    doc = stats.liability(s, cid, trusted=TRUSTED)
    dq = doc["data_quality"]
    assert dq["node"] == "edge" and dq["operator"] == "tech" and dq["verdict"] == "unacceptable"
    assert dq["signature_valid"] is True and dq["signature"] == "valid (key of edge)"
    assert dq["overrides"] == [{"operator": "tech", "role": "technician", "node": "edge",
                                "at": "2026-11-03T08:00:00Z",
                                "reason": "patient cannot be re-recorded"}]
    assert dq["holds"][0]["reasons"] == ["lead V3 off for 4.2 s", "baseline wander 1.3 mV"]
    v1, v2 = doc["report_content"]
    assert (v1["version"], v1["status"], v2["version"], v2["status"]) == (1, "superseded", 2,
                                                                          "current")
    assert v2["supersedes"] == v1["report_id"] and v2["amendment_reason"] == \
        "size corrected to 9 mm"
    assert v2["reader"] == "dr.wang" and v2["reader_display"] == "王医生"
    assert v2["signature_valid"] is True and v2["endorsed_by"] == "center"
    assert v2["binds_attestation"] is True
    # Without the edge's key the attestation is unchecked, not valid.
    un = stats.liability(s, cid, trusted={"center": CENTER_KEY.public_key()})
    assert un["data_quality"]["signature_valid"] is None
    assert un["data_quality"]["signature"].startswith("unchecked: no key for node 'edge'")
    # A changed attestation or report no longer verifies.
    with s.atomic() as con:
        att = json.loads(con.execute("SELECT attestation_json FROM quality").fetchone()[0])
        att["verdict"] = "acceptable"
        con.execute("UPDATE quality SET attestation_json = ?", (json.dumps(att),))
        con.execute("UPDATE reports SET report_json = replace(report_json, 'STEMI', 'normal') "
                    "WHERE version = 2")
    bad = stats.liability(s, cid, trusted=TRUSTED)
    assert bad["data_quality"]["signature_valid"] is False
    assert bad["report_content"][1]["signature_valid"] is False
    assert any("reader signature" in p for p in bad["report_content"][1]["problems"])
    with pytest.raises(stats.StatsError, match="no case 'nope'"):
        stats.liability(s, "nope", trusted=TRUSTED)
    s.close()


def test_doctests() -> None:
    assert doctest.testmod(stats).failed == 0


# ---------------------------------------------------------------------------
# CLI, as real processes on node directories
# ---------------------------------------------------------------------------

def _node(tmp_path: Path, name: str, role: str, extra: str = "") -> Path:
    from fenji.gateway.cli.init import init_node

    conf = init_node(tmp_path / name, role=role, name=name, allow_ae=["*"])
    if extra:
        conf.write_text(conf.read_text() + extra)
    return conf


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fenji.gateway.cli.main", *args],
                          capture_output=True, text=True, timeout=120, check=False)


def test_stats_and_fees_cli(tmp_path: Path) -> None:
    conf = _node(tmp_path, "center", "center", """
[[services]]
name = "imaging"
price = 80.0
inviting_share = 0.2

[[services]]
name = "ecg"
price = 30.5
""")
    cfg = config_mod.load(conf)
    fees_store(cfg.store_dir).close()
    st = _cli("stats", "--config", str(conf), "--json")
    assert st.returncode == 0, st.stderr
    doc = json.loads(st.stdout)
    assert doc["role"] == "center" and doc["total"]["reported"] == 8
    text = _cli("stats", "--config", str(conf), "--since", "2026-11-01")
    assert text.returncode == 0 and "edge-a" in text.stdout and "TOTAL" in text.stdout
    badt = _cli("stats", "--config", str(conf), "--since", "yesterday")
    assert badt.returncode == 2 and "--since = 'yesterday' is not an ISO 8601" in badt.stderr

    fj = _cli("ledger", "fees", "--month", "2026-11", "--config", str(conf), "--json")
    assert fj.returncode == 1  # pathology is not in the catalog
    assert "WARNING: service 'pathology' is not in the service catalog" in fj.stderr
    fees = json.loads(fj.stdout)
    img = next(r for r in fees["rows"] if r["service"] == "imaging")
    assert (img["inviting_amount"], img["invited_amount"]) == (48.0, 192.0)
    ft = _cli("ledger", "fees", "--month", "2026-10", "--config", str(conf))
    assert ft.returncode == 0, ft.stderr
    assert "(2:8)" in ft.stdout and "edge-a" in ft.stdout


def test_liability_cli(tmp_path: Path) -> None:
    from fenji.gateway.keys import load_private

    conf = _node(tmp_path, "edge", "edge", f"""
[[known_nodes]]
name = "center"
public_key = "{fingerprint(CENTER_KEY.public_key())}"
""")
    cfg = config_mod.load(conf)
    # The attestation is signed with this node's own key.
    s, cid = liability_store(cfg.store_dir, load_private(cfg.resolve(cfg.keys.private_key)))
    s.close()
    li = _cli("liability", cid, "--config", str(conf), "--json")
    assert li.returncode == 0, li.stdout + li.stderr
    doc = json.loads(li.stdout)
    assert doc["data_quality"]["signature"] == "valid (key of edge)"
    assert [r["version"] for r in doc["report_content"]] == [1, 2]
    text = _cli("liability", cid, "--config", str(conf))
    assert text.returncode == 0
    assert "tech: 'patient cannot be re-recorded'" in text.stdout
    assert "version 2, supersedes" in text.stdout and "dr.wang (王医生)" in text.stdout
    missing = _cli("liability", "nope", "--config", str(conf))
    assert missing.returncode == 2 and "no case 'nope'" in missing.stderr
