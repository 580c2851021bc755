"""Scale: one regional center on PostgreSQL with 1, 2 and 4 `fenji node` processes
(HAProxy in front of 2 and 4), fenji on SQLite (1 process), and Orthanc with its
PostgreSQL index plugin (Debian ``orthanc-postgresql``) -- same data, same run.

Every server runs here, on 127.0.0.1, on one throwaway PostgreSQL cluster
(:mod:`fenji.gateway.lab.pg`, PostgreSQL's defaults: fsync and synchronous commit
on) for the three PostgreSQL configurations.  The four fenji processes share one
store (``[node] shared_store``, ``[store] index_url``); "1 process" talks to the
first directly, "2" and "4" go through an HAProxy whose backend holds the first
2 or all 4 (the others keep running, idle).

Data, made here:

* ``--instances`` small synthetic CT instances (as ``bench viewer`` makes them:
  8x8, 5 per study, 4 studies per patient) loaded by DCMTK storescu, the PostgreSQL
  center through its largest balancer, plus the shared CT series;
* ``--cases`` cases of ``--case-instances`` CT slices cut to ``--size`` pixels,
  one set per fenji configuration (same source, same shape, fresh UIDs: the
  PostgreSQL configurations share one store, so each needs bundles it has not
  seen), released by an edge into signed bundles before anything is timed.

Measured:

* upload: the edge's bundles sent to the center by the transfer client (signed,
  resumable protocol, the edge's own key) with ``--clients`` uploads at once, from
  the first request to the last verified receipt: bundles/s and instances/s.
  Orthanc's comparable: the same instances (the first set) by STOW-RS, one request
  per study, ``--clients`` at once: studies/s and instances/s;
* QIDO-RS study search over ``--instances`` indexed: ``bench viewer``'s mixed
  queries (name wildcard, date range, UID), one client (median, p95), then
  ``--qido-clients`` clients at once (p95, queries/s); and how many answers equal
  fenji-on-SQLite's;
* WADO-RS of the CT series (curl, ``transfer-syntax=*``): MB/s, median of ``--runs``.

``--quick`` shrinks everything to a smoke test (seconds, not hours).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pydicom
import requests

from bench import viewer
from bench.common import dcmtk_env, free_port, markdown_table, shared_data, tool_version
from fenji.gateway import config as config_mod
from fenji.gateway.cases.case import Released, release
from fenji.gateway.keys import load_private, public_from_config
from fenji.gateway.lab.dcmtk import storescu, tool
from fenji.gateway.lab.harness import HaproxyProcess, NodeProcess, OrthancProcess
from fenji.gateway.lab.pg import PgCluster
from fenji.gateway.lab.synth import derive
from fenji.gateway.node import open_store
from fenji.routing.transfer_client import (
    ChunkSizer,
    Delivered,
    Pipeline,
    Sender,
    manifest_of,
    send_bundle,
)

DESCRIPTION = ("a center on PostgreSQL with 1/2/4 processes behind HAProxy vs fenji on SQLite "
               "vs Orthanc+PostgreSQL: bundles/s, QIDO-RS p95, WADO-RS MB/s")

QUICK = {"instances": 200, "queries": 12, "runs": 1, "cases": 3, "case_instances": 2,
         "size": 64, "clients": 2, "qido_clients": 2, "senders": 1}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--instances", type=int, default=100_000,
                   help="small synthetic instances indexed by every server (default 100000)")
    p.add_argument("--procs", default="1,2,4",
                   help="fenji process counts on PostgreSQL (comma-separated, default 1,2,4)")
    p.add_argument("--cases", type=int, default=60, help="bundles per configuration (default 60)")
    p.add_argument("--case-instances", type=int, default=8, help="CT slices per case (default 8)")
    p.add_argument("--size", type=int, default=256,
                   help="CT slices cut to SIZE x SIZE pixels (default 256)")
    p.add_argument("--clients", type=int, default=8,
                   help="uploads (or STOW-RS requests) at once (default 8)")
    p.add_argument("--queries", type=int, default=200, help="QIDO-RS queries (default 200)")
    p.add_argument("--qido-clients", type=int, default=4,
                   help="QIDO-RS clients at once in the concurrent pass (default 4)")
    p.add_argument("--runs", type=int, default=5, help="WADO-RS series retrievals (median)")
    p.add_argument("--senders", type=int, default=2, help="parallel storescu while loading")
    p.add_argument("--orthanc-connections", type=int, default=4,
                   help="Orthanc's PostgreSQL connections (IndexConnectionsCount, default 4)")
    p.add_argument("--phase-timeout", type=float, default=3600.0,
                   help="seconds any one phase may take before the run fails (default 3600)")
    p.add_argument("--quick", action="store_true",
                   help="a smoke test: " + ", ".join(f"{k}={v}" for k, v in QUICK.items()))
    p.add_argument("--keep", action="store_true",
                   help="keep the work folder (servers' logs) and say where it is")
    p.add_argument("--seed", type=int, default=7)


@dataclass
class Target:
    """One server configuration under test."""

    key: str  # pg-1, pg-2, pg-4, sqlite, orthanc-pg
    label: str
    processes: int
    index: str
    http: str  # base URL: uploads / STOW-RS and DICOMweb
    dicom_port: int
    headers: dict[str, str] = field(default_factory=dict)
    out: dict[str, Any] = field(default_factory=dict)


# -- data ------------------------------------------------------------------------
def _study_of(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)


def _bundle_sets(edge: NodeProcess, work: Path, shapes: dict[str, tuple[int, int]],
                 size: int, ct_files: list[Path]) -> dict[str, list[tuple[Released, list[Path]]]]:
    """One set of cases per name (``name -> (cases, instances per case)``): stored at
    the edge by C-STORE, released into signed bundles (no outbox job: nothing moves
    until the benchmark sends)."""
    files = {name: derive(ct_files, work / "cases" / name, cases * per_case, size=size,
                          prefix=name, studies=cases)
             for name, (cases, per_case) in shapes.items()}
    with edge:
        sent = storescu([f for fs in files.values() for f in fs], edge.dicom_port,
                        calling="CT1")
        if sent.failed:
            raise RuntimeError(f"the edge refused {len(sent.failed)} case instances: "
                               f"{list(sent.failed)[:3]}")
    store = open_store(config_mod.load(edge.config, env={}))
    out: dict[str, list[tuple[Released, list[Path]]]] = {}
    try:
        for name, fs in files.items():
            by_study: dict[str, list[Path]] = {}
            for f in fs:
                by_study.setdefault(_study_of(f), []).append(f)
            out[name] = [(release(store, study, destination="center", sender_node="edge"), sfs)
                         for study, sfs in by_study.items()]
    finally:
        store.close()
    return out


# -- upload ------------------------------------------------------------------------
async def _upload(url: str, cases: list[tuple[Released, list[Path]]], edge_cfg: Any,
                  peer_key: Any, clients: int, timeout_s: float) -> dict[str, Any]:
    t = edge_cfg.transfer
    key = load_private(edge_cfg.resolve(edge_cfg.keys.private_key))
    sender = Sender("edge", key)
    pipeline = Pipeline(single_request_bytes=t.single_request_bytes, frame_bytes=t.frame_bytes)
    manifests = [manifest_of(rel.bundle_path) for rel, _ in cases]
    sem = asyncio.Semaphore(clients)
    lat: list[float] = []

    async def one(rel: Released, manifest: dict[str, Any]) -> None:
        async with sem:
            t0 = time.perf_counter()
            out = await send_bundle(session, url, sender, peer_key, rel.bundle_path,
                                    rel.bundle_id, receiver="center",
                                    sizer=ChunkSizer(t.chunk_bytes, t.min_chunk_bytes,
                                                     t.max_chunk_bytes),
                                    manifest=manifest, pipeline=pipeline)
            if not isinstance(out, Delivered):
                raise RuntimeError(f"bundle {rel.bundle_id} not delivered: {out}")
            lat.append(time.perf_counter() - t0)

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as session:
        t0 = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(one(rel, m) for (rel, _), m
                                                in zip(cases, manifests, strict=True))),
                               timeout_s)
        wall = time.perf_counter() - t0
    n_inst = sum(rel.instances for rel, _ in cases)
    return {"via": "fenji upload (signed bundles)", "units": len(cases), "instances": n_inst,
            "bytes": sum(rel.bundle_bytes for rel, _ in cases), "wall_s": wall,
            "units_s": len(cases) / wall, "instances_s": n_inst / wall,
            "per_bundle_s": lat}


def _stow(base: str, cases: list[tuple[Released, list[Path]]], clients: int,
          timeout_s: float) -> dict[str, Any]:
    """Each case's instances as one STOW-RS request (PS3.18 10.5), ``clients`` at once."""
    bodies = []
    for _, files in cases:
        boundary = uuid.uuid4().hex
        parts = [b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n"
                 + f.read_bytes() + b"\r\n" for f in files]
        bodies.append((boundary, b"".join(parts) + b"--" + boundary.encode() + b"--\r\n",
                       len(files)))
    lat: list[float] = []

    def one(item: tuple[str, bytes, int]) -> None:
        boundary, body, n = item
        t0 = time.perf_counter()
        r = requests.post(base + "/studies", data=body, timeout=timeout_s, headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Accept": "application/dicom+json"})
        r.raise_for_status()
        failed = r.json().get("00081198", {}).get("Value", [])
        if failed:
            raise RuntimeError(f"STOW-RS: {len(failed)} of {n} instances failed: {r.text[:300]}")
        lat.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as ex:
        list(ex.map(one, bodies, timeout=timeout_s))
    wall = time.perf_counter() - t0
    n_inst = sum(n for _, _, n in bodies)
    return {"via": "STOW-RS (one request per study)", "units": len(bodies),
            "instances": n_inst, "bytes": sum(len(b) for _, b, _ in bodies), "wall_s": wall,
            "units_s": len(bodies) / wall, "instances_s": n_inst / wall, "per_study_s": lat}


# -- reads ---------------------------------------------------------------------------
def _qido(t: Target, qs: list[dict[str, str]], clients: int) -> dict[str, Any]:
    base = t.http + "/dicom-web"
    with requests.Session() as s:
        viewer.qido(s, base, qs[:10], t.headers)  # warm caches alike
        lat, found = viewer.qido(s, base, qs, t.headers)

    def chunk(part: list[dict[str, str]]) -> list[float]:
        with requests.Session() as s:
            return viewer.qido(s, base, part, t.headers)[0]

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as ex:
        lat_c = [x for xs in ex.map(chunk, [qs[i::clients] for i in range(clients)])
                 for x in xs]
    wall = time.perf_counter() - t0
    return {"one_client_s": lat, "concurrent_s": lat_c, "concurrent_wall_s": wall,
            "clients": clients, "found": [sorted(f) for f in found],
            "p50_ms": statistics.median(lat) * 1e3, "p95_ms": viewer._pct(lat, .95) * 1e3,
            "p95_concurrent_ms": viewer._pct(lat_c, .95) * 1e3,
            "qps_concurrent": len(lat_c) / wall}


def _storescu(d: Path, port: int, called: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([tool("storescu"), "-xe", "+sd", "+r", "-aet", "BENCH", "-aec",
                             called, "127.0.0.1", str(port), str(d)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=dcmtk_env())


def _send_dirs(dirs: list[Path], port: int, called: str, senders: int,
               timeout_s: float) -> tuple[float, list[dict[str, Any]]]:
    """``bench viewer``'s loading (storescu +sd per folder, ``senders`` at once), except
    that a storescu that fails is run once more on its folder (the server answers what
    it already has as a duplicate) and every failure is kept for the JSON; a folder
    that fails twice fails the run."""
    todo = [(d, 1) for d in dirs]
    running: list[tuple[Path, int, subprocess.Popen[bytes]]] = []
    failures: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    while todo or running:
        while todo and len(running) < senders:
            d, attempt = todo.pop(0)
            running.append((d, attempt, _storescu(d, port, called)))
        d, attempt, proc = running.pop(0)
        out, _ = proc.communicate(timeout=max(1.0, timeout_s - (time.perf_counter() - t0)))
        if proc.returncode != 0:
            failures.append({"folder": d.name, "attempt": attempt, "returncode": proc.returncode,
                             "output_tail": out.decode(errors="replace")[-600:]})
            if attempt > 1:
                raise RuntimeError(f"storescu failed twice on {d} (exit {proc.returncode}): "
                                   f"{failures[-1]['output_tail']}")
            todo.append((d, attempt + 1))
    return time.perf_counter() - t0, failures


def _load(t: Target, dirs: list[Path], ct_dir: Path, senders: int, n: int,
          timeout_s: float) -> dict[str, Any]:
    called = "ORTHANC" if t.key.startswith("orthanc") else "FENJI"
    load_s, failures = _send_dirs(dirs, t.dicom_port, called, senders, timeout_s)
    _send_dirs([ct_dir], t.dicom_port, called, 1, timeout_s)
    return {"instances": n, "wall_s": load_s, "instances_s": n / load_s, "via": "C-STORE",
            "storescu_failures": failures}


# -- the run ----------------------------------------------------------------------------
def _center_procs(work: Path, url: str, n: int) -> list[NodeProcess]:
    procs: list[NodeProcess] = []
    for i in range(n):
        dicom, http = free_port(), free_port()
        p = NodeProcess(work / "pg-center", name="center", role="center", allow_ae=["*"],
                        workers=1, dicom_port=dicom, http_port=http,
                        users={"viewer": "reader"} if i == 0 else {},
                        extra_toml=f'[node]\nshared_store = true\n[store]\nindex_url = "{url}"\n',
                        env={"FENJI_DICOM_PORT": str(dicom), "FENJI_HTTP_PORT": str(http)})
        p.log_path = work / f"pg-center-{i}.log"
        if procs:
            p.tokens = procs[0].tokens
        procs.append(p)
    return procs


def _peer_key(node: NodeProcess) -> Any:
    cfg = config_mod.load(node.config, env={})
    return public_from_config(node.public_key_hex(), cfg.data_dir)


def _stop(server: Any) -> None:
    t0 = time.perf_counter()
    server.stop()
    print(f"  stopped {type(server).__name__} in {time.perf_counter() - t0:.1f}s", flush=True)


def _wait(cond: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.1)
    raise TimeoutError(f"{what}: not within {timeout_s:.0f} s")


def _versions(cluster: PgCluster, orthanc: OrthancProcess) -> dict[str, Any]:
    system = orthanc.get("/system")
    if not isinstance(system, dict) or "PostgreSQL" not in str(
            system.get("DatabaseBackendPlugin")):
        raise RuntimeError(f"Orthanc is not on its PostgreSQL index: /system = {system}")
    return {"postgresql": cluster.version(), "orthanc": system.get("Version"),
            "orthanc_database": system.get("DatabaseBackendPlugin"),
            "orthanc_plugins": orthanc.get("/plugins"),
            "haproxy": tool_version(["/usr/sbin/haproxy", "-v"]),
            "storescu": tool_version([tool("storescu"), "--version"])}


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.quick:
        for name, value in QUICK.items():
            setattr(args, name, value)
    procs_list = sorted({int(x) for x in str(args.procs).split(",") if x.strip()})
    if not procs_list or procs_list[0] < 1:
        raise ValueError(f"--procs {args.procs!r}: give process counts >= 1, e.g. 1,2,4")
    ct_dir = shared_data() / "dicom" / "ct"
    ct_files = sorted(ct_dir.glob("*.dcm"))
    ct_study, ct_series = viewer._ct_ids(ct_files)
    os.environ["TCP_NODELAY"] = "1"  # DCMTK (and Orthanc's) Nagle stall, as in bench viewer
    work = Path(tempfile.mkdtemp(prefix="fenji-bench-scale-"))
    result: dict[str, Any] = {"instances": args.instances, "procs": procs_list}
    running: list[Any] = []
    cluster = PgCluster(durable=True)
    try:
        t0 = time.perf_counter()
        studies = viewer.generate(args.instances, work / "data", args.seed)
        dirs = sorted(p for p in (work / "data").iterdir() if p.is_dir())
        qs = viewer.queries(studies, args.queries, args.seed)
        print(f"  generated {args.instances} instances in {time.perf_counter() - t0:.0f}s",
              flush=True)

        procs = _center_procs(work, cluster.new_database("fenji"), max(procs_list))
        solo = NodeProcess(work / "sqlite-center", name="center", role="center",
                           allow_ae=["*"], workers=1, users={"viewer": "reader"})
        edge = NodeProcess(work / "edge", name="edge", allow_ae=["CT1"], workers=1)
        edge.add_peer(procs[0], default=True)
        for c in (procs[0], solo):
            c.add_peer(edge)
        sets = [f"p{k}" for k in procs_list]
        t0 = time.perf_counter()
        shapes = {name: (args.cases, args.case_instances) for name in sets}
        # One case for each server to take before the clock runs: a process's first
        # bundle loads the pixel codec's compiled kernels (Numba's cache), ~1 s.
        shapes["warm"] = (len(procs) + 2, 1)
        cases = _bundle_sets(edge, work, shapes, args.size, ct_files)
        print(f"  released {len(sets)} x {args.cases} cases in {time.perf_counter() - t0:.0f}s",
              flush=True)

        t0 = time.perf_counter()
        # Started side by side: each spends its first seconds importing.
        orthanc = OrthancProcess(work / "orthanc", index_url=cluster.new_database("orthanc"),
                                 index_connections=args.orthanc_connections,
                                 extra={"LimitFindResults": 0, "LimitFindInstances": 0})
        servers: list[Any] = [*procs, solo, orthanc]
        with ThreadPoolExecutor(len(servers)) as ex:
            futures = [ex.submit(s.start) for s in servers]
            running += servers
            for f in futures:
                f.result()
        lbs = {k: HaproxyProcess(work / f"haproxy-{k}",
                                 http_servers=[p.http_port for p in procs[:k]],
                                 dicom_servers=[p.dicom_port for p in procs[:k]])
               for k in procs_list if k > 1}
        for lb in lbs.values():
            running.append(lb.start())
        for k, lb in lbs.items():
            _wait(lambda lb=lb, k=k: all(lb.up(i) for i in range(k)), 60,
                  f"HAProxy to see {k} center processes")
        print(f"  servers up in {time.perf_counter() - t0:.0f}s", flush=True)
        result["versions"] = _versions(cluster, orthanc)

        targets: list[Target] = []
        for k in procs_list:
            front: Any = lbs[k] if k > 1 else procs[0]
            url = front.url if k > 1 else front.http_url
            targets.append(Target(f"pg-{k}", f"fenji, {k} process{'es' if k > 1 else ''}",
                                  k, "PostgreSQL", url, front.dicom_port,
                                  procs[0].auth("viewer")))
        targets.append(Target("sqlite", "fenji", 1, "SQLite", solo.http_url, solo.dicom_port,
                              solo.auth("viewer")))
        targets.append(Target("orthanc-pg", "Orthanc", 1, "PostgreSQL", orthanc.url,
                              orthanc.dicom_port))
        loaders = [next(t for t in targets if t.key == f"pg-{procs_list[-1]}"),
                   targets[-2], targets[-1]]
        for t in loaders:
            t.out["load"] = _load(t, dirs, ct_dir, args.senders, args.instances,
                                  args.phase_timeout)
            print(f"  {t.key}: loaded {args.instances} in {t.out['load']['wall_s']:.0f}s "
                  f"(storescu failures, each re-run: {len(t.out['load']['storescu_failures'])})",
                  flush=True)

        result["orthanc_statistics"] = orthanc.get("/statistics")  # what it indexed
        for t in targets:
            t.out["qido"] = _qido(t, qs, args.qido_clients)
            t.out["wado"] = viewer.wado_series(t.http + "/dicom-web", ct_study, ct_series,
                                               t.headers, args.runs)
            print(f"  {t.key}: QIDO p95 {t.out['qido']['p95_ms']:.1f} ms, WADO "
                  f"{t.out['wado']['mb_s']:.0f} MB/s", flush=True)

        edge_cfg = config_mod.load(edge.config, env={})
        pg_key, solo_key = _peer_key(procs[0]), _peer_key(solo)
        warm = list(cases["warm"])
        for node in [*procs, solo]:
            asyncio.run(_upload(node.http_url, [warm.pop()], edge_cfg,
                                solo_key if node is solo else pg_key, 1, args.phase_timeout))
        _stow(orthanc.url + "/dicom-web", [warm.pop()], 1, args.phase_timeout)
        for t in targets:
            if t.key == "orthanc-pg":
                t.out["upload"] = _stow(t.http + "/dicom-web", cases[sets[0]], args.clients,
                                        args.phase_timeout)
            else:
                peer_key = pg_key if t.key.startswith("pg") else solo_key
                mine = cases[f"p{t.processes}"] if t.key.startswith("pg") else cases[sets[0]]
                t.out["upload"] = asyncio.run(_upload(t.http, mine, edge_cfg, peer_key,
                                                      args.clients, args.phase_timeout))
            print(f"  {t.key}: {t.out['upload']['units_s']:.2f} bundles|studies/s, "
                  f"{t.out['upload']['instances_s']:.1f} instances/s", flush=True)
    finally:
        with ThreadPoolExecutor(max(1, len(running))) as ex:  # each waits for its drain
            list(ex.map(_stop, running))
        cluster.stop()
        if args.keep:
            print(f"  kept {work}", flush=True)
        else:
            shutil.rmtree(work, ignore_errors=True)
    rows = _rows(targets)
    result["targets"] = {t.key: {**{k: v for k, v in t.out.items() if k != "qido"},
                                 "qido": {k: v for k, v in t.out["qido"].items()
                                          if k != "found"}}
                         for t in targets}
    result["queries"] = qs
    result["rows"] = rows
    print(markdown_table(rows, COLS))
    print("upload: fenji = signed bundles by the transfer client; Orthanc = the same "
          "instances by STOW-RS, one request per study. Ratios are fenji / Orthanc+PostgreSQL "
          "(QIDO p95: Orthanc / fenji, so > 1 means fenji is faster).")
    return result


COLS = ["server", "procs", "index", "upload", "bundles/s", "inst/s", "inst/s vs Orthanc",
        "load inst/s", "QIDO p50 ms", "QIDO p95 ms", "QIDO p95 vs Orthanc", "QIDO p95 ms (C)",
        "QIDO q/s (C)", "same QIDO answers", "WADO MB/s", "WADO vs Orthanc"]


def _rows(targets: list[Target]) -> list[dict[str, Any]]:
    ref = next(t for t in targets if t.key == "sqlite").out["qido"]["found"]
    orth = next(t for t in targets if t.key == "orthanc-pg").out
    rows = []
    for t in targets:
        o, up = t.out, t.out["upload"]
        q, w = o["qido"], o["wado"]
        is_o = t.key == "orthanc-pg"
        rows.append({
            "key": t.key, "server": t.label, "procs": t.processes, "index": t.index,
            "upload": "STOW-RS/study" if is_o else "bundles",
            "bundles/s": None if is_o else up["units_s"], "inst/s": up["instances_s"],
            "inst/s vs Orthanc": None if is_o else up["instances_s"] /
            orth["upload"]["instances_s"],
            "load inst/s": o["load"]["instances_s"] if "load" in o else None,
            "QIDO p50 ms": q["p50_ms"], "QIDO p95 ms": q["p95_ms"],
            "QIDO p95 vs Orthanc": None if is_o else orth["qido"]["p95_ms"] / q["p95_ms"],
            "QIDO p95 ms (C)": q["p95_concurrent_ms"], "QIDO q/s (C)": q["qps_concurrent"],
            "same QIDO answers": f"{sum(a == b for a, b in zip(q['found'], ref, strict=True))}"
                                 f"/{len(ref)}",
            "WADO MB/s": w["mb_s"],
            "WADO vs Orthanc": None if is_o else w["mb_s"] / orth["wado"]["mb_s"]})
    return rows
