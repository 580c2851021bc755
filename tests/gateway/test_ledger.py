"""The audit ledger: tampering named by verify, cross-node history, the audit CLI.

Tampering is done the way an intruder would: straight into the SQLite file
with the ``sqlite3`` module, the node's store closed.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fenji.gateway.audit import ledger
from fenji.gateway.store.db import Store

KEY = Ed25519PrivateKey.generate()
T0 = 1_790_000_000.0  # 2026-09-21, a plausible clock


def _fill(store: Store, n: int = 10, node: str = "edge") -> list[dict[str, Any]]:
    kinds = ["received", "quality_verdict", "released", "receipt", "report_arrived",
             "critical", "delivered", "acknowledged", "opened", "received"]
    out = []
    for i in range(n):
        out.append(ledger.record(store, kinds[i % len(kinds)], node=node,
                                 actor="tech" if i % 2 else "CT1", role="technician",
                                 obj=f"obj-{i}", case_id="case-1" if i % 3 else "case-2",
                                 detail={"i": i, "note": "导联脱落" if i == 4 else ""},
                                 at=T0 + 60 * i))
    return out


@pytest.fixture()
def signed(tmp_path: Path) -> Path:
    """A closed store with ten signed events; returns its root."""
    store = Store(tmp_path / "store")
    ledger.set_signer(store, "edge", KEY)
    _fill(store)
    store.close()
    return tmp_path / "store"


def _tamper(root: Path, *sql: tuple[str, tuple[Any, ...] | dict[str, Any]]) -> None:
    con = sqlite3.connect(root / "index.sqlite")
    for stmt, args in sql:
        con.execute(stmt, args)
    con.commit()
    con.close()


def _verify(root: Path) -> ledger.VerifyResult:
    store = Store(root)
    try:
        return ledger.verify(store, public_key=KEY.public_key())
    finally:
        store.close()


def _event(root: Path, seq: int) -> dict[str, Any]:
    """Event ``seq`` as stored; the store is closed again before the intruder's turn."""
    store = Store(root)
    try:
        row = store.query_one("SELECT * FROM audit WHERE seq = ?", (seq,))
    finally:
        store.close()
    assert row is not None, f"no event {seq} in {root}"
    return row


def _forged_after(prev: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """A well-formed edge event linking to ``prev`` (next seq, a second later), hashed right."""
    forged = {"seq": prev["seq"] + 1, "node": "edge", "at": prev["at"] + 1,
              "case_id": "case-1", "detail": "{}", "prev_hash": prev["hash"], **fields}
    forged["hash"] = ledger.event_hash(forged)
    return forged


def _kinds(res: ledger.VerifyResult) -> list[tuple[str, int | None]]:
    return [(p.kind, p.seq) for p in res.problems]


def test_intact_signed_chain_verifies(signed: Path) -> None:
    res = _verify(signed)
    assert res.ok, res.problems
    assert res.n_events == 10 and res.last_seq == 10 and res.head is not None
    assert res.head["seq"] == 10


@pytest.mark.parametrize(("sql", "problem", "start", "also"), [
    pytest.param("UPDATE audit SET actor = 'nobody' WHERE seq = 7", ("edited", 7),
                 "event 7 (kind=delivered, actor=nobody, case=case-2) was edited: stored hash ",
                 ("!= computed",), id="edited"),
    pytest.param("DELETE FROM audit WHERE seq = 5", ("deleted", 5),
                 "event 5 was deleted: seq jumps from 4 to 6 and event 6's prev_hash ",
                 (), id="deleted-middle"),
    pytest.param("DELETE FROM audit WHERE seq >= 8", ("truncated", 8),
                 "events 8–10 were deleted from the end of the chain: the signed head "
                 "names event 10", ("the newest event is 7",), id="truncated"),
])
def test_one_tampering_is_named_alone(signed: Path, sql: str, problem: tuple[str, int],
                                      start: str, also: tuple[str, ...]) -> None:
    _tamper(signed, (sql, ()))
    res = _verify(signed)
    assert _kinds(res) == [problem]
    msg = res.problems[0].message
    assert msg.startswith(start)
    for part in also:
        assert part in msg


def test_edited_and_rehashed_event_is_named(signed: Path) -> None:
    row = _event(signed, 4)
    row["detail"] = json.dumps({"i": 3, "note": "changed"})
    new_hash = ledger.event_hash(row)
    _tamper(signed, ("UPDATE audit SET detail = ?, hash = ? WHERE seq = 4",
                     (row["detail"], new_hash)))
    res = _verify(signed)
    assert ("edited", 4) in _kinds(res)
    assert any("event 4 (kind=receipt" in p.message and "hash recomputed" in p.message
               for p in res.problems)


def test_inserted_event_is_named(signed: Path) -> None:
    """An intruder makes room at seq 6 and inserts a well-formed event linking to 5."""
    forged = _forged_after(_event(signed, 5), kind="override", actor="mallory",
                           role="technician", object="case-1")
    _tamper(signed,
            ("UPDATE audit SET seq = seq + 1000 WHERE seq >= 6", ()),
            ("UPDATE audit SET seq = seq - 999 WHERE seq >= 1006", ()),
            ("INSERT INTO audit(seq, node, at, kind, actor, role, object, case_id, detail, "
             "prev_hash, hash) VALUES (:seq, :node, :at, :kind, :actor, :role, :object, "
             ":case_id, :detail, :prev_hash, :hash)", forged))
    res = _verify(signed)
    kinds = _kinds(res)
    assert ("inserted", 6) in kinds
    ins = next(p for p in res.problems if p.kind == "inserted")
    assert ins.message.startswith("event 6 (kind=override, actor=mallory, case=case-1) was "
                                  "inserted: event 7 links past it to event 5")
    assert ("renumbered", 7) in kinds  # the genuine events 6-10, now 7-11
    assert any(p.kind == "rewritten" for p in res.problems)  # head seq 10 is another event now
    assert not any(p.kind == "edited" for p in res.problems)


def test_inserted_event_at_the_end_is_an_unsigned_tail(signed: Path) -> None:
    forged = _forged_after(_event(signed, 10), kind="acknowledged", actor="mallory",
                           role="physician", object="r1")
    _tamper(signed, ("INSERT INTO audit VALUES (:seq, :node, :at, :kind, :actor, :role, "
                     ":object, :case_id, :detail, :prev_hash, :hash)", forged))
    res = _verify(signed)
    assert _kinds(res) == [("unsigned", 11)]
    assert "event 11 was appended after the signed head (event 10)" in res.problems[0].message


def test_deleted_events_with_renumbering_are_named(signed: Path) -> None:
    _tamper(signed, ("DELETE FROM audit WHERE seq IN (5, 6)", ()),
            ("UPDATE audit SET seq = seq - 2 WHERE seq > 6", ()))
    res = _verify(signed)
    kinds = _kinds(res)
    assert ("deleted", 5) in kinds and ("renumbered", 5) in kinds
    assert any("2 event(s) between event 4 and event 5" in p.message for p in res.problems)
    assert any(p.kind == "truncated" for p in res.problems)  # the head names seq 10


@pytest.mark.parametrize(("head_sql", "needle"), [
    pytest.param("DELETE FROM audit_head", "no signed head", id="head-deleted"),
    pytest.param("UPDATE audit_head SET seq = 7, hash = (SELECT hash FROM audit WHERE seq = 7)",
                 "does not verify with node key", id="head-forged"),
])
def test_truncation_with_the_head_deleted_or_forged(signed: Path, head_sql: str,
                                                    needle: str) -> None:
    _tamper(signed, ("DELETE FROM audit WHERE seq >= 8", ()), (head_sql, ()))
    res = _verify(signed)
    assert [p.kind for p in res.problems] == ["head"]
    assert needle in res.problems[0].message


def test_unsigned_store_is_ok_with_a_note(tmp_path: Path) -> None:
    store = Store(tmp_path / "s")
    _fill(store, 3)
    ledger.record(store, "opened", node="edge", actor="dr.ma", role="physician", obj="y",
                  at=1_790_000_000)  # an int time reads back as REAL: still verifies
    res = ledger.verify(store)
    assert res.ok and res.notes and "no signed head" in res.notes[0]
    # Once a key is registered the head covers everything before it.
    ledger.set_signer(store, "edge", KEY)
    ledger.record(store, "opened", node="edge", actor="dr.ma", role="physician", obj="x")
    assert ledger.verify(store).ok
    ledger.set_signer(store, "edge", None)
    store.close()


# ---------------------------------------------------------------------------
# Cross-node history
# ---------------------------------------------------------------------------

def test_case_history_travels_and_merges(tmp_path: Path) -> None:
    edge, center = Store(tmp_path / "edge"), Store(tmp_path / "center")
    ledger.record(edge, "released", node="edge", actor="tech", role="technician",
                  obj="c1", case_id="c1", at=T0)
    ledger.record(edge, "released", node="edge", actor="tech", role="technician",
                  obj="c2", case_id="c2", at=T0 + 1)
    ledger.record(center, "arrived", node="center", actor="edge", role="node", obj="b1",
                  case_id="c1", at=T0 + 30)
    out = ledger.export_case(edge, "c1")
    assert [e["kind"] for e in out] == ["released"] and out[0]["node"] == "edge"
    assert ledger.import_events(center, json.loads(json.dumps(out)), via="edge") == 1
    assert ledger.import_events(center, out, via="edge") == 0  # idempotent
    ledger.record(center, "claimed", node="center", actor="dr.wang", role="reader",
                  obj="c1", case_id="c1", at=T0 + 100)
    back = ledger.export_case(center, "c1")
    assert [(e["node"], e["kind"]) for e in back] == [
        ("edge", "released"), ("center", "arrived"), ("center", "claimed")]
    # The edge's own event comes back and is skipped; the center's are kept.
    assert ledger.import_events(edge, back, via="center") == 2
    hist = ledger.case_history(edge, "c1")
    assert [(e["node"], e["kind"], e["origin"]) for e in hist] == [
        ("edge", "released", "local"), ("center", "arrived", "foreign"),
        ("center", "claimed", "foreign")]
    assert hist[1]["via"] == "center"
    assert ledger.verify(edge).ok and ledger.verify(center).ok
    edge.close()
    center.close()


def test_import_refuses_a_tampered_event(tmp_path: Path) -> None:
    src, dst = Store(tmp_path / "a"), Store(tmp_path / "b")
    for i in range(3):
        ledger.record(src, "opened", node="center", actor="dr.wang", role="reader",
                      obj=f"study-{i}", case_id="c1", at=T0 + i)
    out = ledger.export_case(src, "c1")
    out[1]["actor"] = "dr.nobody"
    with pytest.raises(ledger.TamperedEvent) as exc:
        ledger.import_events(dst, out, via="relay")
    assert exc.value.events == ["center#2"]
    assert "event center#2 (kind=opened, actor=dr.nobody, case=c1)" in str(exc.value)
    assert "from relay were changed" in str(exc.value)
    assert ledger.foreign_events(dst) == []  # all or nothing
    # A forged event for a position already held is a conflict.
    good = ledger.export_case(src, "c1")
    assert ledger.import_events(dst, good, via="center") == 3
    forged = dict(good[0], actor="dr.other")
    forged["hash"] = ledger.event_hash(forged)
    with pytest.raises(ledger.ConflictingEvent, match=r"center#1 .* already held"):
        ledger.import_events(dst, [forged], via="relay")
    with pytest.raises(ledger.MalformedEvent, match=r"events\[0\] lacks hash"):
        ledger.import_events(dst, [{k: v for k, v in good[0].items() if k != "hash"}],
                             via="relay")
    # A held foreign event edited in place is named by verify.
    dst.close()
    _tamper(tmp_path / "b", ("UPDATE audit_foreign SET actor = 'x' WHERE seq = 2", ()))
    dst = Store(tmp_path / "b")
    res = ledger.verify(dst)
    assert [p.kind for p in res.problems] == ["foreign"]
    assert "foreign event center#2 (kind=opened, actor=x, case=c1, via center) was edited" \
        in res.problems[0].message
    src.close()
    dst.close()


# ---------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------

def _node(tmp_path: Path, name: str = "edge", role: str = "edge") -> Path:
    from fenji.gateway.cli.init import init_node

    return init_node(tmp_path / name, role=role, name=name, allow_ae=["*"])


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fenji.gateway.cli.main", *args],
                          capture_output=True, text=True, timeout=120, check=False)


def test_audit_cli_ls_and_verify_exit_codes(tmp_path: Path) -> None:
    from fenji.gateway import config as config_mod
    from fenji.gateway.keys import load_private

    conf = _node(tmp_path)
    cfg = config_mod.load(conf)
    store = Store(cfg.store_dir)
    ledger.set_signer(store, "edge", load_private(cfg.resolve(cfg.keys.private_key)))
    _fill(store, 6)
    store.close()

    ls = _cli("audit", "ls", "--case", "case-1", "--config", str(conf), "--json")
    assert ls.returncode == 0, ls.stderr
    rows = json.loads(ls.stdout)
    assert [e["seq"] for e in rows] == [2, 3, 5, 6] and {e["node"] for e in rows} == {"edge"}
    text = _cli("audit", "ls", "--config", str(conf), "--kind", "released")
    assert text.returncode == 0 and "released" in text.stdout and "edge" in text.stdout
    bad = _cli("audit", "ls", "--config", str(conf), "--kind", "nonsense")
    assert bad.returncode == 2 and "unknown event kind 'nonsense'" in bad.stderr

    ok = _cli("audit", "verify", "--config", str(conf))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "6 events" in ok.stdout and "signed head" in ok.stdout

    _tamper(cfg.store_dir, ("UPDATE audit SET kind = 'held' WHERE seq = 2", ()),
            ("DELETE FROM audit WHERE seq = 6", ()))
    v = _cli("audit", "verify", "--config", str(conf))
    assert v.returncode == 1
    assert "event 2 (kind=held, actor=tech, case=case-1) was edited" in v.stdout
    assert "event 6 was deleted from the end of the chain" in v.stdout
    vj = _cli("audit", "verify", "--config", str(conf), "--json")
    assert vj.returncode == 1
    doc = json.loads(vj.stdout)
    assert doc["ok"] is False and [p["kind"] for p in doc["problems"]] == ["edited",
                                                                          "truncated"]


def test_deleted_oldest_events_are_named(signed: Path) -> None:
    _tamper(signed, ("DELETE FROM audit WHERE seq <= 2", ()))
    res = _verify(signed)
    assert _kinds(res) == [("deleted", 3)]
    assert res.problems[0].message.startswith("events 1–2 were deleted: the oldest remaining "
                                              "event 3 (kind=released")


def test_rehashed_tail_is_named_by_the_signed_head(signed: Path) -> None:
    """An intruder edits event 8 and recomputes every hash after it: only the head can tell."""
    store = Store(signed)
    rows = store.query("SELECT * FROM audit WHERE seq >= 7 ORDER BY seq")
    store.close()
    updates = []
    prev = rows[0]["hash"]
    for r in rows[1:]:
        if r["seq"] == 8:
            r["actor"] = "mallory"
        r["prev_hash"] = prev
        r["hash"] = prev = ledger.event_hash(r)
        updates.append(("UPDATE audit SET actor = ?, prev_hash = ?, hash = ? WHERE seq = ?",
                        (r["actor"], r["prev_hash"], r["hash"], r["seq"])))
    _tamper(signed, *updates)
    res = _verify(signed)
    assert _kinds(res) == [("rewritten", 10)]
    assert res.problems[0].message.startswith("the chain was rewritten: the signed head says "
                                              "event 10 has hash ")


def test_verify_while_the_node_appends(tmp_path: Path) -> None:
    """A verify racing appends sees a chain and head of the same moment: no false truncation."""
    import threading

    store = Store(tmp_path / "s")
    ledger.set_signer(store, "edge", KEY)
    done = threading.Event()

    def append() -> None:
        try:
            for i in range(300):
                ledger.record(store, "opened", node="edge", actor="dr.wang", role="reader",
                              obj=f"study-{i}", case_id="c1")
        finally:
            done.set()

    t = threading.Thread(target=append)
    t.start()
    results: list[ledger.VerifyResult] = []
    while not done.is_set() or not results:
        results.append(ledger.verify(store, public_key=KEY.public_key()))
    t.join(timeout=60)
    assert all(r.ok for r in results), [r.problems for r in results if not r.ok][:1]
    final = ledger.verify(store, public_key=KEY.public_key())
    assert final.ok and final.n_events == 300
    store.close()
