"""CLI verbs: `fenji store ls|import|verify|du`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

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
