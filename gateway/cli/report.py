"""CLI verb: `fenji report verify` -- who signed which report, and does it hold.

``fenji report verify FILE`` checks a report SR or PDF that fenji wrote (the
signed JSON, signature and endorsement travel in its private block), or a JSON
file ``{"report", "signature", "endorsement"}``.  ``--case CASE`` (with
``--config``) checks every version of a case's reports in the node's store,
against the manifest and attestation the node holds for that case.

Trust: the reader's key is trusted only through an endorsement signed by a
center's node key.  Centers are given with ``--trust-center NAME=KEY`` (64 hex
digits or a PEM path) or taken from ``--config``: every ``[[peers]]`` and
``[[known_nodes]]`` key, and the node's own key if it is a center.

Exit status: 0 every object verified, 1 a verification failed (each problem is
printed), 2 the input could not be read.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from fenji.gateway.cli import common
from fenji.gateway.cli.keys import add_passphrase_args, read_passphrase
from fenji.gateway.errors import FenjiError, PeerError

# `fenji report verify --json` fields (one object per line): scripts depend on these.
VERIFY_FIELDS = ("file", "ok", "kind", "report_id", "version", "supersedes", "amendment_reason",
                 "reader", "reader_display", "reader_key", "center", "endorsed_by", "signed_at",
                 "case_id", "study_instance_uid", "n_instances", "manifest_sha256",
                 "attestation_sha256", "critical", "problems", "notes")


class Unreadable(PeerError):
    """The input is not a report fenji can read (exit status 2)."""


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    rsub = common.group(sub, "report", "signed reports: sign (center), verify who signed what")
    _add_submit(rsub)
    _add_verify(rsub)
    _add_pdf(rsub)


def _add_submit(rsub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    s = rsub.add_parser(
        "submit", parents=common.BOTH,
        help="a reader signs a report for a claimed case (at the center)",
        description="Signs the report with the reader's key (keys/readers/NAME.key), writes "
                    "the SR and PDF into the case's study and queues them back to the "
                    "sending hospital.  The case must be claimed by the reader (fenji worklist "
                    "claim).  With --amend-reason it supersedes the current version.  "
                    "--from-file takes an SR or encapsulated PDF made by the reader's viewer.")
    s.add_argument("case_id", metavar="CASE")
    s.add_argument("--reader", required=True, help="a configured reader")
    s.add_argument("--findings", default="", help="findings (any language)")
    s.add_argument("--impression", default="", help="impression / conclusion")
    s.add_argument("--critical", action="store_true",
                   help="a critical finding: flagged at the sending hospital at once")
    s.add_argument("--amend-reason", default=None, metavar="TEXT",
                   help="amend the current report (a new version; the old one is kept)")
    s.add_argument("--from-file", type=Path, default=None, metavar="DCM",
                   help="the report as a DICOM SR or encapsulated PDF from the viewer")
    add_passphrase_args(s)
    s.set_defaults(func=_submit)


def _submit(args: argparse.Namespace) -> int:

    from fenji.gateway.cli.case import cli_user
    from fenji.gateway.keys import is_encrypted
    from fenji.gateway.node import config_and_store
    from fenji.gateway.reading import report_return, viewer

    with config_and_store(args.config) as (cfg, store):
        user = cli_user(cfg, args.reader)
        priv, _ = cfg.reader_key_paths(args.reader)
        # Signing is the reader's act: their passphrase unlocks their key, for this
        # signature only (asked at the terminal, or --passphrase-file / env for scripts).
        phrase = (read_passphrase(args, args.reader)
                  if priv.exists() and is_encrypted(priv) else None)
        if args.from_file is not None:
            try:
                data = args.from_file.read_bytes()
            except OSError as exc:
                print(f"fenji report submit: cannot read {args.from_file}: {exc}",
                      file=sys.stderr)
                return 2
            row = viewer.report_from_viewer(store, cfg, user, data, args.case_id,  # type: ignore[arg-type]
                                            critical=args.critical,
                                            amendment_reason=args.amend_reason,
                                            passphrase=phrase)
        else:
            row = report_return.submit_report(store, cfg, args.case_id, user,  # type: ignore[arg-type]
                                              findings=args.findings,
                                              impression=args.impression,
                                              critical=args.critical,
                                              amendment_reason=args.amend_reason,
                                              passphrase=phrase)
    out = {k: row[k] for k in ("report_id", "case_id", "version", "status", "reader",
                               "critical", "supersedes", "bundle_id")}
    return common.emit(args, out,
                       f"report v{out['version']} of case {out['case_id']} signed by "
                       f"{out['reader']} ({out['report_id']}); queued back to the sending "
                       f"hospital{' — CRITICAL' if out['critical'] else ''}")


def _add_verify(rsub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    v = rsub.add_parser(
        "verify", help="check a report's signatures and that its content is what was signed",
        description="FILE: a report SR or PDF (.dcm) written by fenji, or a JSON file "
                    '{"report", "signature", "endorsement"}. Exit 0 verified, 1 failed, '
                    "2 unreadable input.")
    v.add_argument("file", nargs="?", type=Path, metavar="FILE")
    v.add_argument("--case", metavar="CASE",
                   help="verify every version of this case's reports in the store "
                        "(needs --config)")
    v.add_argument("--trust-center", action="append", default=[], metavar="NAME=KEY",
                   help="a center whose node key endorses readers: 64 hex digits or a PEM "
                        "path (repeatable)")
    v.add_argument("--config", "-c", type=Path, metavar="FILE",
                   help="trust this node's peers and known nodes (and itself, if a center)")
    v.add_argument("--manifest-sha256", metavar="HEX",
                   help="the manifest hash the report must be signed over")
    v.add_argument("--attestation", type=Path, metavar="JSON",
                   help="the quality attestation (JSON file) the report must be signed over")
    v.add_argument("--json", action="store_true",
                   help="one JSON object per report object: " + ", ".join(VERIFY_FIELDS))
    v.set_defaults(func=_verify, needs_config=False)  # --config only adds trust


def _add_pdf(rsub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    d = rsub.add_parser("pdf", parents=[common.CONFIG],
                        help="write a case's report PDF (for print or the HIS)",
                        description="Writes the PDF of the case's current report (or "
                                    "--version N).  It carries the signed report inside, so "
                                    "`fenji report verify FILE.pdf` checks it anywhere.")
    d.add_argument("case_id", metavar="CASE")
    d.add_argument("--out", "-o", type=Path, required=True, metavar="FILE")
    d.add_argument("--version", type=int, default=None, help="default: the current one")
    d.set_defaults(func=_pdf)


def _pdf(args: argparse.Namespace) -> int:
    from fenji.gateway.node import config_and_store
    from fenji.gateway.reading.errors import NotFound
    from fenji.gateway.reading.report_return import report_pdf

    try:
        with config_and_store(args.config) as (_, store):
            data = report_pdf(store, args.case_id, args.version)
    except NotFound as exc:
        print(f"fenji report pdf: {exc}", file=sys.stderr)
        return 2
    args.out.write_bytes(data)
    print(f"wrote {args.out} ({len(data)} bytes)")
    return 0


def _trusted(args: argparse.Namespace, cfg: Any) -> dict[str, Any] | None:
    from fenji.gateway.keys import public_from_config
    from fenji.gateway.reading.report_return import trusted_centers

    out: dict[str, Any] = (trusted_centers(cfg, self_only_if_center=True)
                           if cfg is not None else {})
    for spec in args.trust_center:
        name, sep, key = spec.partition("=")
        if not sep or not name or not key:
            raise Unreadable(f"--trust-center {spec!r}: expected NAME=KEY (64 hex digits or a "
                             "PEM path)")
        try:
            out[name] = public_from_config(key, Path.cwd())
        except (FenjiError, ValueError) as exc:
            raise Unreadable(f"--trust-center {spec!r}: {exc}") from exc
    return out if (out or cfg is not None) else None


def _read(path: Path) -> tuple[str, Any]:
    """``("dicom", Dataset)`` or ``("json", dict)``; :class:`Unreadable` otherwise."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise Unreadable(f"{path}: {exc.strerror or exc}") from exc
    if data[:5] == b"%PDF-":
        return "pdf", data
    if data.lstrip()[:1] == b"{":
        try:
            obj = json.loads(data)
        except ValueError as exc:
            raise Unreadable(f"{path}: not valid JSON: {exc}") from exc
        inner = obj.get("signed", obj) if isinstance(obj, dict) else None
        if not isinstance(inner, dict) or not isinstance(inner.get("report"), dict):
            raise Unreadable(f'{path}: a JSON report needs {{"report", "signature", '
                             '"endorsement"}')
        return "json", obj
    import io

    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=len(data) < 132 or data[128:132] != b"DICM")
        if "SOPClassUID" not in ds:
            raise InvalidDicomError("no SOP Class UID")
    except (InvalidDicomError, ValueError, TypeError, EOFError, OSError, AttributeError,
            KeyError) as exc:
        raise Unreadable(f"{path}: neither a DICOM file nor a JSON report ({exc})") from exc
    return "dicom", ds


def _check_one(kind: str, obj: Any, trusted: dict[str, Any] | None,
               manifest: str | None, att: dict[str, Any] | None) -> Any:
    from fenji.gateway import reports

    if kind == "json":
        signed = obj.get("signed", obj)
        end = obj.get("endorsement") or signed.get("endorsement")
        return reports.verify_signed({"report": signed.get("report"),
                                      "signature": signed.get("signature")},
                                     end, trusted, manifest_sha256=manifest, attestation=att)
    if kind == "pdf":
        return reports.verify_pdf(obj, trusted, manifest_sha256=manifest, attestation=att)
    return reports.verify_dataset(obj, trusted_centers=trusted, manifest_sha256=manifest,
                                  attestation=att)


def _print(label: str, res: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"file": label, **res.summary()}, ensure_ascii=False), flush=True)
        return
    s = res.summary()
    amend = (f" amends {s['supersedes']} (reason: {s['amendment_reason']})"
             if s["supersedes"] else "")
    lines = [
        f"{label}: {s['kind']} report {s['report_id']} version {s['version']}{amend}",
        f"  reader      {s['reader_display']} ({s['reader']}), key {s['reader_key']}",
        f"  center      {s['center']}; endorsement "
        + (f"verified with trusted key of {s['endorsed_by']!r}" if s["endorsed_by"]
           else "NOT verified"),
        f"  signed at   {s['signed_at']}",
        f"  case        {s['case_id']}, study {s['study_instance_uid']}, "
        f"{s['n_instances']} instances",
        f"  manifest    {s['manifest_sha256']}",
        f"  attestation {s['attestation_sha256'] or '- (none)'}",
        f"  critical    {'YES' if s['critical'] else 'no'}",
    ]
    lines += [f"  note: {n}" for n in s["notes"]]
    if res.ok:
        lines.append("  OK")
    else:
        lines.append(f"  FAILED ({len(s['problems'])} problem"
                     f"{'s' if len(s['problems']) != 1 else ''}):")
        lines += [f"  - {p}" for p in s["problems"]]
    print("\n".join(lines), flush=True)


def _case_objects(cfg: Any, config_path: Path, case_id: str
                  ) -> tuple[list[tuple[str, str, Any]], str | None, dict[str, Any] | None]:
    """The stored report objects of a case (JSON form, SR, PDF per version)."""
    import io

    import pydicom

    from fenji.gateway.node import config_and_store

    objs: list[tuple[str, str, Any]] = []
    with config_and_store(config_path) as (_, store):
        case = store.query_one("SELECT * FROM cases WHERE case_id = ?", (case_id,))
        if case is None:
            raise Unreadable(f"no case {case_id!r} in {cfg.store_dir}")
        q = store.query_one("SELECT attestation_json FROM quality WHERE case_id = ?",
                            (case_id,))
        att = json.loads(q["attestation_json"]) if q and q["attestation_json"] else None
        rows = store.query("SELECT * FROM reports WHERE case_id = ? ORDER BY version DESC",
                           (case_id,))
        if not rows:
            raise Unreadable(f"case {case_id} has no reports at {cfg.node.name}")
        for r in rows:
            label = f"case {case_id} v{r['version']}"
            objs.append((f"{label} json", "json", {
                "report": json.loads(r["report_json"]), "signature": r["signature"],
                "endorsement": json.loads(r["endorsement_json"] or "{}")}))
            for kind, uid in (("sr", r["sr_sop_instance_uid"]),
                              ("pdf", r["pdf_sop_instance_uid"])):
                if not uid:
                    continue
                row = store.query_one("SELECT sha256 FROM instances WHERE "
                                      "sop_instance_uid = ?", (uid,))
                if row is None:
                    continue
                ds = pydicom.dcmread(io.BytesIO(store.read_blob(row["sha256"])))
                objs.append((f"{label} {kind}", "dicom", ds))
        return objs, case.get("manifest_sha256"), att


def _verify(args: argparse.Namespace) -> int:
    cfg = None
    try:
        if args.config is not None:
            from fenji.gateway import config as config_mod

            cfg = config_mod.load(args.config)
        trusted = _trusted(args, cfg)
        att = None
        if args.attestation is not None:
            try:
                att = json.loads(args.attestation.read_text())
            except (OSError, ValueError) as exc:
                raise Unreadable(f"--attestation {args.attestation}: {exc}") from exc
        manifest = args.manifest_sha256
        if args.case:
            if cfg is None or args.file is not None:
                raise Unreadable("--case needs --config and no FILE")
            objs, case_manifest, case_att = _case_objects(cfg, args.config, args.case)
            manifest = manifest or case_manifest
            att = att if att is not None else case_att
        elif args.file is None:
            raise Unreadable("give FILE or --case CASE")
        else:
            kind, obj = _read(args.file)
            objs = [(str(args.file), kind, obj)]
    except (Unreadable, FenjiError) as exc:
        print(f"fenji report verify: {exc}", file=sys.stderr)
        return 2
    failed = 0
    for label, kind, obj in objs:
        res = _check_one(kind, obj, trusted, manifest, att)
        _print(label, res, args.json)
        failed += not res.ok
    return 1 if failed else 0
