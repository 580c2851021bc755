"""CLI verbs: `fenji worklist ls|claim|unclaim` — the reading center's worklist."""

from __future__ import annotations

import argparse
import json
from typing import Any

from fenji.gateway.cli import common
from fenji.gateway.dicom.charset import pn_display


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    wsub = common.group(sub, "worklist", "the reading center's cases: list, claim, give back")
    ls = wsub.add_parser("ls", parents=[common.CONFIG],
                         help="received cases, STAT first, then longest waiting",
                         description="Per case: priority, waiting time, service, sending "
                                     "hospital, state (new, claimed, reported, amended), "
                                     "clinical question; below, the patient's name, ID, "
                                     "modality and study description, the requesting "
                                     "physician and when it arrived (node's time zone), "
                                     "and the quality verdict with any override (who, why).")
    ls.add_argument("--reader", help="only the services this reader reads")
    ls.add_argument("--state", choices=("new", "claimed", "reported", "amended"))
    ls.add_argument("--json", action="store_true", help="one JSON array")
    ls.set_defaults(func=_ls)
    for verb, helptext in (("claim", "claim a case for a reader (expires if unused)"),
                           ("unclaim", "give a claimed case back to the pool")):
        c = wsub.add_parser(verb, parents=common.BOTH, help=helptext)
        c.add_argument("case_id", metavar="CASE")
        c.add_argument("--reader", required=True, help="a configured reader")
        c.set_defaults(func=_claim if verb == "claim" else _unclaim)


def _fmt_wait(s: float) -> str:
    return f"{s / 3600:.1f} h" if s >= 3600 else f"{s / 60:.0f} min" if s >= 60 else f"{s:.0f} s"


def quality_text(q: dict[str, Any]) -> str:
    """The quality verdict as a reader reads it, with an override's who and why."""
    text = str(q.get("verdict") or "not checked")
    over = q.get("override")
    if over:
        text += f", overridden by {over.get('by') or '?'}: {over.get('reason') or ''}"
    return text


def _ls(args: argparse.Namespace) -> int:
    from fenji.gateway.cli.case import cli_user
    from fenji.gateway.node import config_and_store
    from fenji.gateway.reading import claims as reading

    with config_and_store(args.config) as (cfg, store):
        user = cli_user(cfg, args.reader) if args.reader else None
        rows = reading.worklist(store, cfg, user=user, state=args.state)  # type: ignore[arg-type]
    if args.json:
        print(json.dumps(rows, ensure_ascii=False))
        return 0
    if not rows:
        print("worklist is empty")
    else:
        print(f"times in {cfg.timezone}")
    for r in rows:
        claimed = f" by {r['claimed_by']}" if r["claimed_by"] else ""
        print(f"{r['case_id']}  {r['priority']:<7} {_fmt_wait(r['waiting_s']):>8}  "
              f"{r['service']:<7} {r['sending_hospital'] or '?':<16} {r['state']}{claimed:<12} "
              f"{r['clinical_question'] or ''}")
        print(f"    patient {pn_display(r['patient_name'] or '') or '-'}  "
              f"ID {r['patient_id'] or '-'}  {r.get('modality') or '-'}  "
              f"{r['study_description'] or ''}")
        print(f"    requested by {pn_display(r['requesting_physician'] or '') or '-'}  "
              f"received {cfg.local_time(r['received_at'])}")
        print(f"    quality {quality_text(r['quality'])}")
    return 0


def _claim(args: argparse.Namespace) -> int:
    from fenji.gateway.cli.case import cli_user
    from fenji.gateway.node import config_and_store
    from fenji.gateway.reading import claims as reading

    with config_and_store(args.config) as (cfg, store):
        out = reading.claim(store, cfg, args.case_id, cli_user(cfg, args.reader))  # type: ignore[arg-type]
    print(json.dumps(out) if args.json else
          f"case {out['case_id']} claimed by {out['claimed_by']} "
          f"for {cfg.reading.claim_ttl_s / 60:.0f} min")
    return 0


def _unclaim(args: argparse.Namespace) -> int:
    from fenji.gateway.cli.case import cli_user
    from fenji.gateway.node import config_and_store
    from fenji.gateway.reading import claims as reading

    with config_and_store(args.config) as (cfg, store):
        reading.unclaim(store, cfg, args.case_id, cli_user(cfg, args.reader))  # type: ignore[arg-type]
    print(json.dumps({"case_id": args.case_id, "state": "new"}) if args.json else
          f"case {args.case_id} is back in the pool")
    return 0
