"""CLI verbs: `fenji case send|ls|show|override|ack`."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from fenji.gateway import config as config_mod
from fenji.gateway.access import local as node_api
from fenji.gateway.cases.states import PRIORITIES, SERVICES
from fenji.gateway.cli import common


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    csub = common.group(sub, "case", "release studies as cases and follow them")

    s = csub.add_parser(
        "send", parents=common.BOTH, help="release a study (or its new instances) for sending",
        description="Build the case's bundle and queue it for the destination. Instances "
                    "that arrive after a release travel as an addendum: run send again.")
    s.add_argument("study", metavar="STUDY_UID", help="Study Instance UID")
    s.add_argument("--priority", choices=list(PRIORITIES), default="routine")
    s.add_argument("--dest", help="peer name (default: transfer.default_destination)")
    s.add_argument("--service", choices=SERVICES, help="default: from the SOP classes")
    s.add_argument("--physician", help="requesting physician")
    s.add_argument("--question", help="clinical question")
    s.add_argument("--consent", help="reference of the patient's informed consent")
    s.add_argument("--effort", choices=("fast", "max"), default="fast",
                   help="compression effort (max: smaller, slower; for the thinnest links)")
    s.add_argument("--operator", default=None,
                   help="who attests the data quality (default: the login name)")
    s.add_argument("--no-gate", action="store_true",
                   help="skip the quality gate (no attestation travels with the case)")
    s.add_argument("--in-process", action="store_true",
                   help="build the bundle in this command even when the node runs (by "
                        "default the running node does it: its codecs are loaded)")
    s.set_defaults(func=_send)

    o = csub.add_parser("override", parents=[common.CONFIG],
                        help="release a case the quality gate held, with a reason",
                        description="The named operator takes responsibility: the override "
                                    "and its reason are signed into the case's attestation.")
    o.add_argument("case_id", metavar="CASE")
    o.add_argument("--operator", required=True, help="who overrides (a person's name)")
    o.add_argument("--reason", required=True, help="why the case may go anyway")
    o.set_defaults(func=_override)

    x = csub.add_parser("exclude", parents=common.BOTH,
                        help="drop a bad instance from a held case, with a reason",
                        description="The instance stays in the store but leaves the case: "
                                    "the next `fenji case send STUDY` releases the rest "
                                    "(through the quality gate again).  Who and why are "
                                    "recorded in the audit ledger.")
    x.add_argument("case_id", metavar="CASE")
    x.add_argument("instance", metavar="INSTANCE",
                   help="its SOP Instance UID, or its instance number as the gate names it")
    x.add_argument("--operator", required=True, help="who excludes it (a person's name)")
    x.add_argument("--reason", required=True, help="why it is left out")
    x.set_defaults(func=_exclude)

    ls = csub.add_parser("ls", parents=common.BOTH, help="list cases")
    ls.add_argument("--state", help="only cases in this state (released, delivered, ...)")
    ls.set_defaults(func=_ls)

    sh = csub.add_parser("show", parents=[common.CONFIG],
                         help="one case: instances, receipt, quality, reports")
    sh.add_argument("case_id", metavar="CASE")
    sh.add_argument("--json", action="store_true", help="the whole case as JSON, for scripts")
    sh.set_defaults(func=_show)

    ak = csub.add_parser("ack", parents=common.BOTH,
                         help="the requesting physician acknowledges the case's report",
                         description="Records who acknowledged the current report version "
                                     "and when (a ledger event).")
    ak.add_argument("case_id", metavar="CASE")
    ak.add_argument("--by", required=True, help="a configured user (physician, technician or "
                                                "operator) acknowledging")
    ak.set_defaults(func=_ack)


def _send(args: argparse.Namespace) -> int:
    cfg = config_mod.load(args.config)
    if not args.in_process:
        # The destination as this command reads the config now (the node may not have
        # been told of an edit); the node checks it against the peers it knows.
        body = {"study_instance_uid": args.study,
                "destination": args.dest or cfg.transfer.default_destination or None,
                "priority": args.priority, "service": args.service,
                "requesting_physician": args.physician, "clinical_question": args.question,
                "consent_ref": args.consent, "effort": args.effort,
                "operator": args.operator or _login(), "gate": not args.no_gate}
        try:
            status, answer = node_api.call(cfg.data_dir, "/cases/release", body)
        except node_api.NodeNotRunning:
            pass  # nothing was sent: release here, on the store
        except OSError as exc:
            print(f"fenji case send: the running node took the release but its answer was "
                  f"lost ({exc}); see `fenji case ls` before sending again", file=sys.stderr)
            return 1
        else:
            return _sent_by_node(args, status, answer)
    return _send_in_process(args, cfg)


def _sent_by_node(args: argparse.Namespace, status: int, answer: dict[str, Any]) -> int:
    if status == 201:
        return _print_sent(args, answer)
    if status == 409 and answer.get("error") == "held":
        return _print_held(args, str(answer.get("case_id")), list(answer.get("reasons") or []))
    # The node's own checks of the request read as the command's; a refusal of the
    # release itself (a FenjiError there) as any command's error (cli/main.py).
    mine = answer.get("error") in ("no_destination", "unknown_destination")
    print(f"{'fenji case send' if mine else 'fenji: error'}: "
          f"{answer.get('message') or answer}", file=sys.stderr)
    return 2


def _print_held(args: argparse.Namespace, case_id: str, reasons: list[str]) -> int:
    print(f"case {case_id} HELD by the quality gate:", file=sys.stderr)
    for r in reasons:
        print(f"  - {r}", file=sys.stderr)
    print(f"fix and send again, or: fenji case override {case_id} --config "
          f"{args.config} --operator NAME --reason TEXT", file=sys.stderr)
    if args.json:
        print(json.dumps({"case_id": case_id, "state": "held", "reasons": reasons}))
    return 3


def _print_sent(args: argparse.Namespace, out: dict[str, Any]) -> int:
    if args.json:
        print(json.dumps(out))
        return 0
    ratio = out["raw_bytes"] / out["bundle_bytes"] if out["bundle_bytes"] else 0
    print(f"{out['kind']} {out['case_id']} queued for {out['destination']} via "
          f"{out['next_hop']}: {out['instances']} instances, {out['raw_bytes'] / 1e6:.2f} MB "
          f"-> {out['bundle_bytes'] / 1e6:.2f} MB ({ratio:.2f}x), priority {out['priority']}")
    return 0


def _send_in_process(args: argparse.Namespace, cfg: config_mod.Config) -> int:
    """The release in this process, on the store (no node runs, or --in-process)."""
    from fenji.gateway.cases.case import next_hop, release
    from fenji.gateway.node import open_store

    dest = args.dest or cfg.transfer.default_destination
    if not dest:
        print("fenji case send: no --dest and no transfer.default_destination in the config",
              file=sys.stderr)
        return 2
    hop = next_hop(cfg, dest)
    if hop is None:
        print(f"fenji case send: destination {dest!r} is not a configured peer and "
              f"transfer.default_destination does not lead to it", file=sys.stderr)
        return 2
    from fenji.gateway.cases.case import CaseHeld
    from fenji.gateway.keys import load_private

    key = None if args.no_gate else load_private(cfg.resolve(cfg.keys.private_key))
    store = open_store(cfg)
    try:
        try:
            rel = release(store, args.study, destination=dest, priority=args.priority,
                          service=args.service, requesting_physician=args.physician,
                          clinical_question=args.question, consent_ref=args.consent,
                          released_by="cli", sender_node=cfg.node.name, effort=args.effort,
                          gate_key=key, operator=args.operator or _login(),
                          thresholds=(cfg.quality_ecg, cfg.quality_image), hop=hop)
        except CaseHeld as held:
            return _print_held(args, held.case_id, held.reasons)
    finally:
        store.close()
    return _print_sent(args, {
        "case_id": rel.case_id, "kind": rel.kind, "parent_case_id": rel.parent_case_id,
        "bundle_id": rel.bundle_id, "destination": dest, "next_hop": hop,
        "priority": rel.priority, "instances": rel.instances, "raw_bytes": rel.raw_bytes,
        "bundle_bytes": rel.bundle_bytes})


def _login() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _override(args: argparse.Namespace) -> int:
    from fenji.gateway.cases.case import next_hop, override
    from fenji.gateway.keys import load_private
    from fenji.gateway.node import open_store

    cfg = config_mod.load(args.config)
    key = load_private(cfg.resolve(cfg.keys.private_key))
    store = open_store(cfg)
    try:
        case = store.query_one("SELECT destination FROM cases WHERE case_id = ?",
                               (args.case_id,))
        hop = next_hop(cfg, case["destination"]) if case else None
        if case is not None and hop is None:
            print(f"fenji case override: no route to {case['destination']!r}",
                  file=sys.stderr)
            return 2
        rel = override(store, args.case_id, operator=args.operator, reason=args.reason,
                       gate_key=key, sender_node=cfg.node.name, hop=hop)
    finally:
        store.close()
    print(f"case {rel.case_id} released by override of {args.operator}; queued for "
          f"{rel.destination} via {hop}")
    return 0


def _exclude(args: argparse.Namespace) -> int:
    from fenji.gateway.cases.case import exclude_instance
    from fenji.gateway.node import config_and_store

    with config_and_store(args.config) as (cfg, store):
        out = exclude_instance(store, args.case_id, args.instance, operator=args.operator,
                               reason=args.reason, node=cfg.node.name)
    return common.emit(args, out,
                       f"instance {out['excluded']} left out of case {out['case_id']} by "
                       f"{out['by']}; {out['remaining']} remain. Release them with: "
                       f"fenji case send {out['study_instance_uid']}")


def _ls(args: argparse.Namespace) -> int:
    from fenji.gateway.cases.case import list_cases
    from fenji.gateway.dicom.charset import pn_display
    from fenji.gateway.node import config_and_store

    with config_and_store(args.config) as (_, store):
        rows = list_cases(store, state=args.state)
    for r in rows:
        if args.json:
            print(json.dumps(r, ensure_ascii=False))
        else:
            print(f"{r['case_id']}  {r['kind']:<8} {r['priority']:<7} {r['state']:<10} "
                  f"{r['n_instances']:>4} inst  -> {r['destination']}  {r['study_instance_uid']}"
                  f"  {pn_display(r['patient_name'] or '') or '-'}")
    return 0


def _show(args: argparse.Namespace) -> int:
    from fenji.gateway.cases.case import get_case
    from fenji.gateway.node import config_and_store

    with config_and_store(args.config) as (cfg, store):
        case = get_case(store, args.case_id)
        if case is None:
            print(f"fenji case show: no case {args.case_id!r}", file=sys.stderr)
            return 1
        rec = store.query_one("SELECT r.* FROM receipts r JOIN outbox o ON o.bundle_id = "
                              "r.bundle_id WHERE o.case_id = ? ORDER BY r.received_at DESC",
                              (args.case_id,))
        case["receipt"] = json.loads(rec["receipt_json"]) if rec else None
        case["receipt_signer"] = rec["signer"] if rec else None
        from fenji.gateway.reading import report_return as reading

        reading.with_reports(store, case)
        q = store.query_one("SELECT verdict, attestation_json FROM quality WHERE case_id = ?",
                            (case["case_id"],))
    if args.json:
        print(json.dumps(case, indent=2, ensure_ascii=False))
        return 0
    for line in _summary(cfg, case, q):
        print(line)
    return 0


def _summary(cfg: Any, case: dict[str, Any], q: dict[str, Any] | None) -> list[str]:
    """``case show`` for a person: who, what, where it is, the quality verdict, reports."""
    from fenji.gateway.dicom.charset import pn_display

    att = json.loads(q["attestation_json"]) if q and q["attestation_json"] else {}
    over = att.get("override") if isinstance(att, dict) else None
    verdict = (q or {}).get("verdict") or "not checked"
    if over:
        verdict += f", overridden by {att.get('operator')}: {over.get('reason')}"
    out = [
        f"case      {case['case_id']}  ({case['kind']}, {case['priority']}, {case['service']})",
        f"patient   {pn_display(case.get('patient_name') or '') or '-'}  "
        f"ID {case.get('patient_id') or '-'}",
        f"study     {case.get('study_description') or '-'}  {case['study_instance_uid']}  "
        f"({len(case.get('instances') or [])} instances)",
        f"state     {case['state']}" + (f", read: {case['read_state']}"
                                        if case.get("read_state") else ""),
        f"route     {case.get('sending_node') or 'this node'} -> {case['destination']}",
        f"asked by  {case.get('requesting_physician') or '-'}: "
        f"{case.get('clinical_question') or '-'}",
        f"quality   {verdict}",
        f"released  {cfg.local_time(case.get('released_at'))} by "
        f"{case.get('released_by') or '-'}",
    ]
    if case.get("receipt_signer"):
        out.append(f"receipt   signed by {case['receipt_signer']} at "
                   f"{cfg.local_time((case.get('receipt') or {}).get('received_at'))}")
    for r in case.get("reports") or []:
        out.append(f"report    v{r.get('version')} {r.get('status')} by {r.get('reader')} "
                   f"{'CRITICAL ' if r.get('critical') else ''}"
                   f"received {cfg.local_time(r.get('received_at'))}")
    return out


def cli_user(cfg: config_mod.Config, name: str) -> object:
    """The configured user a CLI command acts as (the CLI runs on the node itself)."""
    from fenji.gateway.access.users import User
    from fenji.gateway.errors import LocalError

    u = cfg.user(name)
    if u is None:
        known = ", ".join(f"{x.name} ({x.role})" for x in cfg.users) or "none"
        raise LocalError(f"no user {name!r} in {cfg.source} (users: {known}); add one with "
                         "fenji user add")
    return User.of(u)


def _ack(args: argparse.Namespace) -> int:
    from fenji.gateway.node import config_and_store
    from fenji.gateway.reading import report_return as reading

    with config_and_store(args.config) as (cfg, store):
        out = reading.acknowledge(store, cfg, args.case_id, cli_user(cfg, args.by))  # type: ignore[arg-type]
    return common.emit(args, out, f"report v{out['version']} of case {out['case_id']} "
                                  f"acknowledged by {out['acknowledged_by']}")
