"""CLI verbs: `fenji store ls|import|verify|recover|du|migrate`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from fenji.gateway import config as config_mod
from fenji.gateway import ingest
from fenji.gateway.cli import common
from fenji.gateway.dicom.charset import pn_display

# `fenji store ls --json` field names: other tools depend on these exact names.
LS_FIELDS = ("sop_instance_uid", "sop_class_uid", "study_instance_uid", "series_instance_uid",
             "sha256", "size", "received_at", "calling_ae", "transfer_syntax_uid",
             "dataset_sha256")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    ssub = common.group(sub, "store", "inspect and feed the node's store")

    ls = ssub.add_parser("ls", parents=[common.CONFIG], help="list stored instances")
    ls.add_argument("--json", action="store_true",
                    help="one JSON object per instance: " + ", ".join(LS_FIELDS))
    ls.add_argument("--study", metavar="UID", help="only this Study Instance UID")
    ls.set_defaults(func=_ls)

    im = ssub.add_parser("import", parents=[common.CONFIG],
                         help="check and store DICOM files (Part 10) from disk",
                         description="Each file is checked like a C-STORE; rejected files go "
                                     "to quarantine with the reason. Exit 1 if any is rejected.")
    im.add_argument("paths", nargs="+", type=Path, metavar="PATH",
                    help="files or directories (searched recursively)")
    im.add_argument("--json", action="store_true", help="one JSON line per file")
    im.set_defaults(func=_import)

    ve = ssub.add_parser("verify", parents=[common.CONFIG],
                         help="re-hash every blob against the index")
    ve.set_defaults(func=_verify)

    rc = ssub.add_parser("recover", parents=[common.CONFIG],
                         help="remove temp files and unindexed blobs (also in an s3:// "
                              "store.blob_url, past their grace period)")
    rc.set_defaults(func=_recover)

    du = ssub.add_parser("du", parents=common.BOTH, help="disk usage of the store")
    du.set_defaults(func=_du)

    mi = ssub.add_parser(
        "migrate", parents=common.BOTH,
        help="move the store's index to PostgreSQL and/or its blobs to an S3 bucket",
        description="Copies the configured store (its node stopped) to --to-index and/or "
                    "--to-blobs, then re-reads every blob from the target and compares its "
                    "SHA-256, compares every table, and verifies the ledger's chain there. "
                    "A part left out stays where it is. Safe to run again after an "
                    "interruption. Progress on stderr; at the end, the [store] lines to put "
                    "in the config. Exit 1 if the target does not verify.")
    mi.add_argument("--to-index", metavar="URL", default="",
                    help="postgresql://user@host:port/db (the password from ~/.pgpass or "
                         "PGPASSWORD); left out: the index stays where it is")
    mi.add_argument("--to-blobs", metavar="URL", default="",
                    help="s3://bucket/prefix?endpoint=...&region=... (credentials from the "
                         "AWS environment or [store] blob_access_key_id); left out: the "
                         "blobs stay where they are")
    mi.add_argument("--verify-only", action="store_true",
                    help="copy nothing: check a finished migration's target against the source")
    mi.set_defaults(func=_migrate)


def _open(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from fenji.gateway.node import open_store

    cfg = config_mod.load(args.config)
    return cfg, open_store(cfg)


def _ls(args: argparse.Namespace) -> int:
    _, store = _open(args)
    try:
        if args.json:
            for row in store.instances(study_instance_uid=args.study):
                print(json.dumps({k: row[k] for k in LS_FIELDS}))
            return 0
        rows = store.query(
            "SELECT st.study_instance_uid, st.patient_id, st.patient_name, st.study_date, "
            "st.study_description, (SELECT group_concat(DISTINCT se.modality) FROM series se "
            "WHERE se.study_instance_uid = st.study_instance_uid) AS modality, "
            "(SELECT count(*) FROM instances i WHERE i.study_instance_uid = "
            "st.study_instance_uid) AS n, (SELECT c.case_id FROM cases c WHERE "
            "c.study_instance_uid = st.study_instance_uid ORDER BY c.created_at DESC LIMIT 1) "
            "AS case_id FROM studies st" + (" WHERE st.study_instance_uid = ?" if args.study
                                           else "") + " ORDER BY st.first_received_at",
            (args.study,) if args.study else ())
    finally:
        store.close()
    print(f"{'PATIENT':<28} {'ID':<12} {'DATE':<10} {'MOD':<6} {'DESCRIPTION':<22} "
          f"{'INST':>5}  {'CASE':<10} STUDY UID")
    for r in rows:
        d = str(r["study_date"] or "")
        print(f"{_cut(pn_display(r['patient_name'] or '') or '-', 28)} "
              f"{_cut(r['patient_id'] or '-', 12)} "
              f"{(d[:4] + '-' + d[4:6] + '-' + d[6:8]) if len(d) == 8 else (d or '-'):<10} "
              f"{_cut(r['modality'] or '-', 6)} {_cut(r['study_description'] or '-', 22)} "
              f"{r['n']:>5}  {(r['case_id'] or '-')[:10]:<10} {r['study_instance_uid']}")
    return 0


def _cut(text: str, width: int) -> str:
    """``text`` in ``width`` display columns (a Chinese character takes two)."""
    import unicodedata

    out, cols = "", 0
    for ch in text:
        w = 2 if unicodedata.east_asian_width(ch) in "WF" else 1
        if cols + w > width:
            break
        out, cols = out + ch, cols + w
    return out + " " * (width - cols)


def _files(paths: list[Path]) -> list[Path]:
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out.extend(sorted(q for q in p.rglob("*") if q.is_file()))
        else:
            out.append(p)
    return out


def _import(args: argparse.Namespace) -> int:
    cfg, store = _open(args)
    failed = 0
    limits = ingest.Limits.of(cfg)
    source = ingest.Source("import", "import")
    try:
        files = _files(args.paths)
        for i, path in enumerate(files, 1):
            result: dict[str, object] = {"path": str(path)}
            try:
                data = path.read_bytes()
            except OSError as exc:
                result.update(outcome="error", reason=f"cannot read: {exc.strerror}")
                failed += 1
                _emit(args, result, i, len(files))
                continue
            res = ingest.ingest(store, data, source, limits)
            result.update(res.as_dict())
            if not res.ok:
                failed += 1
            _emit(args, result, i, len(files))
    finally:
        store.close()
    return 1 if failed else 0


def _emit(args: argparse.Namespace, result: dict[str, object], i: int, n: int) -> None:
    if args.json:
        print(json.dumps(result), flush=True)
    else:
        extra = result.get("reason") or result.get("sha256", "")
        print(f"[{i}/{n}] {result['outcome']:<9} {result['path']}  {extra}", flush=True)


def _verify(args: argparse.Namespace) -> int:
    _, store = _open(args)
    try:
        n = store.count_instances()
        problems = store.verify()
    finally:
        store.close()
    for p in problems:
        print(p, file=sys.stderr)
    print(f"{n} instances checked, {len(problems)} problem(s)")
    return 1 if problems else 0


def _recover(args: argparse.Namespace) -> int:
    _, store = _open(args)
    try:
        out = store.recover(sweep_blobs=True)
    finally:
        store.close()
    print(" ".join(f"{k}={v}" for k, v in out.items()))
    return 0


def _du(args: argparse.Namespace) -> int:
    _, store = _open(args)
    try:
        u = store.usage()
    finally:
        store.close()
    if args.json:
        print(json.dumps(u))
    else:
        for k, v in u.items():
            print(f"{k:20} {v}")
    return 0



# Test hook: the migration SIGKILLs itself after this many progress steps (a cut
# at a known point, for the re-run test; never set in production).
CRASH_AFTER_ENV = "FENJI_MIGRATE_CRASH_AFTER"


class _Progress:
    """``migrate: blobs 12 of 40`` on stderr, at most ~100 lines per phase."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.steps = 0
        raw = os.environ.get(CRASH_AFTER_ENV, "")
        self.crash_after = int(raw) if raw.isdigit() else 0

    def __call__(self, what: str, done: int, total: int) -> None:
        self.steps += 1
        every = max(1, total // 100)
        if not self.quiet and (done == total or done % every == 0 or done == 1):
            print(f"migrate: {what} {done} of {total}", file=sys.stderr, flush=True)
        if self.crash_after and self.steps >= self.crash_after:
            os.kill(os.getpid(), signal.SIGKILL)


def _migrate(args: argparse.Namespace) -> int:
    from fenji.gateway.audit import ledger
    from fenji.gateway.errors import LocalError
    from fenji.gateway.keys import load_public
    from fenji.gateway.node import StartupError, lock_store, open_store
    from fenji.gateway.reading.report_return import trusted_centers
    from fenji.gateway.settings.blob_url import parse_blob_url
    from fenji.gateway.store import move as mv
    from fenji.gateway.store.blobs import BlobStoreError
    from fenji.gateway.store.db import StoreError
    from fenji.gateway.store.index import SQLITE, IndexUrlError, parse_url

    started = time.monotonic()
    if not args.to_index and not args.to_blobs:
        raise mv.MoveError("fenji store migrate: give --to-index URL and/or --to-blobs URL "
                           "(a part left out stays where it is)")
    cfg = config_mod.load(args.config)
    if args.to_index:
        try:
            dialect, path = parse_url(args.to_index, cfg.store_dir / "index.sqlite")
        except IndexUrlError as exc:  # its message would repeat the URL, password and all
            raise mv.MoveError(f"--to-index {mv.redact(args.to_index)!r}: expected "
                               "postgresql://user@host:port/db or sqlite:///path") from exc
        src_dialect, src_path = parse_url(cfg.store.index_url, cfg.store_dir / "index.sqlite")
        if src_dialect != SQLITE:
            raise mv.MoveError(f"store.index_url = {mv.redact(cfg.store.index_url)!r} is not "
                               "SQLite: move a PostgreSQL index with pg_dump / pg_restore")
        if dialect == SQLITE and Path(path).resolve() == Path(src_path).resolve():
            raise mv.MoveError(f"--to-index {mv.redact(args.to_index)!r} is the source's own "
                               "index")
    if args.to_blobs:
        parse_blob_url(args.to_blobs, key="--to-blobs")
        if args.to_blobs.strip() == cfg.store.blob_url.strip():
            raise mv.MoveError(f"--to-blobs {mv.redact(args.to_blobs)!r} is the source's own "
                               "blob_url")
    try:  # the node must be stopped: its lock, held until this process ends
        lock_fd = lock_store(cfg)
    except StartupError as exc:
        raise mv.MoveError(f"cannot migrate while a node runs on the store: {exc}; stop it "
                           "(and every process of the center) first") from exc
    tcfg = dataclasses.replace(cfg, store=dataclasses.replace(
        cfg.store, index_url=args.to_index or cfg.store.index_url,
        blob_url=args.to_blobs or cfg.store.blob_url))
    source = open_store(cfg)
    try:
        try:
            target = open_store(tcfg)
        except (IndexUrlError, StoreError, BlobStoreError) as exc:
            where = " and ".join(
                f"{what} {mv.redact(url)}" for what, url in
                (("index", args.to_index), ("blobs", args.to_blobs)) if url)
            raise mv.TargetUnreachable(f"target {where} unreachable: {exc}") from exc
        try:
            ledger.ensure_tables(source)
            ledger.ensure_tables(target)
            report = mv.move(source, target, copy_index=bool(args.to_index),
                             copy_blobs=bool(args.to_blobs), verify_only=args.verify_only,
                             progress=_Progress(quiet=False))
            pub = None
            try:
                pub = load_public(cfg.resolve(cfg.keys.public_key))
            except LocalError:
                pass
            audit = ledger.verify(target, public_key=pub, trusted=trusted_centers(cfg))
            if not audit.ok:  # say whether the move caused it
                was = ledger.verify(source, public_key=pub, trusted=trusted_centers(cfg))
                note = (" (the source's ledger has it too: not caused by the move)"
                        if not was.ok else "")
                for p in audit.problems:
                    report.problems.append(f"ledger on the target: {p.kind}: {p.message}{note}")
        finally:
            target.close()
    finally:
        source.close()
        os.close(lock_fd)
    seconds = time.monotonic() - started
    lines = {"index_url": mv.redact(tcfg.store.index_url),
             "blob_url": mv.redact(tcfg.store.blob_url)}
    out = {**report.to_dict(), "ledger": {"ok": audit.ok, "events": audit.n_events,
                                          "foreign_events": audit.n_foreign},
           "source": {"index_url": mv.redact(cfg.store.index_url) or str(source.db_path),
                      "blob_url": mv.redact(cfg.store.blob_url) or str(source.blob_dir)},
           "config": lines, "seconds": round(seconds, 3)}
    if args.json:
        print(json.dumps(out, ensure_ascii=False))
    else:
        _migrate_text(out, lines, tcfg.store.index_url != lines["index_url"])
    return 0 if report.ok else 1


def _migrate_text(out: dict[str, Any], lines: dict[str, str], had_password: bool) -> None:
    b, v = out["blobs"], out["verified"]
    print(f"rows: {sum(out['tables'].values())} in {len(out['tables'])} tables "
          f"({out['rows_copied']} copied now)")
    print(f"blobs: {b['total']} ({b['copied']} copied, {b['present']} already there, "
          f"{b['repaired']} repaired; {b['bytes_copied'] / 1e6:.1f} MB copied now); quarantine "
          f"{out['quarantine_blobs']['total']}; uploads in progress moved "
          f"{out['upload_parts']}")
    print(f"verified: {v['blobs']} blobs ({v['bytes'] / 1e6:.1f} MB) re-read with their SHA-256, "
          f"{v['tables']} tables, ledger {'ok' if out['ledger']['ok'] else 'FAILED'} "
          f"({out['ledger']['events']} events) in {out['seconds']:.1f} s")
    for p in out["problems"]:
        print(f"PROBLEM: {p}", file=sys.stderr)
    if out["problems"]:
        print(f"NOT verified: {len(out['problems'])} problem(s); run again to repair, the "
              "center stays on its old store")
        return
    print("\nTo switch the center over, put this in its config (then start the node):\n")
    print("[store]")
    print(f'index_url = "{lines["index_url"]}"')
    print(f'blob_url = "{lines["blob_url"]}"')
    if had_password:
        print("# the database password: in ~/.pgpass or PGPASSWORD, not in this file")
