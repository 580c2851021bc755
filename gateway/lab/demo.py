"""`make demo`: the main job, end to end, on this machine.

A township edge, a county relay and a regional center run as real `fenji node`
processes on loopback, connected through emulated links (satellite between
township and county, the provincial network between county and center).
The sample CT, CR, US and ECG studies are pushed into the edge with DCMTK
`storescu` exactly as modalities would; the CT goes STAT with a clinical
question, the others routine or urgent; each passes the quality gate (or is
held and overridden with a reason, shown); the edge sends, the relay stores
and forwards, the center verifies every instance against the SHA-256 it had
at ingest.  Progress is printed while it runs; the last line is one JSON
object.  Exit status is non-zero if anything was not delivered and verified.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pydicom

from fenji.gateway.cases import states
from fenji.gateway.dicom.charset import pn_display
from fenji.gateway.lab.dcmtk import echoscu, storescu
from fenji.gateway.lab.harness import NodeProcess, fenji_cmd

REPO = Path(__file__).resolve().parents[2]  # gateway/lab/demo.py -> the source tree


def _shared_dicom() -> Path:
    env = os.environ.get("FENJI_SHARED_DATA")
    base = Path(env) if env else REPO.parent / "shared" / "data"
    return base / "dicom"


class Link:
    """A link emulator process between two nodes (python -m fenji.routing.linkemu.proxy)."""

    def __init__(self, profile: str, target_port: int, seed: int, log: Path) -> None:
        self.log = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fenji.routing.linkemu.proxy", "--profile", profile, "--listen",
             "127.0.0.1:0", "--target", f"127.0.0.1:{target_port}", "--seed", str(seed)],
            stdout=subprocess.PIPE, stderr=self.log, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"link emulator ({profile}) did not start; see {log}")
        info = json.loads(line)
        self.port = int(str(info["listen"]).rsplit(":", 1)[1])
        self.profile = profile

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def _shared_ecg_formats() -> Path:
    return _shared_dicom().parent / "ecg" / "formats"


# A township patient as a township CT writes her: GB18030, declared as such.
TOWNSHIP_PATIENT = ("Wang^XiaoDong=王^小东", "TS-0001")
TOWNSHIP_STUDY = "头颅平扫"  # plain head CT
ECG_PATIENT = ("Li^XiuYing=李^秀英", "TS-0002")


def _township_ct(files: list[Path], out: Path) -> list[Path]:
    """The shared CT rewritten as a township scanner sends it: Specific Character Set
    GB18030, a Chinese patient name and study description, and UIDs of its own."""
    from pydicom.uid import generate_uid

    out.mkdir(parents=True, exist_ok=True)
    written = []
    for f in files:
        ds = pydicom.dcmread(f)
        for kw in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
            setattr(ds, kw, generate_uid(entropy_srcs=[str(getattr(ds, kw)), "gb18030"]))
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.SpecificCharacterSet = "GB18030"
        ds.PatientName, ds.PatientID = TOWNSHIP_PATIENT
        ds.StudyDescription = TOWNSHIP_STUDY
        target = out / f.name
        ds.save_as(target, enforce_file_format=True)
        written.append(target)
    return written


def _post_ecg_file(node: NodeProcess, path: Path, user: str, patient: tuple[str, str]
                   ) -> tuple[int, dict[str, Any]]:
    """An ECG cart's own export file through POST /api/ecg (multipart), as a cart's
    uploader or the technician's browser sends it."""
    boundary = "fenji-demo-" + os.urandom(8).hex()
    parts = []
    for name, value in (("patient_name", patient[0]), ("patient_id", patient[1])):
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
                     .encode() + value.encode("utf-8") + b"\r\n")
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
                 f'filename="{path.name}"\r\nContent-Type: application/octet-stream\r\n\r\n'
                 .encode() + path.read_bytes() + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    req = urllib.request.Request(f"{node.http_url}/api/ecg", data=body, method="POST", headers={
        **node.auth(user), "Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:  # noqa: S310 - loopback only
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def _get_json(url: str, headers: dict[str, str] | None = None) -> Any:
    try:
        req = urllib.request.Request(url, headers=headers or {})
        with urllib.request.urlopen(req, timeout=10) as r:  # noqa: S310 - loopback only
            return json.loads(r.read())
    except OSError:
        return None


def _cli(node: NodeProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*fenji_cmd(), *args, "--config", str(node.config)],
                          capture_output=True, text=True, timeout=600)


def _request(method: str, url: str, headers: dict[str, str], body: Any = None,
             accept: str = "application/json") -> tuple[int, bytes]:
    data = json.dumps(body, ensure_ascii=False).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={**headers, "Accept": accept,
                                          "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:  # noqa: S310 - loopback only
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _read_and_report(center: NodeProcess, case_id: str, study: str) -> dict[str, Any] | None:
    """A scripted reader: worklist, claim, open the study over WADO-RS, sign a report."""
    h = center.auth("dr.wang")
    base = center.web_url
    status, body = _request("GET", f"{base}/api/worklist", h)
    items = json.loads(body) if status == 200 else []
    mine = [c for c in items if c["case_id"] == case_id]
    print(f"      reader dr.wang: worklist has {len(items)} case(s); first: "
          f"{items[0]['priority'] if items else '-'} "
          f"{items[0]['clinical_question'] if items else ''}", flush=True)
    for c in items:
        print(f"        {c['priority']:<8} {c['service']:<8} patient "
              f"{pn_display(str(c.get('patient_name') or '')) or '-'}  "
              f"{c.get('study_description') or ''}", flush=True)
    if not mine:
        print(f"demo: STAT case {case_id} not on the reader's worklist ({status})",
              file=sys.stderr)
        return None
    status, body = _request("POST", f"{base}/api/worklist/{case_id}/claim", h, {})
    if status != 200:
        print(f"demo: claim failed: {status} {body[:200]!r}", file=sys.stderr)
        return None
    t = time.monotonic()
    status, body = _request("GET", f"{base}/dicom-web/studies/{study}", h,
                            accept='multipart/related; type="application/dicom"; '
                                   'transfer-syntax=*')
    print(f"      reader opened the study over WADO-RS: HTTP {status}, "
          f"{len(body) / 1e6:.1f} MB in {time.monotonic() - t:.2f} s", flush=True)
    status, body = _request("POST", f"{base}/api/cases/{case_id}/reports", h, {
        "findings": "右侧额颞部硬膜下新月形高密度影，最厚约8 mm，中线结构左移约4 mm。"
                    " Right frontotemporal crescentic hyperdense subdural collection, 8 mm, "
                    "midline shift 4 mm.",
        "impression": "急性右侧硬膜下血肿，建议神经外科急会诊。 Acute right subdural "
                      "haematoma: urgent neurosurgical referral.",
        "critical": True})
    if status != 201:
        print(f"demo: report submission failed: {status} {body[:300]!r}", file=sys.stderr)
        return None
    rep: dict[str, Any] = json.loads(body)
    print(f"      reader signed report {rep['report_id'][:24]}... v{rep['version']} "
          f"(critical) for the STAT case", flush=True)
    return rep


def _pdf_text(node: NodeProcess, case_id: str) -> str:
    """The text of the report PDF that came back (pdftotext), as a physician reads it."""
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(node.directory) / "store"
        import sqlite3

        con = sqlite3.connect(f"file:{store / 'index.sqlite'}?mode=ro", uri=True)
        try:
            row = con.execute(
                "SELECT i.sha256 FROM reports r JOIN instances i ON i.sop_instance_uid = "
                "r.pdf_sop_instance_uid WHERE r.case_id = ? ORDER BY r.version DESC LIMIT 1",
                (case_id,)).fetchone()
        finally:
            con.close()
        if row is None:
            return ""
        ds = pydicom.dcmread(store / "blobs" / row[0][:2] / row[0][2:4] / row[0])
        pdf = Path(tmp) / "report.pdf"
        pdf.write_bytes(bytes(ds.EncapsulatedDocument).rstrip(b"\0"))
        r = subprocess.run(["pdftotext", "-enc", "UTF-8", str(pdf), "-"], capture_output=True,
                           text=True, timeout=60)
        return r.stdout


def _wait_report(edge: NodeProcess, case_id: str, deadline: float) -> dict[str, Any] | None:
    while time.monotonic() < deadline:
        case = _get_json(f"{edge.http_url}/api/cases/{case_id}", edge.auth("ops"))
        reps = (case or {}).get("reports") or []
        if reps and reps[0].get("received_at"):
            # reported, amended, acknowledged: set only when the signatures verify
            verified = case.get("state") in states.HAS_REPORT
            return {"received_at": float(reps[0]["received_at"]), "verified": verified,
                    "report": reps[0],
                    "critical": case.get("critical")}
        time.sleep(0.3)
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fenji.gateway.lab.demo",
                                 description="township -> county -> center round trip on "
                                             "this machine, through emulated links")
    ap.add_argument("--workdir", type=Path, default=REPO / "demo-run",
                    help="where the demo's nodes live (default: ./demo-run, wiped first)")
    ap.add_argument("--data", type=Path, default=None,
                    help="DICOM samples (default: ../shared/data/dicom)")
    ap.add_argument("--uplink", default="satellite",
                    help="link profile township -> county (default: satellite)")
    ap.add_argument("--timeout", type=float, default=900, help="give up after this many s")
    ap.add_argument("--keep", action="store_true",
                    help="keep the nodes running at the end (Ctrl-C stops them), for a person "
                         "to look at the web console (make demo KEEP=1)")
    args = ap.parse_args(argv)
    data = args.data or _shared_dicom()
    if not data.is_dir():
        print(f"demo: sample data not found at {data}", file=sys.stderr)
        return 2
    t0 = time.monotonic()
    work = args.workdir
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    cart_file = _shared_ecg_formats() / "ge_muse_xml" / "guangxi_teaching_sinus_rhythm.xml"
    studies = {
        "CT head (STAT)": (_township_ct(sorted((data / "ct").glob("CT_*.dcm")),
                                        work / "township-ct-gb18030"), "stat",
                           "headache, fall at home: bleed?"),
        "CR extremity": ([data / "cr" / "RG3_UNC.dcm"], "routine", "fracture?"),
        "US abdomen": ([data / "us" / "US1_UNC.dcm"], "routine", "gallstones?"),
        "ECG 12-lead (cart file)": ([cart_file], "urgent", "palpitations"),
    }
    edge = NodeProcess(work / "township-edge", name="township-edge", role="edge",
                       allow_ae=["CT1", "ECHO"], workers=1,
                       users={"ops": "operator", "tech.zhang": "technician"})
    # The requesting physician of the demo's cases ("--physician Dr. Ma"): their page
    # lists the cases whose requesting physician is their name or display name.
    edge.add_user("dr.ma", "physician", display_name="Dr. Ma")
    relay = NodeProcess(work / "county-relay", name="county-relay", role="relay",
                        allow_ae=["ECHO"], workers=1)
    center = NodeProcess(work / "regional-center", name="regional-center", role="center",
                         allow_ae=["ECHO"], workers=1, users={"ops": "operator"})
    center.add_user("dr.wang", "reader", services=("imaging", "ecg"),
                    display_name="王医生 (Dr. Wang), attending radiologist")
    center.enable_web()
    with open(center.config, "a", encoding="utf-8") as fh:  # the fee schedule (yuan)
        fh.write('\n[[services]]\nname = "imaging"\nprice = 80.0\ninviting_share = 0.2\n'
                 '\n[[services]]\nname = "ecg"\nprice = 30.0\ninviting_share = 0.2\n')
    links: list[Link] = []
    nodes = [center, relay, edge]
    try:
        # Links first (they only need the target ports), then peers, then nodes.
        up = Link(args.uplink, relay.http_port, 1, work / "link-township-county.log")
        links.append(up)
        down = Link("provincial", center.http_port, 2, work / "link-county-center.log")
        links.append(down)
        edge.add_peer(relay, default=True, url=f"http://127.0.0.1:{up.port}")
        relay.add_peer(edge)
        relay.add_peer(center, default=True, url=f"http://127.0.0.1:{down.port}")
        center.add_peer(relay, default=True)  # reports go back down through the relay
        edge.add_known_node(center)  # to check the center's endorsement of its readers
        # The center keeps the township's history only as signed by the township:
        # it needs the edge's key (the relay forwards, it cannot vouch for it).
        center.add_known_node(edge)
        relay.add_known_node(center)
        for n in nodes:
            n.start()
        print(f"[1/8] nodes up: township-edge (DICOM :{edge.dicom_port}) --{args.uplink}--> "
              f"county-relay --provincial--> regional-center", flush=True)
        if not echoscu(edge.dicom_port, calling="ECHO"):
            print("demo: C-ECHO to the edge failed", file=sys.stderr)
            return 1
        raw_bytes = 0
        study_uids: dict[str, str] = {}
        for label, (files, _, _) in studies.items():
            if files[0].suffix.lower() == ".xml":  # the ECG cart's own export file
                status, res = _post_ecg_file(edge, files[0], "tech.zhang", ECG_PATIENT)
                if status not in (200, 201):
                    print(f"demo: ECG cart file refused ({status}): {res}", file=sys.stderr)
                    return 1
                raw_bytes += files[0].stat().st_size
                study_uids[label] = str(res["study_instance_uid"])
                print(f"      {label}: {files[0].name} (GE MUSE XML) -> DICOM 12-lead ECG, "
                      f"{len(res.get('leads') or [])} leads, gate: "
                      f"{(res.get('quality') or {}).get('verdict')}", flush=True)
                continue
            pushed = storescu(files, edge.dicom_port, calling="CT1")
            if len(pushed.sent) != len(files):
                print(f"demo: storescu failed for {label}: {pushed.failed}", file=sys.stderr)
                return 1
            raw_bytes += sum(f.stat().st_size for f in files)
            study_uids[label] = str(pydicom.dcmread(files[0], stop_before_pixels=True)
                                    .StudyInstanceUID)
        n_inst = sum(len(f) for f, _, _ in studies.values())
        print(f"[2/8] storescu pushed {n_inst - 1} instances and the ECG cart uploaded 1 file "
              f"({raw_bytes / 1e6:.1f} MB) into the edge; the CT is GB18030, patient "
              f"{TOWNSHIP_PATIENT[0]}", flush=True)
        case_ids: dict[str, str] = {}
        stat_released_wall = 0.0
        for label, (_, priority, question) in studies.items():
            if priority == "stat":
                stat_released_wall = time.time()
            r = _cli(edge, "case", "send", study_uids[label], "--dest", "regional-center",
                     "--priority", priority, "--question", question, "--operator",
                     "technician Zhang", "--physician", "Dr. Ma", "--consent",
                     f"consent-{label[:2]}", "--json")
            if r.returncode == 3:  # held by the quality gate: show why, override
                held = json.loads(r.stdout.splitlines()[-1])
                print(f"      {label}: HELD by the quality gate: {held['reasons'][:2]}")
                o = _cli(edge, "case", "override", held["case_id"], "--operator",
                         "Dr. Ma", "--reason", "demo: reviewed on site, diagnostic")
                if o.returncode != 0:
                    print(f"demo: override failed: {o.stderr}", file=sys.stderr)
                    return 1
                case_ids[label] = held["case_id"]
                print(f"      {label}: released by override (Dr. Ma)")
                continue
            if r.returncode != 0:
                print(f"demo: case send failed for {label}: {r.stderr}", file=sys.stderr)
                return 1
            out = json.loads(r.stdout.splitlines()[-1])
            case_ids[label] = out["case_id"]
            print(f"      {label}: {priority} case {out['case_id'][:8]}, {out['instances']} "
                  f"instances, {out['raw_bytes'] / 1e6:.2f} -> {out['bundle_bytes'] / 1e6:.2f} "
                  f"MB", flush=True)
        print("[3/8] cases released through the quality gate; sending ...", flush=True)
        stat_case = case_ids["CT head (STAT)"]
        stat_preview_s: float | None = None
        report: dict[str, Any] | None = None
        deadline = time.monotonic() + args.timeout
        delivered: set[str] = set()
        last_print = 0.0
        while time.monotonic() < deadline:
            if stat_preview_s is None:
                pv = _get_json(f"{center.http_url}/api/cases/{stat_case}/previews",
                               center.auth("ops"))
                if isinstance(pv, list) and pv:
                    # When the center got it (its case row), not when this loop looked.
                    row = _get_json(f"{center.http_url}/api/cases/{stat_case}",
                                    center.auth("ops")) or {}
                    stat_preview_s = float(row.get("created_at") or time.time()) - \
                        stat_released_wall
                    print(f"      STAT preview viewable at the center after "
                          f"{stat_preview_s:.1f} s", flush=True)
            cases = _get_json(f"{center.http_url}/api/cases", center.auth("ops")) or []
            delivered = {c["case_id"] for c in cases if c["state"] == "received"}
            if stat_case in delivered and report is None:
                report = _read_and_report(center, stat_case, study_uids["CT head (STAT)"])
            if set(case_ids.values()) <= delivered:
                break
            if time.monotonic() - last_print > 5:
                last_print = time.monotonic()
                jobs = _cli(edge, "queue", "ls", "--json").stdout.splitlines()
                sent = sum(json.loads(j).get("bytes_sent", 0) for j in jobs if j.strip())
                print(f"      t={time.monotonic() - t0:5.0f}s  edge sent {sent / 1e6:6.2f} MB; "
                      f"center has {len(delivered)}/{len(case_ids)} cases", flush=True)
            time.sleep(0.5)
        print(f"[4/8] {len(delivered & set(case_ids.values()))}/{len(case_ids)} cases at the "
              f"center", flush=True)
        at_edge = {r["sop_instance_uid"]: r["sha256"] for r in edge.stored()
                   if not str(r.get("calling_ae") or "").startswith("node:")}
        at_center = {r["sop_instance_uid"]: r["sha256"] for r in center.stored()}
        verified = sum(1 for uid, sha in at_edge.items() if at_center.get(uid) == sha)
        print(f"[5/8] {verified}/{len(at_edge)} instances at the center with the SHA-256 they "
              f"had at ingest", flush=True)
        if report is None and stat_case in delivered:
            report = _read_and_report(center, stat_case, study_uids["CT head (STAT)"])
        back = _wait_report(edge, stat_case, deadline) if report else None
        names_ok = False
        # Release at the edge -> report back at the edge, both by the nodes' clocks.
        turnaround = (back["received_at"] - stat_released_wall) if back else None
        if back:
            after = back["received_at"] - float((report or {}).get("signed_at") or 0)
            print(f"[6/8] the signed report came back to the edge {after:.1f} s after signing "
                  f"({turnaround:.1f} s after the STAT release); verified: {back['verified']}",
                  flush=True)
            ack = _cli(edge, "case", "ack", stat_case, "--by", "dr.ma")
            print(f"      {ack.stdout.strip() or ack.stderr.strip()}", flush=True)
            show = _cli(edge, "report", "verify", "--case", stat_case)
            print("      fenji report verify (edge): " + (show.stdout.strip().splitlines() or
                                                          [show.stderr.strip()])[-1], flush=True)
            pdf_text = _pdf_text(edge, stat_case)
            names_ok = all(t in pdf_text for t in ("王", "小东", TOWNSHIP_STUDY))
            patient = (back.get("report") or {}).get("patient") or {}
            print(f"      the report at the edge is for {pn_display(str(patient.get('name')))}"
                  f" (ID {patient.get('id')}); its PDF (pdftotext) names 王 小东 and "
                  f"{TOWNSHIP_STUDY}: {'yes' if names_ok else 'NO'}", flush=True)
        else:
            print("[6/8] no report came back to the edge", flush=True)
        ledger_ok = True
        for n in nodes:
            v = _cli(n, "audit", "verify")
            ledger_ok = ledger_ok and v.returncode == 0
            print(f"      fenji audit verify ({n.name}): "
                  f"{'ok' if v.returncode == 0 else 'FAILED'} {v.stdout.strip()[-160:]}",
                  flush=True)
        li = _cli(edge, "liability", stat_case)
        print("[7/8] fenji liability (edge):\n" + "\n".join(
            "      " + ln for ln in (li.stdout or li.stderr).strip().splitlines()), flush=True)
        fees = _cli(center, "ledger", "fees", "--month", time.strftime("%Y-%m", time.gmtime()))
        print("      fenji ledger fees (center):\n" + "\n".join(
            "      " + ln for ln in (fees.stdout or fees.stderr).strip().splitlines()),
            flush=True)
        receipts = edge.cli("case", "ls", "--json").stdout.splitlines()
        on_wire = sum(int(json.loads(ln).get("bytes_total", 0)) for ln in
                      _cli(edge, "queue", "ls", "--json").stdout.splitlines() if ln.strip())
        summary = {
            "cases_sent": len(case_ids),
            "cases_delivered": len(delivered & set(case_ids.values())),
            "instances_sent": len(at_edge), "instances_verified": verified,
            "bytes_raw": raw_bytes, "bytes_on_wire": on_wire,
            "stat_preview_s": round(stat_preview_s, 2) if stat_preview_s is not None else None,
            "elapsed_s": round(time.monotonic() - t0, 1),
            "edge_cases": len(receipts),
            "reports_signed": 1 if report else 0,
            "reports_returned": 1 if back else 0,
            "report_turnaround_s": round(turnaround, 2) if turnaround is not None else None,
            "report_verified": bool(back and back["verified"]),
            "ledger_verified": ledger_ok,
            "chinese_names_intact": names_ok,
        }
        ok = (summary["cases_delivered"] == len(case_ids) and verified == len(at_edge)
              and summary["report_verified"] and ledger_ok and names_ok)
        print("[8/8] done.  What this run showed:", flush=True)
        for line in _in_words(summary, args.uplink):
            print("      " + line, flush=True)
        _print_console(edge, center)
        print(json.dumps(summary, ensure_ascii=False))
        if args.keep:
            _keep_running(nodes)
        return 0 if ok else 1
    finally:
        for n in nodes:
            n.stop()
        for link in links:
            link.stop()


def _print_console(edge: NodeProcess, center: NodeProcess) -> None:
    """Where each person's page is, and the token to sign in with (shown once, here)."""
    pages = [("technician", edge, "tech.zhang", "/console/technician"),
             ("physician", edge, "dr.ma", "/console/physician"),
             ("operator (edge)", edge, "ops", "/console/operator"),
             ("reader", center, "dr.wang", "/console/reader"),
             ("operator (center)", center, "ops", "/console/operator")]
    print("      The web console (sign in at the page with the token; /viewer/ on the center "
          "is the OHIF viewer):", flush=True)
    for role, node, user, path in pages:
        print(f"      {role:<18} {node.web_url}{path}   user {user:<10} token "
              f"{node.tokens[user]}", flush=True)


def _keep_running(nodes: list[NodeProcess]) -> None:
    """Wait until Ctrl-C (or SIGTERM) or a node exits; the caller's finally stops them."""
    import signal

    stop = {"now": False}

    def _stop(*_: object) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, _stop)
    print("demo: nodes kept running (KEEP=1); Ctrl-C stops them", flush=True)
    try:
        while not stop["now"] and all(n.proc is not None and n.proc.poll() is None
                                      for n in nodes):
            time.sleep(1)
    except KeyboardInterrupt:
        pass


def _in_words(s: dict[str, Any], uplink: str) -> list[str]:
    """The run's result in plain language, for the person who typed `make demo`."""
    def yes(v: Any) -> str:
        return "yes" if v else "NO"

    return [
        f"- {s['cases_delivered']} of {s['cases_sent']} cases went from the township edge "
        f"over a {uplink} link through the county relay to the regional center.",
        f"- {s['instances_verified']} of {s['instances_sent']} instances arrived with the "
        "SHA-256 they had at ingest: nothing lost, nothing changed.",
        f"- The STAT head CT's preview was viewable at the center after "
        f"{s['stat_preview_s']} s; the whole run took {s['elapsed_s']} s.",
        "- An ECG cart's own file (GE MUSE XML) went in as a DICOM 12-lead ECG.",
        f"- The reader's signed report came back to the edge and verified: "
        f"{yes(s['report_verified'])} ({s['report_turnaround_s']} s from release).",
        f"- The patient's Chinese name (GB18030 at the scanner) read right on the "
        f"worklist and in the report PDF: {yes(s['chinese_names_intact'])}.",
        f"- Every node's audit ledger verified: {yes(s['ledger_verified'])}.",
    ]


if __name__ == "__main__":
    sys.exit(main())
