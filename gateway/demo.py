"""`make demo`: the main job, end to end, on this machine.

For now (issue 2): start a township edge node, push the sample studies in
``../shared/data/dicom`` into it with DCMTK ``storescu`` exactly as a modality
would, and print what was stored.  Later issues grow this into the township ->
county -> center round trip.

Ends with one JSON line; exits non-zero if any well-formed sample was not
stored with the right hash.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

from fenji.gateway.dcmtk import echoscu, storescu
from fenji.gateway.harness import NodeProcess
from fenji.gateway.validate import Rejected, check_part10

REPO = Path(__file__).resolve().parents[1]


def _shared_dicom() -> Path:
    env = os.environ.get("FENJI_SHARED_DATA")
    base = Path(env) if env else REPO.parent / "shared" / "data"
    return base / "dicom"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fenji.gateway.demo",
                                 description="Run the fenji demo end to end on this machine.")
    ap.add_argument("--workdir", type=Path, default=REPO / "demo-run",
                    help="where the demo's node lives (default: ./demo-run, wiped first)")
    ap.add_argument("--data", type=Path, default=None, help="DICOM samples (default: "
                    "../shared/data/dicom)")
    args = ap.parse_args(argv)
    data = args.data or _shared_dicom()
    if not data.is_dir():
        print(f"demo: sample data not found at {data}", file=sys.stderr)
        return 2
    t0 = time.monotonic()
    shutil.rmtree(args.workdir, ignore_errors=True)
    files = sorted(data.rglob("*.dcm"))
    good, bad = [], []
    for f in files:
        try:
            check_part10(f.read_bytes())
            good.append(f)
        except Rejected:
            bad.append(f)
    print(f"[1/4] {len(good)} sample instances in {data} ({len(bad)} deliberately broken "
          f"ones will be sent too, and must be refused)", flush=True)
    edge = NodeProcess(args.workdir / "township-edge", name="township-edge", role="edge",
                       ae_title="FENJI", allow_ae=["CT1", "ECHO"], workers=2)
    edge.start()
    try:
        print(f"[2/4] node township-edge listening on 127.0.0.1:{edge.dicom_port} "
              f"(config {edge.config})", flush=True)
        if not echoscu(edge.dicom_port, calling="ECHO"):
            print("demo: C-ECHO failed", file=sys.stderr)
            return 1
        print("[3/4] C-ECHO ok; sending with DCMTK storescu as AE CT1 ...", flush=True)
        sent = storescu(good, edge.dicom_port, calling="CT1")
        refused = storescu([b for b in bad if b.name != "deflate-bomb.dcm"], edge.dicom_port,
                           calling="CT1")
        rows = edge.stored()
        ok = _verify(edge, rows)
        by_study: dict[str, Counter[str]] = {}
        sizes: Counter[str] = Counter()
        for r in rows:
            study = str(r["study_instance_uid"])
            by_study.setdefault(study, Counter())[str(r["sop_class_uid"])] += 1
            sizes[study] += int(str(r["size"]))
        print(f"[4/4] stored {len(rows)} instances in {len(by_study)} studies:", flush=True)
        for study, classes in sorted(by_study.items(), key=lambda kv: -sizes[kv[0]]):
            n = sum(classes.values())
            print(f"    study {study[:48]:<48} {n:>3} instances {sizes[study] / 1e6:8.2f} MB")
        missing = [str(p) for p in good if p not in sent.sent]
        wrongly_stored = len(refused.sent)  # only DCMTK-repaired ones may pass
        summary = {
            "instances_offered": len(good), "instances_stored": len(rows),
            "instances_sent_ok": len(sent.sent), "missing": missing,
            "malformed_offered": len(bad) - 1, "malformed_accepted_after_dcmtk_repair":
                wrongly_stored, "hashes_verified": ok,
            "bytes_stored": sum(sizes.values()), "elapsed_s": round(time.monotonic() - t0, 2),
        }
        print(json.dumps(summary))
        return 0 if ok and not missing else 1
    finally:
        edge.stop()


def _verify(node: NodeProcess, rows: list[dict[str, object]]) -> bool:
    blobs = node.directory / "store" / "blobs"
    for r in rows:
        sha = str(r["sha256"])
        if hashlib.sha256((blobs / sha[:2] / sha[2:4] / sha).read_bytes()).hexdigest() != sha:
            print(f"demo: hash mismatch for {r['sop_instance_uid']}", file=sys.stderr)
            return False
    return True


if __name__ == "__main__":
    sys.exit(main())
