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

Also (issue 16): the relay path (edge -> relay on satellite -> center on
provincial) and a STAT CT released while a routine study is moving (its
preview time counted from the release's commit).  ``release s`` is the time
from the start of `fenji case send` to the release's first queued bundle (a STAT
or urgent preview is queued before the full bundle is encoded); ``preview CLI s``
and ``fenji s`` count from the CLI start.

``preview s`` counts from that commit (for the ECG, whose bundle is tiny, the
case itself is its preview); ``xfer s`` from that commit to the complete case,
``xfer util`` the link's use over it.

Reported per profile and payload: seconds, throughput, link utilisation
while sending (bytes through the emulator / (seconds x rate)), and fenji's
speed-up over each peer.  Targets (issue 4): fenji >= 3x C-STORE for the CT
on satellite; STAT preview within 10 s; the full study within 1.1x of
raw / ratio / rate; utilisation >= 85 %.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sqlite3
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pydicom

from bench.common import free_port, print_table, shared_data
from fenji.gateway.lab.dcmtk import storescu, tool
from fenji.gateway.lab.harness import NodeProcess, OrthancProcess
from fenji.gateway.lab.synth import derive
from fenji.routing.linkemu.proxy import LinkEmulator, LinkThread, load_profile

DESCRIPTION = "CT / ECG / STAT preview over satellite and 3G: fenji vs C-STORE vs STOW-RS"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profiles", default="satellite,3g", help="comma-separated link profiles")
    p.add_argument("--peers", default="cstore,stow", help="which peers to run (cstore,stow)")
    p.add_argument("--timeout", type=float, default=1800, help="per transfer, seconds")
    p.add_argument("--payloads", default="ct,ecg",
                   help="which payloads to send (ct,ecg; 'ecg' alone for a short run)")
    p.add_argument("--relay", default="satellite:provincial",
                   help="relay path FIRST:SECOND profiles ('' to skip)")
    p.add_argument("--tls", action="store_true",
                   help="fenji's nodes talk mutual TLS (as in production; resumption on "
                        "reconnect) instead of plain HTTP through the emulator")
    p.add_argument("--behind-mb", type=int, default=40,
                   help="routine study (MB raw) a STAT case is released behind (issue: 500; "
                        "0 to skip)")


def _link(profile: str, target_port: int, seed: int) -> LinkThread:
    return LinkEmulator(load_profile(profile), ("127.0.0.1", target_port), seed=seed) \
        .start_in_thread()


def _study(files: list[Path]) -> str:
    return str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)


def _db_one(node: NodeProcess, sql: str, args: tuple[Any, ...]) -> Any:
    """Read a node's index directly (read-only): a CLI call per look would cost a
    Python start-up each and blur what is measured."""
    con = sqlite3.connect(f"file:{node.directory / 'store' / 'index.sqlite'}?mode=ro",
                          uri=True, timeout=30)
    try:
        row = con.execute(sql, args).fetchone()
        return row[0] if row else None
    finally:
        con.close()


def _case_state(node: NodeProcess, case_id: str) -> str | None:
    return _db_one(node, "SELECT state FROM cases WHERE case_id = ?", (case_id,))


def _queued_at(node: NodeProcess, case_id: str) -> float | None:
    """When the edge queued the case's first bundle (the release's commit)."""
    return _db_one(node, "SELECT min(created_at) FROM outbox WHERE case_id = ?", (case_id,))


def _watch(center: NodeProcess, study: str, t0: float, deadline: float) -> dict[str, Any]:
    """When the center first shows the study's case as a preview, and as received (by
    study: it runs while `fenji case send` still encodes, before its case id is out)."""
    preview_s = done_s = None
    while time.monotonic() < deadline:
        state = _db_one(center, "SELECT state FROM cases WHERE study_instance_uid = ? "
                                "ORDER BY created_at DESC LIMIT 1", (study,))
        now = time.monotonic()
        if preview_s is None and state in ("preview", "received"):
            preview_s = now - t0
        if state == "received":
            done_s = now - t0
            break
        time.sleep(0.05)
    return {"preview_s": preview_s, "done_s": done_s}


def _settled(nodes: list[NodeProcess], timeout: float = 120.0) -> None:
    """Until every node has loaded its codecs (it does at start, in the background): a
    node in service has long done so, and a measurement must not share the CPU with it."""
    deadline = time.monotonic() + timeout
    for n in nodes:
        while "codecs loaded" not in n.log_path.read_text(errors="replace"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"node {n.name} did not load its codecs in {timeout:.0f} s")
            time.sleep(0.1)


def _send_watched(edge: NodeProcess, center: NodeProcess, study: str, prio: str,
                  dest: str | None, timeout: float) -> tuple[dict[str, Any], float, float,
                                                             dict[str, Any]]:
    """`fenji case send` in a thread while the center is watched: a STAT preview can
    arrive before the CLI has encoded the full bundle and returned."""
    box: dict[str, Any] = {}
    t0 = time.monotonic()

    def send() -> None:
        try:
            box["case"], box["wall0"] = _send_case(edge, study, prio, dest)
        except BaseException as exc:  # reported below, in the caller's thread
            box["error"] = exc

    th = threading.Thread(target=send, daemon=True)
    th.start()
    seen = _watch(center, study, t0, t0 + timeout)
    th.join(timeout)
    if "error" in box:
        raise box["error"]
    return box["case"], box["wall0"], t0, seen


def _send_case(edge: NodeProcess, study: str, prio: str, dest: str | None = None
               ) -> tuple[dict[str, Any], float]:
    args = ["case", "send", study, "--priority", prio, "--no-gate", "--json"]
    if dest:
        args += ["--dest", dest]
    wall0 = time.time()
    case = json.loads(edge.cli(*args).stdout)
    return case, wall0


def _fenji(work: Path, profile: str, payloads: dict[str, list[Path]], timeout: float,
           seed: int, relay_profile: str | None = None, tls: bool = False) -> dict[str, Any]:
    """Edge -> center through ``profile``; with ``relay_profile``: edge -> relay through
    ``profile``, relay -> center through ``relay_profile`` (store and forward)."""
    edge = NodeProcess(work / "edge", name="edge", allow_ae=["CT1"], workers=1)
    center = NodeProcess(work / "center", name="center", role="center", workers=1)
    nodes = [edge, center]
    links = []
    final = None
    if relay_profile:
        relay = NodeProcess(work / "relay", name="relay", role="center", workers=1)
        nodes.insert(1, relay)
        first = _link(profile, relay.http_port, seed)
        second = _link(relay_profile, center.http_port, seed + 100)
        links = [first, second]
        scheme = "https" if tls else "http"
        edge.add_peer(relay, default=True, url=f"{scheme}://127.0.0.1:{first.port}", tls=tls)
        relay.add_peer(edge, tls=tls)
        relay.add_peer(center, url=f"{scheme}://127.0.0.1:{second.port}", tls=tls)
        center.add_peer(relay, tls=tls)
        final = "center"
    else:
        first = _link(profile, center.http_port, seed)
        links = [first]
        scheme = "https" if tls else "http"
        edge.add_peer(center, default=True, url=f"{scheme}://127.0.0.1:{first.port}", tls=tls)
        center.add_peer(edge, tls=tls)
    out: dict[str, Any] = {}
    try:
        with contextlib.ExitStack() as stack:
            for n in nodes:
                stack.enter_context(n)
            for files in payloads.values():
                storescu(files, edge.dicom_port, calling="CT1")
            _settled(nodes)
            for name, files in payloads.items():
                before = first.stats.bytes_up
                prio = "stat" if name == "ct" else "urgent"
                case, wall0, t0, seen = _send_watched(edge, center, _study(files), prio, final,
                                                      timeout)
                dt = seen["done_s"] if seen["done_s"] is not None else time.monotonic() - t0
                queued = _queued_at(edge, case["case_id"])
                release_s = (queued - wall0) if queued else None
                # The full bundle on its own: from its create at the first receiver to
                # the case recorded at the center (what the link and the receivers add;
                # the encode and the preview before it are not in it).
                began = _db_one(nodes[1], "SELECT created_at FROM uploads WHERE bundle_id = ?",
                                (case["bundle_id"],))
                ended = _db_one(center, "SELECT received_at FROM cases WHERE case_id = ?",
                                (case["case_id"],))
                out[name] = {"seconds": dt, "preview_s": seen["preview_s"],
                             "release_s": release_s,
                             "full_s": (ended - began) if began and ended else None,
                             "raw_bytes": case["raw_bytes"], "bundle_bytes": case["bundle_bytes"],
                             "link_bytes": first.stats.bytes_up - before,
                             "delivered": seen["done_s"] is not None}
    finally:
        for link in links:
            link.stop_thread()
    return out


def _behind(work: Path, profile: str, routine_mb: int, timeout: float,
            seed: int) -> dict[str, Any]:
    """A STAT CT released while a routine study of ``routine_mb`` MB is moving."""
    files = sorted((shared_data() / "dicom" / "ct").glob("CT_*.dcm"))
    per = sum(f.stat().st_size for f in files) / len(files)
    big = derive(files, work / "big", max(1, int(routine_mb * 1e6 / per)), prefix="big")
    edge = NodeProcess(work / "edge", name="edge", allow_ae=["CT1"], workers=1)
    center = NodeProcess(work / "center", name="center", role="center", workers=1)
    link = _link(profile, center.http_port, seed)
    edge.add_peer(center, default=True, url=f"http://127.0.0.1:{link.port}")
    center.add_peer(edge)
    try:
        with edge, center:
            storescu(big + files, edge.dicom_port, calling="CT1")
            _settled([edge, center])
            routine, _ = _send_case(edge, _study(big), "routine")
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:  # until the routine bundle is on the link
                sent = _db_one(edge, "SELECT max(bytes_sent) FROM outbox WHERE case_id = ?",
                               (routine["case_id"],))
                if sent and sent > 256 * 1024:
                    break
                time.sleep(0.05)
            case, wall0, t0, seen = _send_watched(edge, center, _study(files), "stat", None,
                                                  timeout)
            queued = _queued_at(edge, case["case_id"])
            release_s = (queued - wall0) if queued else 0.0
            routine_state = _case_state(center, routine["case_id"])
    finally:
        link.stop_thread()
    return {"routine_bytes": routine["bundle_bytes"], "stat_bundle_bytes": case["bundle_bytes"],
            "release_s": release_s, "preview_s": seen["preview_s"], "done_s": seen["done_s"],
            "preview_after_release_s": (seen["preview_s"] - release_s)
            if seen["preview_s"] is not None else None,
            "routine_done_first": routine_state == "received"}


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


def _transfer_columns(row: dict[str, Any], f: dict[str, Any], rate: float) -> None:
    """The release (bundle build, CLI start-up) apart from the transfer: ``xfer s`` runs
    from the commit that queued the case to the complete case at the center."""
    row["release s"] = f["release_s"]
    row["preview CLI s"] = row.get("preview s")
    if row.get("preview s") is not None:
        row["preview s"] = row["preview s"] - f["release_s"]
    xfer = f["seconds"] - f["release_s"]
    row["xfer s"] = xfer
    ideal = f["bundle_bytes"] * 8 / rate
    row["xfer/ideal"] = xfer / ideal
    row["xfer util"] = f["link_bytes"] * 8 / (xfer * rate)
    if f.get("full_s"):
        row["full s"] = f["full_s"]
        row["full/ideal"] = f["full_s"] / ideal


def run(args: argparse.Namespace) -> dict[str, Any]:
    data = shared_data() / "dicom"
    every = {"ct": sorted((data / "ct").glob("CT_*.dcm")),
             "ecg": [data / "ecg" / "waveform_ecg_12lead.dcm"]}
    wanted = [p for p in args.payloads.split(",") if p]
    unknown = [p for p in wanted if p not in every]
    if unknown:
        raise SystemExit(f"bench link: --payloads {unknown[0]!r} is not one of "
                         f"{', '.join(every)}")
    payloads = {k: v for k, v in every.items() if k in wanted}
    results: dict[str, Any] = {}
    rows = []
    for seed, profile in enumerate(p for p in args.profiles.split(",") if p):
        prof = load_profile(profile)
        rate = prof.rate_up_bps
        res: dict[str, Any] = {}
        work = Path(tempfile.mkdtemp(prefix=f"fenji-bench-link-{profile}-"))
        try:
            print(f"  {profile}: fenji ...", flush=True)
            res["fenji"] = _fenji(work / "fenji", profile, payloads, args.timeout, seed,
                                  tls=args.tls)
            if "cstore" in args.peers:
                print(f"  {profile}: C-STORE ...", flush=True)
                res["cstore"] = _cstore(work / "cstore", profile, payloads, args.timeout, seed)
            if "stow" in args.peers:
                print(f"  {profile}: STOW-RS ...", flush=True)
                res["stow"] = _stow(work / "stow", profile, payloads, args.timeout, seed)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        res["rate_bps"] = rate
        results[profile] = res
        for name in payloads:
            f = res["fenji"][name]
            ideal = f["bundle_bytes"] * 8 / rate if rate else None
            row: dict[str, Any] = {
                "profile": profile, "payload": name, "fenji s": f["seconds"],
                "preview s": f["preview_s"],
                "ideal s": ideal, "vs ideal": f["seconds"] / ideal if ideal else None,
                "util": (f["link_bytes"] * 8 / (f["seconds"] * rate)) if rate else None,
            }
            for peer in ("cstore", "stow"):
                if peer in res:
                    row[f"{peer} s"] = res[peer][name]["seconds"]
                    row[f"x {peer}"] = res[peer][name]["seconds"] / f["seconds"]
            rows.append(row)
    if args.relay:
        first, second = args.relay.split(":")
        work = Path(tempfile.mkdtemp(prefix="fenji-bench-link-relay-"))
        try:
            print(f"  relay {first} -> {second}: fenji ...", flush=True)
            res = _fenji(work, first, payloads, args.timeout, 7, relay_profile=second,
                         tls=args.tls)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        results["relay"] = res
        rate = load_profile(first).rate_up_bps
        results["relay_rate_bps"] = rate
        for name in payloads:
            f = res[name]
            ideal = f["bundle_bytes"] * 8 / rate
            rows.append({"profile": f"relay {first}+{second}", "payload": name,
                         "fenji s": f["seconds"], "preview s": f["preview_s"],
                         "ideal s": ideal, "vs ideal": f["seconds"] / ideal,
                         "util": f["link_bytes"] * 8 / (f["seconds"] * rate)})
    if args.behind_mb:
        profile = args.profiles.split(",")[0]
        work = Path(tempfile.mkdtemp(prefix="fenji-bench-link-behind-"))
        try:
            print(f"  {profile}: STAT behind {args.behind_mb} MB routine ...", flush=True)
            b = _behind(work, profile, args.behind_mb, args.timeout, 11)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        results["behind"] = b
        rows.append({"profile": profile, "payload": f"ct STAT behind {args.behind_mb} MB",
                     "fenji s": b["done_s"], "preview s": b["preview_after_release_s"]})
    for row in rows:
        p = results.get(row["profile"], {}).get("fenji", {}).get(row["payload"], {})
        if p.get("release_s") is not None:
            _transfer_columns(row, p, results[row["profile"]]["rate_bps"])
    for row in rows:
        r = results.get("relay", {}).get(row["payload"]) if row["profile"].startswith("relay") \
            else None
        if r and r.get("release_s") is not None:
            _transfer_columns(row, r, results["relay_rate_bps"])
    print_table(rows, ["profile", "payload", "release s", "preview CLI s", "preview s",
                       "fenji s", "ideal s", "vs ideal", "util", "xfer s", "xfer/ideal",
                       "xfer util", "full s", "full/ideal", "cstore s", "x cstore", "stow s",
                       "x stow"])
    return {"rows": rows, "raw": results}
