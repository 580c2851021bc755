"""CLI verbs: `fenji audit ls|verify` (the audit ledger, DESIGN.md §3 step 10)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from fenji.gateway.cli import common


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    asub = common.group(sub, "audit", "the audit ledger: a case's history across nodes, "
                                      "and the chain's integrity")
    ls = asub.add_parser("ls", parents=[common.CONFIG],
                         help="events, oldest first: this node's and the other nodes' "
                                    "that came with bundles and reports")
    ls.add_argument("--case", metavar="CASE", help="only this case's history")
    ls.add_argument("--kind", metavar="K", help="only events of this kind (e.g. released)")
    ls.add_argument("--json", action="store_true", help="a JSON array of events")
    ls.set_defaults(func=_ls)
    v = asub.add_parser("verify", parents=[common.CONFIG],
                        help="check the hash chain and the signed head; exit 1 "
                                       "naming every edited, inserted or deleted event")
    v.add_argument("--json", action="store_true", help="one JSON object")
    v.set_defaults(func=_verify)


def _line(e: dict[str, Any], when: str) -> str:
    detail = json.dumps(e.get("detail") or {}, ensure_ascii=False, sort_keys=True)
    if len(detail) > 100:
        detail = detail[:99] + "…"
    case = f" case={e['case_id']}" if e.get("case_id") else ""
    via = f" via={e['via']}" if e.get("origin") == "foreign" else ""
    return (f"{when} {e['node']:<14} #{e['seq']:<6} {e['kind']:<15} "
            f"{e['actor']} ({e['role']}){case} obj={e['object']}{via} {detail}")


def _ls(args: argparse.Namespace) -> int:
    from fenji.gateway.audit import ledger
    from fenji.gateway.node import config_and_store

    if args.kind is not None and args.kind not in ledger.KINDS:
        print(f"fenji audit ls: unknown event kind {args.kind!r} (known: "
              f"{', '.join(ledger.KINDS)})", file=sys.stderr)
        return 2
    with config_and_store(args.config) as (cfg, store):
        hist = ledger.case_history(store, args.case, kind=args.kind)
    if args.json:
        print(json.dumps(hist, ensure_ascii=False))
        return 0
    if hist:
        print(f"times in {cfg.timezone}")
    for e in hist:
        print(_line(e, cfg.local_time(e["at"])))
    if not hist:
        print(f"no events{' for case ' + args.case if args.case else ''}"
              f"{' of kind ' + args.kind if args.kind else ''}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from fenji.gateway.audit import ledger
    from fenji.gateway.errors import LocalError
    from fenji.gateway.keys import load_public
    from fenji.gateway.node import config_and_store

    with config_and_store(args.config) as (cfg, store):
        pub = None
        key_note = None
        try:
            pub = load_public(cfg.resolve(cfg.keys.public_key))
        except LocalError as exc:
            key_note = f"node key not loaded, signed head not checked: {exc}"
        from fenji.gateway.reading.report_return import trusted_centers

        # Foreign events must carry their author's signature, checked with the
        # keys this node's config vouches for (peers, known nodes).
        res = ledger.verify(store, public_key=pub, trusted=trusted_centers(cfg))
    if key_note:
        res.notes.append(key_note)
    if args.json:
        print(json.dumps(res.to_dict(), ensure_ascii=False))
        return 0 if res.ok else 1
    for p in res.problems:
        print(f"PROBLEM {p.kind}: {p.message}")
    for n in res.notes:
        print(f"note: {n}")
    head = (f"signed head at event {res.head['seq']} verified with the node key"
            if res.head and pub is not None and not any(p.kind == "head" for p in res.problems)
            else "no signed head" if not res.head else "signed head NOT verified")
    status = "ok" if res.ok else f"FAILED ({len(res.problems)} problem(s))"
    print(f"ledger {cfg.node.name}: {status}: {res.n_events} events, {head}; "
          f"{res.n_foreign} events of other nodes held")
    return 0 if res.ok else 1
