"""CLI verbs: `fenji stats`, `fenji ledger fees`, `fenji liability` (figures from the ledger)."""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
from collections.abc import Callable
from typing import Any

from fenji.gateway.cli import common
from fenji.gateway.dicom.charset import pn_display


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    s = sub.add_parser("stats", parents=[common.CONFIG],
                       help="cases sent/received/read/reported, turnaround, quality "
                                     "holds and amendments per hospital and service")
    s.add_argument("--since", metavar="ISO", help="cases released (else received) at or "
                                                  "after this time, e.g. 2026-11-01")
    s.add_argument("--until", metavar="ISO", help="... and before this time")
    s.add_argument("--json", action="store_true", help="one JSON object")
    s.set_defaults(func=_stats)

    lsub = common.group(sub, "ledger", "money computed from the ledger")
    f = lsub.add_parser("fees", parents=[common.CONFIG],
                        help="a month's reported cases priced from [[services]], "
                                     "split inviting hospital : invited center; exit 1 when "
                                     "a service is not in the catalog")
    f.add_argument("--month", required=True, metavar="YYYY-MM",
                   help="the month the first report was signed in")
    f.add_argument("--tz", default="UTC", metavar="ZONE",
                   help="time zone of the month's bounds, e.g. Asia/Shanghai (default UTC)")
    f.add_argument("--json", action="store_true", help="one JSON object")
    f.set_defaults(func=_fees)

    li = sub.add_parser("liability", parents=[common.CONFIG],
                        help="for one case, the sender's signed data-quality "
                                          "attestation beside the center's signed reports; "
                                          "exit 1 when a signature does not verify")
    li.add_argument("case_id", metavar="CASE")
    li.add_argument("--json", action="store_true", help="one JSON object")
    li.set_defaults(func=_liability)


def _fmt_s(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.0f} s" if x < 120 else f"{x / 60:.1f} min" if x < 7200 else f"{x / 3600:.1f} h"


def _stats(args: argparse.Namespace) -> int:
    from fenji.gateway.audit import stats as st
    from fenji.gateway.node import config_and_store

    since = st.parse_time(args.since, what="--since") if args.since else None
    until = st.parse_time(args.until, what="--until") if args.until else None
    with config_and_store(args.config) as (cfg, store):
        doc = st.stats(store, node=cfg.node.name, role=cfg.node.role, since=since, until=until)
    if args.json:
        print(json.dumps(doc, ensure_ascii=False))
        return 0
    print(f"{doc['node']} ({doc['role']}) from {doc['since'] or 'the start'} to "
          f"{doc['until'] or 'now'}")
    print(f"{'hospital':<18} {'service':<9} {'cases':>5} {'sent':>5} {'recv':>5} {'read':>5} "
          f"{'rep.':>5} {'held':>5} {'ovr.':>5} {'amend':>5}")
    for r in [*doc["rows"], {"hospital": "TOTAL", "service": "", **doc["total"]}]:
        print(f"{r['hospital']:<18} {r['service']:<9} {r['cases']:>5} {r['sent']:>5} "
              f"{r['received']:>5} {r['read']:>5} {r['reported']:>5} {r['held']:>5} "
              f"{r['overrides']:>5} {r['amendments']:>5}")
        for p, t in r["turnaround"].items():
            print(f"    turnaround {p:<8} n={t['n']:<4} median {_fmt_s(t['median_s']):>9}  "
                  f"p90 {_fmt_s(t['p90_s']):>9}")
    return 0


def _fees(args: argparse.Namespace) -> int:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    from fenji.gateway.audit import stats as st
    from fenji.gateway.node import config_and_store

    try:
        tz = ZoneInfo(args.tz)
    except (ZoneInfoNotFoundError, ValueError):
        print(f"fenji ledger fees: --tz {args.tz!r} is not a known time zone "
              "(e.g. UTC, Asia/Shanghai)", file=sys.stderr)
        return 2
    with config_and_store(args.config) as (cfg, store):
        doc = st.fees(store, cfg.services, node=cfg.node.name, month=args.month, tz=tz)
    for w in doc["warnings"]:
        print(f"fenji ledger fees: WARNING: {w}", file=sys.stderr)
    if args.json:
        print(json.dumps(doc, ensure_ascii=False))
        return 1 if doc["warnings"] else 0
    print(f"fees for {doc['month']} ({doc['tz']}), reported cases by first signature, at "
          f"{doc['node']}")
    print(f"{'hospital':<18} {'center':<16} {'service':<10} {'n':>4} {'price':>9} "
          f"{'total':>11} {'inviting':>11} {'invited':>11}")
    for r in doc["rows"]:
        if r["price"] is None:
            print(f"{r['hospital']:<18} {r['center']:<16} {r['service']:<10} "
                  f"{r['reported']:>4} {'NOT IN CATALOG':>9}")
            continue
        share = (f"{round(r['inviting_share'] * 10, 4):g}:"
                 f"{round((1 - r['inviting_share']) * 10, 4):g}")
        print(f"{r['hospital']:<18} {r['center']:<16} {r['service']:<10} {r['reported']:>4} "
              f"{r['price']:>9.2f} {r['fee_total']:>11.2f} {r['inviting_amount']:>11.2f} "
              f"{r['invited_amount']:>11.2f} {r['currency']} ({share})")
    for t in doc["totals"]:
        print(f"{'TOTAL':<46} {t['fee_total']:>21.2f} {t['inviting_amount']:>11.2f} "
              f"{t['invited_amount']:>11.2f} {t['currency']}")
    if not doc["rows"]:
        print("no reported cases in that month")
    return 1 if doc["warnings"] else 0


def _sig(valid: bool | None) -> str:
    return "valid" if valid else "unchecked" if valid is None else "INVALID"


def _liability_text(doc: dict[str, Any], when: Callable[[Any], str] = str) -> list[str]:
    """``when`` turns the document's ISO 8601 (UTC) times into the node's zone."""
    dq = doc["data_quality"]
    lines = [f"case {doc['case_id']}  {doc['service']}  {doc['priority']}  study "
             f"{doc['study_instance_uid']}  from {doc['sending_hospital'] or '?'}",
             f"patient {pn_display(doc.get('patient_name') or '') or '-'}  "
             f"ID {doc.get('patient_id') or '-'}  {doc.get('study_description') or ''}", ""]
    cur = next((r for r in reversed(doc["report_content"])), None)
    left = [("", "DATA QUALITY (sending hospital)"),
            ("node", dq.get("node") or "-"),
            ("who", dq.get("operator") or "-"),
            ("when", when(dq["at"]) if dq.get("at") else "-"),
            ("verdict", f"{dq.get('verdict') or '-'}"
                        f" ({len(dq.get('reasons') or [])} reason(s))"),
            ("override", "; ".join(f"{o['operator']}: {o['reason']!r} at {when(o['at'])}"
                                   for o in dq["overrides"]) or "none"),
            ("signature", dq["signature"])]
    right = [("REPORT CONTENT (reading center)",),
             (cur["center"] if cur else "no report",),
             (f"{cur['reader']} ({cur['reader_display']})" if cur else "-",),
             (when(cur["signed_at"]) if cur else "-",),
             (f"version {cur['version']}" + (f", supersedes {cur['supersedes']}: "
                                             f"{cur['amendment_reason']!r}"
                                             if cur and cur["supersedes"] else "")
              if cur else "-",),
             (f"critical: {'yes' if cur['critical'] else 'no'}" if cur else "-",),
             (_sig(cur["signature_valid"]) + (f", endorsed by {cur['endorsed_by']}"
                                              if cur and cur["endorsed_by"] else "")
              if cur else "-",)]
    for (k, v), (w,) in zip(left, right, strict=True):
        lines.append(f"{k:<10} {v!s:<48} | {w}")
    for reason in dq.get("reasons") or []:
        lines.append(f"  quality reason: {reason}")
    if doc["report_content"]:
        lines.append("")
        lines.append("report versions:")
    for r in doc["report_content"]:
        amend = (f" supersedes {r['supersedes']} ({r['amendment_reason']})"
                 if r["supersedes"] else "")
        lines.append(f"  v{r['version']} {r['status']:<10} {r['report_id']} by {r['reader']} "
                     f"({r['reader_display']}) at {when(r['signed_at'])}{amend}; signature "
                     f"{_sig(r['signature_valid'])}")
        for p in r["problems"]:
            lines.append(f"      problem: {p}")
    return lines


def _liability(args: argparse.Namespace) -> int:
    from fenji.gateway.audit import stats as st
    from fenji.gateway.node import config_and_store
    from fenji.gateway.reading.report_return import trusted_centers

    with config_and_store(args.config) as (cfg, store):
        doc = st.liability(store, args.case_id, trusted=trusted_centers(cfg))

    def when(iso: Any) -> str:
        try:
            return cfg.local_time(_dt.datetime.fromisoformat(str(iso)).timestamp())
        except ValueError:
            return str(iso)

    bad = doc["data_quality"].get("signature_valid") is False or any(
        r["signature_valid"] is False for r in doc["report_content"])
    if args.json:
        print(json.dumps(doc, ensure_ascii=False))
    else:
        print("\n".join(_liability_text(doc, when)))
    return 1 if bad else 0
