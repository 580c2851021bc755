"""CLI verbs: `fenji queue ls|pause|resume|retry`."""

from __future__ import annotations

import argparse
import json
import sys
import time

from fenji.gateway.cli import common


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    qsub = common.group(sub, "queue", "the outbox: what is being sent where")
    ls = qsub.add_parser("ls", parents=[common.CONFIG],
                         help="every job: state, attempts, bytes, next retry, error")
    ls.add_argument("--state", choices=("queued", "leased", "done", "dead"))
    ls.add_argument("--dest", help="only jobs for this destination")
    ls.add_argument("--json", action="store_true",
                    help="one JSON object per job, raw fields (priority 0/1/2, Unix times)")
    ls.set_defaults(func=_ls)
    for name, helptext in (("pause", "stop sending to a destination"),
                           ("resume", "send to a paused destination again")):
        a = qsub.add_parser(name, parents=[common.CONFIG], help=helptext)
        a.add_argument("dest", metavar="DEST")
        a.set_defaults(func=_pause, paused=(name == "pause"))
    r = qsub.add_parser("retry", parents=[common.CONFIG],
                        help="put a dead-lettered job back in the queue")
    r.add_argument("job_id", type=int, metavar="JOB")
    r.add_argument("--operator", default=None,
                   help="who retries it, for the audit ledger (default: the login name)")
    r.set_defaults(func=_retry)


# What the outbox's priority numbers mean (gateway/cases/case.py PRIORITIES).
PRIORITY_NAMES = {0: "STAT", 1: "urgent", 2: "routine"}


def _ls(args: argparse.Namespace) -> int:
    from fenji.gateway.node import config_and_store
    from fenji.routing.outbox_db import destinations, list_jobs

    with config_and_store(args.config) as (cfg, store):
        jobs = list_jobs(store, state=args.state, destination=args.dest)
        dests = {d["name"]: d for d in destinations(store)}
        # A report's way back is queued under its report id: show its case.
        report_case = {str(r["report_id"]): str(r["case_id"]) for r in store.query(
            "SELECT report_id, case_id FROM reports")}
    if args.dest and args.dest not in dests:
        print(f"fenji queue: unknown destination {args.dest!r} (known: "
              f"{', '.join(sorted(dests)) or 'none yet'})", file=sys.stderr)
        return 1
    now = time.time()
    if not args.json and jobs:
        print(f"times in {cfg.timezone}; priorities: STAT before urgent before routine")
        print(f"{'JOB':>5}  {'STATE':<7} {'PRIORITY':<8} {'CASE':<10} {'WHAT':<6} "
              f"{'TO':<18} {'SENT / TOTAL MB':>17} {'%':>4} {'TRIES':>5}  "
              f"{'QUEUED':<23}  NEXT")
    for j in jobs:
        d = dests.get(j["destination"], {})
        j["destination_paused"] = bool(d.get("paused"))
        j["breaker"] = d.get("breaker", "closed")
        if args.json:
            print(json.dumps(j))
            continue
        nxt = "-"
        if j["state"] == "queued":
            nxt = "now" if j["next_attempt_at"] <= now else (
                f"in {j['next_attempt_at'] - now:.0f} s "
                f"({cfg.local_time(j['next_attempt_at'])[11:19]})")
        elif j["state"] == "done":
            nxt = f"sent {cfg.local_time(j['done_at'])}"
        elif j["state"] == "dead":
            nxt = "gave up: fenji queue retry " + str(j["job_id"])
        # bytes_total -1: its bundle is still being encoded (routing/encoding.py)
        pct = 100 * j["bytes_sent"] / j["bytes_total"] if j["bytes_total"] > 0 else 0
        case_id = str(j["case_id"])
        what = "report" if case_id in report_case else "case"
        case_id = report_case.get(case_id, case_id)
        prio = PRIORITY_NAMES.get(int(j["priority"]), f"p{j['priority']}")
        print(f"{j['job_id']:>5}  {j['state']:<7} {prio:<8} {case_id[:10]:<10} {what:<6} "
              f"{str(j['destination'])[:18]:<18} "
              f"{j['bytes_sent'] / 1e6:8.2f} /{max(0, j['bytes_total']) / 1e6:7.2f} {pct:4.0f} "
              f"{j['attempts']:>5}  {cfg.local_time(j['created_at']):<23}  {nxt}")
        if j["last_error"]:
            print(f"{'':>7}last error: {str(j['last_error'])[:100]}")
    if not args.json:
        if not jobs:
            print("outbox empty")
        for d in dests.values():
            if d.get("requests"):
                allowed = f", allowed {d['allowed_bps'] / 1e6:.2f} Mbit/s" \
                    if d.get("allowed_bps") else ""
                print(f"link {d['name']}: {(d.get('throughput_bps') or 0) / 1e6:.2f} Mbit/s, "
                      f"RTT {d.get('rtt_ms') or 0:.0f} ms, errors {d['errors']}/"
                      f"{d['requests']} requests{allowed}"
                      f"{', PAUSED' if d.get('paused') else ''}, breaker {d['breaker']}")
    return 0


def _pause(args: argparse.Namespace) -> int:
    from fenji.gateway.node import config_and_store
    from fenji.routing.outbox_db import pause

    with config_and_store(args.config) as (cfg, store):
        pause(store, args.dest, args.paused,
              configured=[p.name for p in cfg.peers] + [e.name for e in cfg.egress])
    print(f"{args.dest}: {'paused' if args.paused else 'resumed'}")
    return 0


def _retry(args: argparse.Namespace) -> int:
    import getpass

    from fenji.gateway.audit import ledger
    from fenji.gateway.node import config_and_store
    from fenji.routing.outbox_db import requeue_dead

    # An unknown or live job is an OutboxError naming it: main() prints it, exit 2.
    with config_and_store(args.config) as (cfg, store):
        job = store.query_one("SELECT * FROM outbox WHERE job_id = ?", (args.job_id,))
        now = time.time()
        requeue_dead(store, args.job_id, now)
        assert job is not None  # requeue_dead refuses an unknown job
        ledger.record(store, "retried", node=cfg.node.name,
                      actor=args.operator or getpass.getuser(), role="operator",
                      obj=str(job["bundle_id"]), case_id=str(job["case_id"]), at=now,
                      detail={"destination": job["destination"], "job": args.job_id,
                              "last_error": str(job["last_error"] or "")[:500]})
    print(f"job {args.job_id} queued again")
    return 0
