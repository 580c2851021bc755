"""Peak RSS of the DICOM receive workers while a CT series arrives, before and after.

A node (supervisor + ``--workers`` DICOM workers, as ``fenji node`` runs) stores
a CT series sent by DCMTK ``storescu``; then each process's peak RSS (VmHWM in
/proc) is read, and whether numba's LLVM library is mapped in it.  The series is
``--n`` distinct 512x512 slices derived at run time from the shared CT set.

``--before REF`` runs the same node first from the sources of git revision REF
(``git archive``, put first on the node's PYTHONPATH), so one run prints both:
e.g. ``python -m bench rss --before main``.  REF may also be a directory holding
``gateway/``, ``codecs/`` and ``routing/`` (a patched copy, for a what-if), and
``--before`` may be given more than once.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import dcmtk_env, print_table, shared_data
from fenji.gateway.lab.dcmtk import tool
from fenji.gateway.lab.harness import NodeProcess
from fenji.gateway.lab.synth import derive

DESCRIPTION = "DICOM worker peak RSS while a CT series is stored (and is numba loaded?)"
REPO = Path(__file__).resolve().parents[1]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n", type=int, default=60, help="512x512 CT slices to send (default 60)")
    p.add_argument("--workers", type=int, default=2, help="DICOM workers (default 2)")
    p.add_argument("--before", metavar="REF", action="append", default=[],
                   help="also run the node from git revision (or source directory) REF first")


def _status(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, val = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            out[key] = int(val.split()[0])
    return out


def _numba_mapped(pid: int) -> bool:
    """numba's compiled parts or llvmlite's LLVM are mapped: numba was imported."""
    maps = Path(f"/proc/{pid}/maps").read_text()
    return "libllvmlite" in maps or "/numba/" in maps


def _source_tree(ref: str, work: Path, n: int) -> Path:
    """A PYTHONPATH entry whose ``fenji`` is revision (or directory) ``ref``."""
    src = Path(ref).resolve()
    if not src.is_dir():
        src = work / f"src-{n}"
        src.mkdir()
        tar = work / "src.tar"
        subprocess.run(["git", "-C", str(REPO), "archive", "-o", str(tar), ref, "gateway",
                        "codecs", "routing"], check=True)
        with tarfile.open(tar) as t:
            t.extractall(src, filter="data")
    pkg = work / f"path-{n}" / "fenji"
    pkg.mkdir(parents=True)
    for name in ("gateway", "codecs", "routing"):
        (pkg / name).symlink_to(src / name)
    return pkg.parent


def _measure(label: str, files: list[Path], directory: Path, workers: int,
             env: dict[str, str]) -> list[dict[str, Any]]:
    node = NodeProcess(directory, name="rss", workers=workers, allow_ae=["*"], env=env)
    with node:
        assert node.proc is not None
        info = json.loads(node.run_file.read_text())
        t0 = time.perf_counter()
        r = subprocess.run([tool("storescu"), "-xe", "-aet", "RSSBENCH", "-aec", "FENJI",
                            "127.0.0.1", str(node.dicom_port), *map(str, files)],
                           capture_output=True, env=dcmtk_env(), timeout=1800)
        seconds = time.perf_counter() - t0
        if r.returncode != 0:
            raise RuntimeError(f"storescu failed: {r.stderr.decode(errors='replace')[-400:]}")
        stored = len(node.stored())
        if stored != len(files):
            raise RuntimeError(f"{label}: fenji stored {stored} of {len(files)}")
        rows = []
        for role, pid in [("supervisor", node.proc.pid)] + [("worker", p)
                                                             for p in info["workers"]]:
            st = _status(pid)
            rows.append({"code": label, "process": role, "pid": pid,
                         "peak MiB": st["VmHWM"] / 1024, "now MiB": st["VmRSS"] / 1024,
                         "numba": "yes" if _numba_mapped(pid) else "no",
                         "stored": stored, "seconds": seconds})
    return rows


def run(args: argparse.Namespace) -> dict[str, Any]:
    ct = sorted((shared_data() / "dicom" / "ct").glob("CT_*.dcm"))
    work = Path(tempfile.mkdtemp(prefix="fenji-bench-rss-"))
    try:
        files = derive(ct, work / "series", args.n, prefix="r")
        runs: list[tuple[str, dict[str, str]]] = []
        for n, ref in enumerate(args.before):
            path = _source_tree(ref, work, n)
            runs.append((Path(ref).name if Path(ref).is_dir() else ref, {
                "PYTHONPATH": os.pathsep.join([str(path), os.environ.get("PYTHONPATH", "")])
                .rstrip(os.pathsep)}))
        head = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"],
                              capture_output=True, text=True).stdout.strip() or "this checkout"
        runs.append((head, {}))
        rows: list[dict[str, Any]] = []
        for label, env in runs:
            rows += _measure(label, files, work / f"node-{len(rows)}", args.workers, env)
            print(f"  {label}: stored {rows[-1]['stored']} in {rows[-1]['seconds']:.1f} s",
                  flush=True)
        print_table(rows, ["code", "process", "peak MiB", "now MiB", "numba"])
        for label, _env in runs:
            w = [r["peak MiB"] for r in rows if r["code"] == label and r["process"] == "worker"]
            total = sum(r["peak MiB"] for r in rows if r["code"] == label)
            print(f"{label}: worker peak {max(w):.0f} MiB (mean {sum(w) / len(w):.0f}), "
                  f"supervisor + workers {total:.0f} MiB")
        return {"rows": rows, "slices": args.n, "workers": args.workers,
                "slice_bytes": sum(f.stat().st_size for f in files)}
    finally:
        shutil.rmtree(work, ignore_errors=True)
