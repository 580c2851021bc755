"""Driving DCMTK's command-line tools (storescu, echoscu, storescp).

Used by ``make demo``, the interop tests and the benchmarks.  DCMTK is called
by full path: pynetdicom installs scripts named ``storescu``/``echoscu`` into
the virtual environment that shadow DCMTK's on PATH.

storescu proposes, per file, only the transfer syntaxes its options name, and
cannot transcode compressed data.  :func:`storescu` therefore groups files by
their own transfer syntax and runs one storescu per group with the matching
``-x`` option, so every file travels exactly as stored on disk.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

# storescu option that proposes each transfer syntax (storescu --help).
_TS_OPTION = {
    "1.2.840.10008.1.2": "-xi",
    "1.2.840.10008.1.2.1": "-xe",
    "1.2.840.10008.1.2.2": "-xb",
    "1.2.840.10008.1.2.1.99": "-xd",
    "1.2.840.10008.1.2.5": "-xr",
    "1.2.840.10008.1.2.4.50": "-xy",
    "1.2.840.10008.1.2.4.51": "-xx",
    "1.2.840.10008.1.2.4.57": "-xs",
    "1.2.840.10008.1.2.4.70": "-xs",
    "1.2.840.10008.1.2.4.80": "-xt",
    "1.2.840.10008.1.2.4.81": "-xu",
    "1.2.840.10008.1.2.4.90": "-xv",
    "1.2.840.10008.1.2.4.91": "-xw",
    "1.2.840.10008.1.2.4.100": "-xm",
    "1.2.840.10008.1.2.4.101": "-xh",
    "1.2.840.10008.1.2.4.102": "-xn",
    "1.2.840.10008.1.2.4.103": "-xl",
}


def tool(name: str) -> str:
    """Full path of a DCMTK tool (never pynetdicom's namesake script)."""
    for d in ("/usr/bin", "/usr/local/bin"):
        p = Path(d) / name
        if p.exists():
            return str(p)
    found = shutil.which(name)
    if found and ".venv" not in found:
        return found
    raise FileNotFoundError(f"DCMTK {name} not found; install the Debian package dcmtk")


def file_transfer_syntax(path: Path) -> str | None:
    """The Transfer Syntax UID in a Part-10 file's meta, or None if unreadable."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096)
    except OSError:
        return None
    if len(head) < 132 or head[128:132] != b"DICM":
        return None
    pos = 132
    while pos + 8 <= len(head):
        g, e = struct.unpack_from("<HH", head, pos)
        if g != 2:
            return None
        vr = head[pos + 4:pos + 6]
        if vr in (b"OB", b"OW", b"UN", b"UT", b"SQ"):
            n = struct.unpack_from("<L", head, pos + 8)[0]
            pos += 12
        else:
            n = struct.unpack_from("<H", head, pos + 6)[0]
            pos += 8
        if (g, e) == (2, 0x10):
            return head[pos:pos + n].decode("latin-1").rstrip("\x00 ")
        pos += n
    return None


@dataclass
class StoreResult:
    """What storescu reported, per file."""

    sent: list[Path] = field(default_factory=list)  # answered with success
    failed: dict[Path, str] = field(default_factory=dict)  # path -> reason
    returncodes: list[int] = field(default_factory=list)
    output: str = ""


_FAIL_RE = re.compile(r"(?:Store Failed, file|Bad DICOM file|No SOP Class or Instance UID in "
                      r"file|No presentation context for:.*?file)\s*:?\s*(\S+?):?\s*$")


def storescu(files: Iterable[Path], port: int, *, host: str = "127.0.0.1",
             calling: str = "STORESCU", called: str = "FENJI", timeout_s: float = 600,
             extra: Sequence[str] = (), env: dict[str, str] | None = None) -> StoreResult:
    """Send ``files`` with DCMTK storescu, one run per transfer syntax group.

    A file counts as sent when storescu logged a success status for it
    (``-v`` prints "Received Store Response (Success)" after "Sending file").
    """
    groups: dict[str, list[Path]] = {}
    result = StoreResult()
    for f in files:
        ts = file_transfer_syntax(Path(f))
        groups.setdefault(_TS_OPTION.get(ts or "", "-xe"), []).append(Path(f))
    run_env = dict(os.environ if env is None else env)
    for option, group in sorted(groups.items()):
        cmd = [tool("storescu"), "-v", "-R", option, "--no-halt", "-aet", calling, "-aec",
               called, *extra, host, str(port), *map(str, group)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s,
                              env=run_env, check=False)
        out = proc.stdout + proc.stderr
        result.output += out
        result.returncodes.append(proc.returncode)
        current: Path | None = None
        ok: set[Path] = set()
        for line in out.splitlines():
            if line.startswith("I: Sending file: "):
                current = Path(line[len("I: Sending file: "):].strip())
            elif "Received Store Response (Success)" in line and current is not None:
                ok.add(current)
                current = None
            elif "Received Store Response" in line and current is not None:
                result.failed[current] = line.split("Received Store Response", 1)[1].strip()
                current = None
        for p in group:
            if p in ok:
                result.sent.append(p)
            elif p not in result.failed:
                result.failed[p] = _reason_for(p, out)
    return result


def _reason_for(path: Path, output: str) -> str:
    lines = [ln for ln in output.splitlines() if str(path) in ln or ln.startswith("E:")]
    for i, ln in enumerate(lines):
        if str(path) in ln:
            return " ".join(lines[i:i + 2])[:300]
    return "not sent (see storescu output)"


def echoscu(port: int, *, host: str = "127.0.0.1", calling: str = "ECHOSCU",
            called: str = "FENJI", timeout_s: float = 30) -> bool:
    proc = subprocess.run([tool("echoscu"), "-to", str(int(timeout_s)), "-aet", calling, "-aec",
                           called, host, str(port)], capture_output=True, text=True,
                          timeout=timeout_s + 5, check=False)
    return proc.returncode == 0
