"""Foreign audit events are kept only with their author's signature (issue 17, finding 2).

A bundle carries the case's history.  Before, a relay (or anyone who could
send a bundle) could put a `reported` event "by a reader of the center" in it:
the event hashed right, was imported, and `audit verify` said OK.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fenji.gateway.audit import ledger
from fenji.gateway.store.db import Store

T0 = 1_790_000_000.0
EDGE, CENTER, RELAY = (Ed25519PrivateKey.generate() for _ in range(3))


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[tuple[Store, Store]]:
    """An edge's and a center's store, each signing its own events; closed afterwards."""
    edge, center = Store(tmp_path / "edge"), Store(tmp_path / "center")
    ledger.set_signer(edge, "edge", EDGE)
    ledger.set_signer(center, "center", CENTER)
    try:
        yield edge, center
    finally:
        edge.close()
        center.close()


def _released_history(edge: Store) -> list[dict[str, Any]]:
    """Case c1's history as the edge exports it after recording its release."""
    ledger.record(edge, "released", node="edge", actor="tech", role="technician",
                  obj="c1", case_id="c1", at=T0)
    return ledger.export_case(edge, "c1")


def test_signed_history_is_kept_and_verifies(stores: tuple[Store, Store]) -> None:
    edge, center = stores
    out = _released_history(edge)
    assert out[0]["sig"]
    trusted = {"edge": EDGE.public_key(), "center": CENTER.public_key()}
    assert ledger.import_events(center, out, via="edge", trusted=trusted) == 1
    assert ledger.verify(center, trusted=trusted).ok
    # It travels on with its signature (center -> edge round trip of the history).
    again = ledger.export_case(center, "c1")
    assert [e.get("sig") for e in again if e["node"] == "edge"] == [out[0]["sig"]]


def test_an_event_made_up_in_anothers_name_is_refused(stores: tuple[Store, Store]) -> None:
    edge, _center = stores
    trusted = {"edge": EDGE.public_key(), "center": CENTER.public_key(),
               "relay": RELAY.public_key()}
    forged: dict[str, Any] = {"seq": 7, "node": "center", "at": T0 + 5, "kind": "reported",
                              "actor": "dr.wang", "role": "reader", "object": "r1",
                              "case_id": "c1", "detail": {"text": "normal"},
                              "prev_hash": "0" * 64}
    forged["hash"] = ledger.event_hash(forged)  # hashes right: the old check passed it
    for sig in (None, ledger.event_signature(RELAY, forged["hash"])):
        evt = dict(forged, **({"sig": sig} if sig else {}))
        with pytest.raises(ledger.ForgedEvent, match=r"center#7 \(kind=reported"):
            ledger.import_events(edge, [evt], via="relay", trusted=trusted)
    assert ledger.foreign_events(edge) == []
    # Held without a valid signature (an old store, or written straight into the
    # database), it is named by verify.
    ledger.import_events(edge, [forged], via="relay")  # no trust given: the old path
    res = ledger.verify(edge, trusted=trusted)
    assert not res.ok
    assert any("center#7" in p.message and "forged or unverifiable" in p.message
               for p in res.problems)


def test_events_of_an_unknown_node_are_left_out(stores: tuple[Store, Store]) -> None:
    edge, center = stores
    out = _released_history(edge)
    assert ledger.import_events(center, out, via="edge",
                                trusted={"center": CENTER.public_key()}) == 0
    assert ledger.foreign_events(center) == []


def test_an_attestation_is_called_signed_only_when_it_verifies(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json
    import sqlite3

    import pydicom
    from _data import ct_series

    from fenji.gateway.lab.harness import NodeProcess

    edge = NodeProcess(tmp_path / "edge", name="edge")
    center = NodeProcess(tmp_path / "center", name="center", role="center")
    edge.add_peer(center, default=True)
    files = ct_series()[:4]
    assert edge.cli("store", "import", *map(str, files)).returncode == 0
    study = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    case_id = json.loads(edge.cli("case", "send", study, "--operator", "technician Zhang",
                                  "--json").stdout.splitlines()[-1])["case_id"]

    def shown() -> str:
        return edge.cli("quality", "show", case_id[:10]).stdout

    assert "signed by edge, verified with its key" in shown()
    db = edge.directory / "store" / "index.sqlite"

    def tamper(sql: str) -> None:
        con = sqlite3.connect(db)
        con.execute(sql, (case_id,))
        con.commit()
        con.close()

    tamper("UPDATE quality SET attestation_json = json_set(attestation_json, '$.operator', "
           "'someone else') WHERE case_id = ?")
    assert "FORGED OR ALTERED" in shown() and "(signed)" not in shown()
    tamper("UPDATE quality SET attestation_json = json_remove(attestation_json, '$.signature') "
           "WHERE case_id = ?")
    assert "NOT SIGNED" in shown()
