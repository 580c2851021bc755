"""CLI verbs: `fenji quality show`, `fenji case override` lives in cli_case."""

from __future__ import annotations

import argparse
import json
import sys

from fenji.gateway.cli import common


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    qsub = common.group(sub, "quality", "the quality gate's reports and attestations")
    sh = qsub.add_parser("show", parents=[common.CONFIG],
                         help="a case's quality report, reasons and attestation")
    sh.add_argument("case_id", metavar="CASE")
    sh.add_argument("--json", action="store_true", help="the whole report as JSON")
    sh.set_defaults(func=_show)


def _show(args: argparse.Namespace) -> int:
    from fenji.gateway.cases.case import quality_of
    from fenji.gateway.node import config_and_store

    with config_and_store(args.config) as (cfg, store):
        q = quality_of(store, args.case_id)
        status = attestation_status(cfg, q["attestation"]) if q and q["attestation"] else None
    if q is None:
        print(f"fenji quality show: no quality report for case {args.case_id!r} (was the gate "
              "on when it was released?)", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({**q, "attestation_status": status}, ensure_ascii=False))
        return 0
    print(f"case {args.case_id}: {q['verdict']}")
    for r in q["report"]["reasons"]:
        print(f"  - {r}")
    att = q["attestation"]
    if att:
        over = f", override: {att['override']['reason']}" if att.get("override") else ""
        when = cfg.local_time(att["at"]) if isinstance(att.get("at"), int | float) else "-"
        print(f"attested by {att['operator']} at node {att['node']} on {when}{over}: {status}")
    else:
        print("not attested: held until someone fixes it or overrides with a reason")
    return 0


def attestation_status(cfg: object, att: dict[str, object]) -> str:
    """Say what the attestation's signature proves, checked here and now with the key
    this node's config holds for the attesting node: only a verified one is "signed"."""
    from fenji.gateway.cases.gate import verify_attestation
    from fenji.gateway.reading.report_return import trusted_centers

    node = str(att.get("node") or "")
    pub = trusted_centers(cfg).get(node)  # type: ignore[arg-type]
    if not att.get("signature"):
        return "NOT SIGNED: an unsigned statement, not the hospital's attestation"
    if pub is None:
        return f"UNVERIFIED: no key for node {node!r} here (add it as [[known_nodes]])"
    if not verify_attestation(att, pub):
        return f"FORGED OR ALTERED: the signature does not verify with {node}'s key"
    return f"signed by {node}, verified with its key"
