"""Small clients the tests share (import as ``from _tools import call, pdftotext``)."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest


def call(method: str, url: str, headers: dict[str, str] | None = None,
         body: Any = None, *, timeout_s: float = 60) -> tuple[int, Any]:
    """One JSON request to a node: (HTTP status, JSON body, or the raw bytes if not JSON).

    ``timeout_s`` bounds the wait for the answer (an event, not a pause)."""
    data = json.dumps(body, ensure_ascii=False).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={**(headers or {}), "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as r:  # noqa: S310 - loopback
            raw, status = r.read(), r.status
    except urllib.error.HTTPError as exc:
        raw, status = exc.read(), exc.code
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw


def pdftotext(path: Path) -> str:
    """The text of a PDF as poppler's pdftotext reads it (UTF-8)."""
    exe = shutil.which("pdftotext")
    if exe is None:
        pytest.fail("pdftotext (poppler-utils) not installed: apt-get install poppler-utils")
    return subprocess.run([exe, "-enc", "UTF-8", str(path), "-"], capture_output=True,
                          check=True, timeout=60).stdout.decode()


def proc_vm(pid: int, key: str) -> int:
    """A ``/proc/PID/status`` size field (``VmRSS:``, ``VmHWM:``) in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {key} in /proc/{pid}/status")


def reset_peak_rss(pid: int) -> int:
    """Reset the process's VmHWM to its current RSS (``clear_refs`` 5, Linux >= 4.0)
    so that a peak measured next is what follows; returns the RSS."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return proc_vm(pid, "VmRSS:")
