"""CLI verb: `fenji ecg check RECORD...` -- QRS, heart rate and quality of ECG records.

Each RECORD is a WFDB record path (with or without ``.hea``), a DICOM ECG file,
an ECG cart's own file (HL7 aECG, SCP-ECG, GE MUSE / Philips XML, MFER, ISHNE,
Contec ECG90A: recognised by content), or a directory searched recursively for
WFDB and DICOM records.  One process checks them all;
with ``--json`` each record is one JSON line (field names below are stable).
A record that cannot be read gets an error line naming it; the others are still
checked and the exit status is 1 at the end.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from fenji.codecs.ecg import qrs
from fenji.codecs.ecg import quality as ecg_quality
from fenji.codecs.errors import FenjiError
from fenji.gateway.cli import common

# `fenji ecg check --json` fields: scripts depend on these names.
CHECK_FIELDS = ("record", "fs", "leads", "duration_s", "qrs", "heart_rate_bpm", "quality")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    esub = common.group(sub, "ecg", "check ECG records (QRS, heart rate, quality)")
    ck = esub.add_parser(
        "check", help="QRS detection and quality report per record",
        description="RECORD: WFDB record path (no extension needed), DICOM ECG file, "
                    "ECG cart file (aECG, SCP-ECG, MUSE/Philips XML, MFER, ISHNE, Contec), or "
                    "directory. Exit 1 if any record could not be read.")
    ck.add_argument("records", nargs="+", type=Path, metavar="RECORD")
    ck.add_argument("--json", action="store_true",
                    help="one JSON object per record: " + ", ".join(CHECK_FIELDS))
    ck.add_argument("--mains-hz", type=float, default=50.0,
                    help="powerline frequency to notch (default 50 Hz; 60 Hz grids)")
    ck.set_defaults(func=_check)


def _expand(path: Path) -> Iterator[Path]:
    """Records under ``path``: WFDB headers (as record paths) and DICOM files."""
    if path.is_dir():
        for f in sorted(path.rglob("*")):
            if not f.is_file():
                continue
            if f.suffix == ".hea":
                yield f.with_suffix("")
            elif f.suffix.lower() in (".dcm", ".dicom", "") and _is_dicom(f):
                yield f
    else:
        yield path.with_suffix("") if path.suffix == ".hea" else path


def _is_dicom(f: Path) -> bool:
    try:
        with f.open("rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def check_record(path: Path, mains_hz: float = 50.0) -> dict[str, Any]:
    """The ``--json`` object of one record (raises ``FenjiError`` if unreadable)."""
    from fenji.gateway.ecg import io as ecg_io

    rec = ecg_io.read_ecg(path)
    x = rec.physical_mv()
    thr = ecg_quality.EcgQualityThresholds(mains_hz=mains_hz)
    report, beats = ecg_quality.check_ecg(x, rec.fs_hz, rec.leads, thr)
    hr = qrs.heart_rate_bpm(beats, rec.fs_hz)
    quality = {"verdict": report["verdict"], "reasons": report["reasons"],
               "leads": report["leads"], "record": report["record"]}
    return {"record": str(path), "fs": rec.fs_hz, "leads": list(rec.leads),
            "duration_s": round(rec.duration_s, 3), "qrs": [int(b) for b in beats],
            "heart_rate_bpm": None if hr is None else round(hr, 1), "quality": quality}


def _summary(out: dict[str, Any]) -> str:
    q = out["quality"]
    hr = out["heart_rate_bpm"]
    lines = [f"{out['record']}: {q['verdict'].upper()}  {len(out['leads'])} leads at "
             f"{out['fs']:g} Hz, {out['duration_s']:g} s, {len(out['qrs'])} beats, "
             f"HR {'-' if hr is None else f'{hr:.0f} bpm'}"]
    lines += [f"  - {r}" for r in q["reasons"]]
    return "\n".join(lines)


def _check(args: argparse.Namespace) -> int:
    failed = 0
    for arg in args.records:
        if not arg.exists() and not arg.with_suffix(".hea").exists() and not \
                Path(str(arg) + ".hea").exists():
            print(f"fenji ecg check: {arg}: no such file, directory or WFDB record",
                  file=sys.stderr)
            failed += 1
            continue
        for path in _expand(arg):
            try:
                out = check_record(path, args.mains_hz)
            except (FenjiError, OSError, ValueError) as exc:
                print(f"fenji ecg check: {path}: {exc}", file=sys.stderr)
                failed += 1
                continue
            print(json.dumps(out, allow_nan=False, default=_json_default) if args.json
                  else _summary(out), flush=True)
    return 1 if failed else 0


def _json_default(o: object) -> object:
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
