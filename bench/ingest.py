"""Ingest: DCMTK storescu into fenji's SCP vs into DCMTK storescp, same run.

Sets (derived at run time from the shared data, deleted afterwards):

* ``ct-small``: many small CT slices (136x136, ~39 kB each);
* ``ct-512``: full 512x512 CT slices (~0.5 MB each);
* ``cr-large``: the 1760x1760 CR (6.2 MB each).

Each set is sent by one storescu, and ``ct-small`` also by 4 storescu at
once (several modalities).  fenji runs with its durability on (fsync of every
blob and index commit before the answer); storescp does not fsync.  Both
sides run with ``TCP_NODELAY=1`` so neither is measured with the Nagle stall.
Reported: instances/s, MB/s, ratio fenji/storescp per set, fenji's peak RSS
(supervisor + workers).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import dcmtk_env, free_port, print_table, shared_data, start_storescp
from fenji.gateway.lab.dcmtk import tool
from fenji.gateway.lab.harness import NodeProcess
from fenji.gateway.lab.synth import derive

DESCRIPTION = "storescu -> fenji SCP vs storescu -> DCMTK storescp (instances/s, MB/s, ratio)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--small", type=int, default=400, help="small CT slices (default 400)")
    p.add_argument("--medium", type=int, default=60, help="512x512 CT slices (default 60)")
    p.add_argument("--large", type=int, default=8, help="1760x1760 CR images (default 8)")
    p.add_argument("--repeat", type=int, default=3, help="runs per set and side (median)")
    p.add_argument("--workers", type=int, default=0, help="fenji workers (0: one per core)")
    p.add_argument("--parallel", type=int, default=4, help="concurrent senders for ct-small")


def _send(files: list[Path], port: int, called: str, parallel: int) -> float:
    """Run ``parallel`` storescu over ``files``; return wall seconds."""
    chunks = [files[i::parallel] for i in range(parallel)]
    t0 = time.perf_counter()
    procs = [subprocess.Popen([tool("storescu"), "-R", "-xe", "-aet", f"BENCH{i}", "-aec",
                               called, "127.0.0.1", str(port), *map(str, c)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=dcmtk_env())
             for i, c in enumerate(chunks) if c]
    errors = []
    for p in procs:
        _, err = p.communicate(timeout=1800)
        if p.returncode != 0:
            errors.append(err.decode(errors="replace")[-500:])
    dt = time.perf_counter() - t0
    if errors:
        raise RuntimeError("storescu failed: " + " | ".join(errors))
    return dt


def _rss_kib(pid: int) -> int:
    """VmHWM of ``pid`` and all its descendants, in KiB."""
    total = 0
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
            for task in Path(f"/proc/{p}/task").iterdir():
                kids = (task / "children").read_text().split()
                todo.extend(int(k) for k in kids)
        except OSError:
            continue
    return total


def run(args: argparse.Namespace) -> dict[str, Any]:
    data = shared_data() / "dicom"
    ct = sorted((data / "ct").glob("CT_*.dcm"))
    work = Path(tempfile.mkdtemp(prefix="fenji-bench-ingest-"))
    try:
        sets = {
            "ct-small": derive(ct, work / "small", args.small, size=136, prefix="s"),
            "ct-512": derive(ct, work / "medium", args.medium, prefix="m"),
            "cr-large": derive([data / "cr" / "RG3_UNC.dcm"], work / "large", args.large,
                               prefix="l"),
        }
        plans = [("ct-small", 1), ("ct-512", 1), ("cr-large", 1), ("ct-small", args.parallel)]
        rows = []
        raw: dict[str, Any] = {}
        peak_rss = 0
        for name, parallel in plans:
            files = sets[name]
            mb = sum(f.stat().st_size for f in files) / 1e6
            samples: dict[str, list[float]] = {"fenji": [], "storescp": []}
            for rep in range(args.repeat):
                node = NodeProcess(work / f"node-{name}-{parallel}-{rep}", name="bench",
                                   workers=args.workers, allow_ae=["*"])
                with node:
                    samples["fenji"].append(_send(files, node.dicom_port, "FENJI", parallel))
                    assert node.proc is not None
                    peak_rss = max(peak_rss, _rss_kib(node.proc.pid))
                    n_stored = len(node.stored())
                if n_stored != len(files):
                    raise RuntimeError(f"fenji stored {n_stored} of {len(files)}")
                shutil.rmtree(node.directory)
                out = work / "scp-out"
                out.mkdir(exist_ok=True)
                port = free_port()
                scp = start_storescp(out, port, fork=parallel > 1)
                try:
                    samples["storescp"].append(_send(files, port, "STORESCP", parallel))
                finally:
                    scp.terminate()
                    scp.wait(timeout=30)
                shutil.rmtree(out)
            f_s = statistics.median(samples["fenji"])
            s_s = statistics.median(samples["storescp"])
            label = f"{name} x{parallel}" if parallel > 1 else name
            raw[label] = {"instances": len(files), "mb": mb, "seconds": samples}
            rows.append({
                "set": label, "n": len(files), "MB": round(mb, 1),
                "fenji inst/s": len(files) / f_s, "fenji MB/s": mb / f_s,
                "storescp inst/s": len(files) / s_s, "storescp MB/s": mb / s_s,
                "ratio": s_s / f_s,
            })
            print(f"  {label}: fenji {len(files) / f_s:.0f} inst/s, storescp "
                  f"{len(files) / s_s:.0f} inst/s, ratio {s_s / f_s:.2f}", flush=True)
        print_table(rows, ["set", "n", "MB", "fenji inst/s", "fenji MB/s", "storescp inst/s",
                           "storescp MB/s", "ratio"])
        print(f"fenji peak RSS (supervisor + workers): {peak_rss / 1024:.0f} MiB")
        return {"rows": rows, "raw": raw, "fenji_peak_rss_kib": peak_rss,
                "workers": args.workers or os.cpu_count(),
                "storescp_version": subprocess.run([tool("storescp"), "--version"],
                                                   capture_output=True, text=True).stdout
                .splitlines()[0:1]}
    finally:
        shutil.rmtree(work, ignore_errors=True)
