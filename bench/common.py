"""Helpers shared by the benchmarks: machine facts, peers, tables, JSON."""

from __future__ import annotations

import json
import os
import platform
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fenji.gateway.lab.dcmtk import tool as dcmtk_tool
from fenji.gateway.lab.harness import free_port as free_port

REPO = Path(__file__).resolve().parents[1]


def shared_data() -> Path:
    """The read-only shared data folder (``../shared/data`` beside the repo)."""
    env = os.environ.get("FENJI_SHARED_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


def tool_version(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable: {exc}"
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0] if text else ""


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "hostname": socket.gethostname(),
    }
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return info


def envelope(name: str, params: dict[str, Any], result: Any) -> dict[str, Any]:
    clean = {k: (str(v) if isinstance(v, Path) else v) for k, v in params.items()}
    return {
        "benchmark": name,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "params": clean,
        "result": result,
    }


def write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, default=str) + "\n")


def print_table(rows: Sequence[dict[str, Any]], cols: Sequence[str]) -> None:
    """Print rows as an aligned text table (floats to 3 significant figures)."""

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
        return "" if v is None else str(v)

    cells = [[fmt(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c)
              for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))


def markdown_table(rows: Sequence[dict[str, Any]], cols: Sequence[str]) -> str:
    """Rows as a markdown table (floats to 3 significant figures; None blank)."""

    def fmt(v: Any) -> str:
        if isinstance(v, bool):
            return "yes" if v else "no"
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
        return "" if v is None else str(v).replace("|", "/")

    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def children_peak_rss_kib() -> int:
    return int(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)


def dcmtk_env() -> dict[str, str]:
    """The environment for DCMTK tools: TCP_NODELAY=1 (DCMTK reads it), so neither side
    of a benchmark stalls ~40 ms per message on Nagle and the peer's delayed ACK."""
    env = dict(os.environ)
    env["TCP_NODELAY"] = "1"
    return env


def start_storescp(outdir: Path, port: int, *, ae_title: str = "STORESCP",
                   fork: bool = False, timeout_s: float = 20.0) -> subprocess.Popen[bytes]:
    """DCMTK storescp writing into ``outdir`` on ``port``, returned once it listens."""
    outdir.mkdir(parents=True, exist_ok=True)
    cmd = [dcmtk_tool("storescp"), "-aet", ae_title, "-od", str(outdir), "--accept-all"]
    if fork:
        cmd.append("--fork")
    proc = subprocess.Popen([*cmd, str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=dcmtk_env())
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as sk:
            if sk.connect_ex(("127.0.0.1", port)) == 0:
                return proc
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"storescp did not start listening on port {port} in {timeout_s:.0f} s")
