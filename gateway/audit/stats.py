"""Figures computed from the store and the ledger (DESIGN.md §3 step 10, §10).

* :func:`stats`: volume, reading, turnaround, quality rejections and
  amendments per sending hospital and service — what evaluation rules ask for;
* :func:`fees`: the month's reported cases priced from the service catalog,
  split between the inviting (sending) hospital and the invited center;
* :func:`liability`: for one case, what the sending hospital attested about
  data quality beside what the center signed about the report.

The same code runs on an edge (its own cases: the hospital is this node) and
on a center (cases from many hospitals: ``cases.sending_node``).  Reading
state and quality events come from the case's history on every node this
node holds events of (:func:`fenji.gateway.audit.ledger.case_history`), so an edge
sees its center's claims once reports came back, and a center sees the
edge's hold and override that travelled with the case.

Definitions, so that two nodes count the same way:

* a *case* is a ``cases`` row of kind ``case`` (addenda are parts of a case);
  its time, for ``since``/``until``, is when it was released at the edge
  (``released_at``, which a center has from the manifest), else when it was
  received, else when the row was made;
* *sent*: released here (an edge's own case); *received*: arrived here;
* *read*: a reader claimed or opened it (a ``claimed``/``opened`` event on any
  node), or it has a report; *reported*: it has a signed report;
* *turnaround*: from release at the edge to the first report back at the
  edge — at the edge the report's ``received_at``; at a center, which cannot
  see the edge, the ``returned_at`` of the report bundle (its receipt came
  back).  Median and p90 by linear interpolation between ranks (NumPy's
  default), per priority;
* *held*: the quality gate held it (a ``held`` event); *overrides*: a person
  released it anyway (an ``override`` event or an override in its signed
  attestation); *rejection_rate*: held / cases;
* *amendments*: report versions after the first.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from fenji.gateway.audit import ledger
from fenji.gateway.dicom import query as qr
from fenji.gateway.errors import LocalError
from fenji.gateway.keys import canonical_json

PRIORITIES = ("stat", "urgent", "routine")
_CENT = Decimal("0.01")


class StatsError(LocalError):
    """A request for figures that cannot be answered (bad month, unknown case)."""

    http_status = 400


# ---------------------------------------------------------------------------
# Small pure helpers
# ---------------------------------------------------------------------------

def percentile(values: Iterable[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100) by linear interpolation between ranks.

    >>> percentile([10, 20, 30, 40], 50), percentile([10, 20, 30, 40], 90)
    (25.0, 37.0)
    >>> percentile([], 50) is None
    True
    """
    xs = sorted(float(v) for v in values)
    if not xs:
        return None
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def parse_time(text: str, *, what: str = "time") -> float:
    """An ISO 8601 date or date-time (naive: UTC) as a POSIX time.

    >>> parse_time("2026-11-01"), parse_time("2026-11-01T08:00:00+08:00")
    (1793491200.0, 1793491200.0)
    """
    try:
        d = _dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise StatsError(f"{what} = {text!r} is not an ISO 8601 date or date-time "
                         "(e.g. 2026-11-01 or 2026-11-01T08:00:00+08:00)") from exc
    if d.tzinfo is None:
        d = d.replace(tzinfo=_dt.UTC)
    return d.timestamp()


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return _dt.datetime.fromtimestamp(ts, _dt.UTC).isoformat(timespec="seconds").replace(
        "+00:00", "Z")


def _money(x: Decimal) -> Decimal:
    return x.quantize(_CENT, rounding=ROUND_HALF_UP)


def split_fee(price: float, n: int, inviting_share: float) -> tuple[Decimal, Decimal, Decimal]:
    """(total, inviting hospital's part, invited center's part), to the cent.

    The inviting part is rounded half up; the invited part is the rest, so the
    two always add up to the total.

    >>> [str(x) for x in split_fee(80.0, 3, 0.2)]
    ['240.00', '48.00', '192.00']
    """
    total = _money(Decimal(str(price)) * n)
    inviting = _money(total * Decimal(str(inviting_share)))
    return total, inviting, total - inviting


# ---------------------------------------------------------------------------
# What the store says about each case
# ---------------------------------------------------------------------------

def _events_by_case(store: Any, kinds: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    marks = ", ".join("?" for _ in kinds)
    ledger.ensure_tables(store)
    for table in ("audit", "audit_foreign"):
        for r in store.query(f"SELECT node, seq, kind, actor, role, at, case_id, detail "
                             f"FROM {table} WHERE case_id IS NOT NULL AND kind IN ({marks}) "
                             "ORDER BY at", tuple(kinds)):
            r["detail"] = json.loads(r["detail"] or "{}")
            out[r["case_id"]].append(r)
    return out


def _reports_by_case(store: Any) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in store.query("SELECT report_id, case_id, version, supersedes, status, reader, "
                         "signed_at, amendment_reason, report_json, origin_node, returned_at, "
                         "received_at FROM reports ORDER BY case_id, version"):
        out[r["case_id"]].append(r)
    return out


def _signed_at(report: Mapping[str, Any]) -> float:
    """When the reader signed: the signed document's ISO time, else the row's."""
    try:
        doc = json.loads(report["report_json"])
        return _dt.datetime.fromisoformat(str(doc["signed_at"])).timestamp()
    except (KeyError, ValueError, TypeError):
        return float(report["signed_at"])


def case_facts(store: Any, node: str) -> list[dict[str, Any]]:
    """One dict per case with everything the figures are made of (see the module doc)."""
    evs = _events_by_case(store, ("claimed", "opened", "held", "override"))
    reps = _reports_by_case(store)
    quality = {r["case_id"]: r for r in store.query(
        "SELECT case_id, verdict, attestation_json FROM quality")}
    out = []
    for c in store.query("SELECT case_id, priority, service, destination, state, released_at, "
                         "created_at, sending_node, received_at, read_state, claimed_by "
                         "FROM cases WHERE kind = 'case' AND state != 'preview' "
                         "ORDER BY created_at"):
        cid = c["case_id"]
        kinds = {e["kind"] for e in evs.get(cid, [])}
        rs = reps.get(cid, [])
        first = min(rs, key=lambda r: (r["version"], _signed_at(r))) if rs else None
        back = None
        if first is not None:
            back = first["returned_at"] if first["origin_node"] == node else first["received_at"]
        q = quality.get(cid)
        att = json.loads(q["attestation_json"]) if q and q["attestation_json"] else None
        released = c["released_at"]
        out.append({
            "case_id": cid, "hospital": c["sending_node"] or node, "service": c["service"],
            "priority": c["priority"], "state": c["state"],
            "time": released or c["received_at"] or c["created_at"],
            "sent": c["sending_node"] is None and released is not None,
            "received": c["received_at"] is not None,
            "read": bool(kinds & {"claimed", "opened"}) or bool(c["claimed_by"])
            or c["read_state"] in ("claimed", "reported", "amended") or bool(rs),
            "reported": bool(rs),
            "held": "held" in kinds or c["state"] == "held",
            "override": "override" in kinds or bool(att and att.get("override")),
            "amendments": sum(1 for r in rs if r["version"] > 1),
            "released_at": released, "report_back_at": back,
            "turnaround_s": (back - released) if back is not None and released is not None
            else None,
            "first_signed_at": _signed_at(first) if first is not None else None,
            "center": first["origin_node"] if first is not None else c["destination"],
        })
    return out


def _turnaround(facts: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out = {}
    for p in PRIORITIES:
        xs = [f["turnaround_s"] for f in facts if f["priority"] == p
              and f["turnaround_s"] is not None]
        if xs:
            out[p] = {"n": len(xs), "median_s": percentile(xs, 50), "p90_s": percentile(xs, 90)}
    return out


def _summary(facts: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(facts)
    held = sum(f["held"] for f in facts)
    return {"cases": n, "sent": sum(f["sent"] for f in facts),
            "received": sum(f["received"] for f in facts),
            "read": sum(f["read"] for f in facts), "reported": sum(f["reported"] for f in facts),
            "held": held, "overrides": sum(f["override"] for f in facts),
            "rejection_rate": round(held / n, 4) if n else None,
            "amendments": sum(f["amendments"] for f in facts),
            "turnaround": _turnaround(facts)}


def stats(store: Any, *, node: str, role: str, since: float | None = None,
          until: float | None = None) -> dict[str, Any]:
    """Figures per (sending hospital, service) and in total, for cases in [since, until)."""
    facts = [f for f in case_facts(store, node)
             if (since is None or f["time"] >= since) and (until is None or f["time"] < until)]
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for f in facts:
        groups[(f["hospital"], f["service"])].append(f)
    rows = [{"hospital": h, "service": s, **_summary(fs)}
            for (h, s), fs in sorted(groups.items())]
    return {"node": node, "role": role, "since": iso(since), "until": iso(until),
            "rows": rows, "total": _summary(facts)}


# ---------------------------------------------------------------------------
# Fees
# ---------------------------------------------------------------------------

def month_bounds(month: str, tz: _dt.tzinfo = _dt.UTC) -> tuple[float, float]:
    """[start, end) of ``YYYY-MM`` in ``tz`` as POSIX times."""
    try:
        y, m = (int(x) for x in month.split("-"))
        start = _dt.datetime(y, m, 1, tzinfo=tz)
    except ValueError as exc:
        raise StatsError(f"month = {month!r} is not YYYY-MM (e.g. 2026-11)") from exc
    end = _dt.datetime(y + (m == 12), m % 12 + 1, 1, tzinfo=tz)
    return start.timestamp(), end.timestamp()


def fees(store: Any, services: Sequence[Any], *, node: str, month: str,
         tz: _dt.tzinfo = _dt.UTC) -> dict[str, Any]:
    """The month's reported cases, priced from the catalog, per hospital, center and service.

    A case counts in the month its first report was signed (in ``tz``).
    ``services``: the ``[[services]]`` catalog (``name``, ``price``,
    ``currency``, ``inviting_share``).  A service missing from it is listed
    with ``price: null`` and a warning, never priced 0.
    """
    start, end = month_bounds(month, tz)
    catalog = {s.name: s for s in services}
    groups: dict[tuple[str, str, str], list[str]] = defaultdict(list)
    for f in case_facts(store, node):
        if f["first_signed_at"] is not None and start <= f["first_signed_at"] < end:
            groups[(f["hospital"], f["center"], f["service"])].append(f["case_id"])
    rows, warnings = [], []
    totals: dict[str, list[Decimal]] = {}
    for (hospital, center, service), cases in sorted(groups.items()):
        row: dict[str, Any] = {"hospital": hospital, "center": center, "service": service,
                               "reported": len(cases), "cases": sorted(cases)}
        svc = catalog.get(service)
        if svc is None:
            msg = (f"service {service!r} is not in the service catalog ([[services]]): "
                   f"{len(cases)} reported case(s) from {hospital} are not priced")
            warnings.append(msg)
            row.update(price=None, currency=None, inviting_share=None, fee_total=None,
                       inviting_amount=None, invited_amount=None, warning=msg)
        else:
            total, inviting, invited = split_fee(svc.price, len(cases), svc.inviting_share)
            row.update(price=svc.price, currency=svc.currency,
                       inviting_share=svc.inviting_share, fee_total=float(total),
                       inviting_amount=float(inviting), invited_amount=float(invited))
            acc = totals.setdefault(svc.currency, [Decimal(0)] * 3)
            for i, x in enumerate((total, inviting, invited)):
                acc[i] += x
        rows.append(row)
    return {"node": node, "month": month, "tz": str(tz), "rows": rows,
            "totals": [{"currency": cur, "fee_total": float(t[0]),
                        "inviting_amount": float(t[1]), "invited_amount": float(t[2])}
                       for cur, t in sorted(totals.items())],
            "warnings": warnings}


# ---------------------------------------------------------------------------
# Liability
# ---------------------------------------------------------------------------

def _verify_report(signed: dict[str, Any], endorsement: dict[str, Any] | None,
                   trusted: Mapping[str, Any]) -> tuple[bool, list[str], str | None]:
    """(ok, problems, endorsed_by) by reports.document when present, else the bare signature."""
    try:
        from fenji.gateway.reports.document import verify_signed
    except ImportError:
        verify_signed = None  # type: ignore[assignment]
    if verify_signed is not None:
        res = verify_signed(signed, endorsement or {}, dict(trusted))
        return bool(res.ok), list(res.problems), res.endorsed_by
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from fenji.gateway.keys import verify as verify_sig

    report = signed.get("report") or {}
    try:
        pub = Ed25519PublicKey.from_public_bytes(bytes.fromhex(str(report.get("reader_key"))))
    except ValueError:
        return False, [f"reader_key = {report.get('reader_key')!r} is not an Ed25519 key"], None
    if verify_sig(pub, canonical_json(report), str(signed.get("signature") or "")):
        return True, [], None
    return False, ["reader signature does not verify over the report"], None


def _attestation_side(att: dict[str, Any] | None, quality: dict[str, Any] | None,
                      events: list[dict[str, Any]], trusted: Mapping[str, Any],
                      ) -> dict[str, Any]:
    overrides = [{"operator": e["actor"], "role": e["role"], "node": e["node"],
                  "at": iso(e["at"]), "reason": e["detail"].get("reason")}
                 for e in events if e["kind"] == "override"]
    holds = [{"node": e["node"], "at": iso(e["at"]), "by": e["actor"],
              "reasons": e["detail"].get("reasons", [])}
             for e in events if e["kind"] == "held"]
    if att is None:
        return {"attested": False, "verdict": quality["verdict"] if quality else None,
                "signature": "missing: no signed quality attestation for this case",
                "holds": holds, "overrides": overrides}
    if att.get("override") and not overrides:
        overrides.append({"operator": att.get("operator"), "role": None, "node": att.get("node"),
                          "at": iso(att.get("at")), "reason": att["override"].get("reason")})
    from fenji.gateway.cases.gate import verify_attestation

    signer = str(att.get("node") or "")
    pub = trusted.get(signer)
    if pub is None:
        sig = (f"unchecked: no key for node {signer!r} in [[peers]] or [[known_nodes]] "
               f"(known: {', '.join(sorted(trusted)) or 'none'})")
        valid = None
    else:
        valid = verify_attestation(att, pub)
        sig = (f"valid (key of {signer})" if valid else
               f"INVALID: does not verify with {signer}'s key (the attestation was changed)")
    return {"attested": True, "node": att.get("node"), "operator": att.get("operator"),
            "at": iso(att.get("at")), "verdict": att.get("verdict"),
            "reasons": att.get("reasons", []), "override": att.get("override"),
            "report_sha256": att.get("report_sha256"), "signature_valid": valid,
            "signature": sig, "holds": holds, "overrides": overrides}


def liability(store: Any, case_id: str, *, trusted: Mapping[str, Any]) -> dict[str, Any]:
    """Who answers for what in one case: the sender's attestation beside the center's reports.

    ``trusted``: node name -> Ed25519 public key (peers, known nodes and this
    node): the attestation is checked with its node's key, a report's
    endorsement with its center's.
    """
    case = store.query_one("SELECT * FROM cases WHERE case_id = ?", (case_id,))
    if case is None:
        raise StatsError(f"no case {case_id!r} in this node's store")
    q = store.query_one("SELECT * FROM quality WHERE case_id = ?", (case_id,))
    att = json.loads(q["attestation_json"]) if q and q["attestation_json"] else None
    hist = ledger.case_history(store, case_id)
    sender = _attestation_side(att, q, hist, trusted)
    reports = []
    for r in store.query("SELECT * FROM reports WHERE case_id = ? ORDER BY version",
                         (case_id,)):
        doc = json.loads(r["report_json"])
        end = json.loads(r["endorsement_json"]) if r["endorsement_json"] else None
        ok, problems, endorsed_by = _verify_report({"report": doc, "signature": r["signature"]},
                                                   end, trusted)
        reports.append({
            "report_id": r["report_id"], "version": r["version"], "status": r["status"],
            "center": doc.get("center") or r["origin_node"], "reader": doc.get("reader"),
            "reader_display": doc.get("reader_display"), "signed_at": doc.get("signed_at"),
            "supersedes": r["supersedes"], "amendment_reason": r["amendment_reason"],
            "critical": bool(r["critical"]), "impression": doc.get("impression"),
            "attestation_sha256": doc.get("attestation_sha256"),
            "signature_valid": ok, "endorsed_by": endorsed_by, "problems": problems,
            "acknowledged_by": r["acknowledged_by"], "acknowledged_at": iso(
                r["acknowledged_at"])})
    bound = (hashlib.sha256(canonical_json(att)).hexdigest() if att is not None else None)
    for rep in reports:
        rep["binds_attestation"] = (rep["attestation_sha256"] == bound) if bound else None
    return {"case_id": case_id, "study_instance_uid": case["study_instance_uid"],
            **qr.study_summary(store, case["study_instance_uid"]),
            "service": case["service"], "priority": case["priority"],
            "sending_hospital": case.get("sending_node") or (att or {}).get("node"),
            "data_quality": sender, "report_content": reports,
            "history": [{"node": e["node"], "kind": e["kind"], "actor": e["actor"],
                         "at": iso(e["at"])} for e in hist]}
