"""The schema the append-only migrations build, as a new store sees it."""

from __future__ import annotations

from pathlib import Path

from fenji.gateway.store.db import Store

EVENT = ["at", "kind", "actor", "role", "object", "case_id", "detail", "prev_hash", "hash"]


def test_ledger_tables_keep_their_columns_in_order(tmp_path: Path) -> None:
    """audit and audit_foreign share their event columns (migrations.EVENT_COLUMNS);
    rows are read by position, so names and order are pinned here."""
    store = Store(tmp_path / "store")
    try:
        cols = {t: [(r["name"], r["type"], r["notnull"]) for r in
                    store.query(f"PRAGMA table_info({t})")] for t in ("audit", "audit_foreign")}
    finally:
        store.close()
    assert [c[0] for c in cols["audit"]] == ["seq", "node", *EVENT]
    assert [c[0] for c in cols["audit_foreign"]] == ["node", "seq", *EVENT, "via", "imported_at"]
    event_types = [c[1:] for c in cols["audit"][2:]]
    assert event_types == [c[1:] for c in cols["audit_foreign"][2:11]]
    assert ("TEXT", 0) == cols["audit"][7][1:]  # case_id may be NULL
