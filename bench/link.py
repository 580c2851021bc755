"""Link: time to deliver a CT series, a 12-lead ECG and a STAT preview over the
satellite and 3G profiles, fenji vs plain C-STORE vs STOW-RS, same emulator.

* fenji: an edge node sends to a center node through the link emulator
  (`fenji case send`, measured until the center has the case; the STAT
  preview until the center serves it).
* C-STORE: DCMTK ``storescu`` through the same emulator to DCMTK ``storescp``;
  after a dropped connection it is run again for what was not acknowledged,
  as a modality's retry queue would.
* STOW-RS: ``dicomweb-client`` through the same emulator to Orthanc's DICOMweb
  plugin; the whole request is retried after a failure.

Reported per profile and payload: seconds, throughput, link utilisation
while sending (bytes through the emulator / (seconds x rate)), and fenji's
speed-up over each peer.  Targets (issue 4): fenji >= 3x C-STORE for the CT
on satellite; STAT preview within 10 s; the full study within 1.1x of
raw / ratio / rate; utilisation >= 85 %.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pydicom

from bench.common import free_port, print_table, shared_data
from fenji.gateway.lab.dcmtk import storescu, tool
from fenji.gateway.lab.harness import NodeProcess, OrthancProcess
from fenji.routing.linkemu.proxy import LinkEmulator, LinkThread, load_profile

DESCRIPTION = "CT / ECG / STAT preview over satellite and 3G: fenji vs C-STORE vs STOW-RS"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profiles", default="satellite,3g", help="comma-separated link profiles")
    p.add_argument("--peers", default="cstore,stow", help="which peers to run (cstore,stow)")
    p.add_argument("--timeout", type=float, default=1800, help="per transfer, seconds")


def _link(profile: str, target_port: int, seed: int) -> LinkThread:
    return LinkEmulator(load_profile(profile), ("127.0.0.1", target_port), seed=seed) \
        .start_in_thread()


def _study(files: list[Path]) -> str:
    return str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)


def _fenji(work: Path, profile: str, payloads: dict[str, list[Path]], timeout: float,
           seed: int) -> dict[str, Any]:
    edge = NodeProcess(work / "edge", name="edge", allow_ae=["CT1"], workers=1)
    center = NodeProcess(work / "center", name="center", role="center", workers=1)
    link = _link(profile, center.http_port, seed)
    edge.add_peer(center, default=True, url=f"http://127.0.0.1:{link.port}")
    center.add_peer(edge)
    out: dict[str, Any] = {}
    try:
        with edge, center:
            for files in payloads.values():
                storescu(files, edge.dicom_port, calling="CT1")
            for name, files in payloads.items():
                before = link.stats.bytes_up
                t0 = time.monotonic()
                prio = "stat" if name == "ct" else "urgent"
                res = edge.cli("case", "send", _study(files), "--priority", prio, "--no-gate",
                               "--json")
                case = json.loads(res.stdout)
                preview_s = None
                deadline = t0 + timeout
                while time.monotonic() < deadline:
                    rows = [json.loads(x) for x in center.cli("case", "ls", "--json").stdout
                            .splitlines() if x.strip()]
                    states = {r["case_id"]: r["state"] for r in rows}
                    if preview_s is None and states.get(case["case_id"]) in ("preview",
                                                                             "received"):
                        preview_s = time.monotonic() - t0
                    if states.get(case["case_id"]) == "received":
                        break
                    time.sleep(0.2)
                dt = time.monotonic() - t0
                out[name] = {"seconds": dt, "preview_s": preview_s,
                             "raw_bytes": case["raw_bytes"], "bundle_bytes": case["bundle_bytes"],
                             "link_bytes": link.stats.bytes_up - before,
                             "delivered": states.get(case["case_id"]) == "received"}
    finally:
        link.stop_thread()
    return out


def _cstore(work: Path, profile: str, payloads: dict[str, list[Path]], timeout: float,
            seed: int) -> dict[str, Any]:
    outdir = work / "scp"
    outdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    scp = subprocess.Popen([tool("storescp"), "-aet", "STORESCP", "-od", str(outdir),
                            "--accept-all", str(port)], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    link = _link(profile, port, seed)
    out: dict[str, Any] = {}
    try:
        for name, files in payloads.items():
            before = link.stats.bytes_up
            t0 = time.monotonic()
            left, attempts = list(files), 0
            while left and time.monotonic() - t0 < timeout:
                attempts += 1
                r = storescu(left, link.port, calling="MODALITY", called="STORESCP",
                             timeout_s=timeout)
                left = [f for f in left if f not in r.sent]
            out[name] = {"seconds": time.monotonic() - t0, "attempts": attempts,
                         "raw_bytes": sum(f.stat().st_size for f in files),
                         "link_bytes": link.stats.bytes_up - before, "delivered": not left}
    finally:
        link.stop_thread()
        scp.terminate()
        scp.wait(timeout=20)
    return out


def _stow(work: Path, profile: str, payloads: dict[str, list[Path]], timeout: float,
          seed: int) -> dict[str, Any]:
    from dicomweb_client.api import DICOMwebClient

    out: dict[str, Any] = {}
    with OrthancProcess(work / "orthanc") as orthanc:
        link = _link(profile, orthanc.http_port, seed)
        try:
            client = DICOMwebClient(f"http://127.0.0.1:{link.port}/dicom-web")
            for name, files in payloads.items():
                datasets = [pydicom.dcmread(f) for f in files]
                before = link.stats.bytes_up
                t0 = time.monotonic()
                attempts, ok = 0, False
                while not ok and time.monotonic() - t0 < timeout:
                    attempts += 1
                    try:
                        client.store_instances(datasets)
                        ok = True
                    except Exception:  # noqa: BLE001 - any failure: retry the request
                        time.sleep(1.0)
                out[name] = {"seconds": time.monotonic() - t0, "attempts": attempts,
                             "raw_bytes": sum(f.stat().st_size for f in files),
                             "link_bytes": link.stats.bytes_up - before, "delivered": ok}
        finally:
            link.stop_thread()
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    data = shared_data() / "dicom"
    payloads = {"ct": sorted((data / "ct").glob("CT_*.dcm")),
                "ecg": [data / "ecg" / "waveform_ecg_12lead.dcm"]}
    results: dict[str, Any] = {}
    rows = []
    for seed, profile in enumerate(p for p in args.profiles.split(",") if p):
        prof = load_profile(profile)
        rate = prof.rate_up_bps
        res: dict[str, Any] = {}
        work = Path(tempfile.mkdtemp(prefix=f"fenji-bench-link-{profile}-"))
        try:
            print(f"  {profile}: fenji ...", flush=True)
            res["fenji"] = _fenji(work / "fenji", profile, payloads, args.timeout, seed)
            if "cstore" in args.peers:
                print(f"  {profile}: C-STORE ...", flush=True)
                res["cstore"] = _cstore(work / "cstore", profile, payloads, args.timeout, seed)
            if "stow" in args.peers:
                print(f"  {profile}: STOW-RS ...", flush=True)
                res["stow"] = _stow(work / "stow", profile, payloads, args.timeout, seed)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        results[profile] = res
        for name in payloads:
            f = res["fenji"][name]
            ideal = f["bundle_bytes"] * 8 / rate if rate else None
            row: dict[str, Any] = {
                "profile": profile, "payload": name, "fenji s": f["seconds"],
                "preview s": f["preview_s"] if name == "ct" else None,
                "ideal s": ideal, "vs ideal": f["seconds"] / ideal if ideal else None,
                "util": (f["link_bytes"] * 8 / (f["seconds"] * rate)) if rate else None,
            }
            for peer in ("cstore", "stow"):
                if peer in res:
                    row[f"{peer} s"] = res[peer][name]["seconds"]
                    row[f"x {peer}"] = res[peer][name]["seconds"] / f["seconds"]
            rows.append(row)
    print_table(rows, ["profile", "payload", "fenji s", "preview s", "ideal s", "vs ideal",
                       "util", "cstore s", "x cstore", "stow s", "x stow"])
    return {"rows": rows, "raw": results}
