"""Pairing from nothing in two commands, and an unknown sender that gets through once
it is added, without a restart or a manual retry (issue 18, point 2).  Real nodes."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pydicom
import pytest
from _data import ct_series

from fenji.gateway.lab.dcmtk import storescu
from fenji.gateway.lab.harness import NodeProcess, fenji_cmd

pytestmark = pytest.mark.timeout(600)
LAB = "[transfer]\nallow_plain_http = true\n"  # loopback only; a hospital uses https


def _fenji(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*fenji_cmd(), *args], capture_output=True, text=True, timeout=120,
                          cwd=cwd)


def _invite(node: NodeProcess) -> str:
    r = _fenji("peer", "invite", "--config", str(node.config), "--url", node.http_url)
    assert r.returncode == 0, r.stderr
    assert "key fingerprint" in r.stderr
    (line,) = r.stdout.split()
    return line


def test_pairing_in_two_commands_and_unknown_sender_gets_through(tmp_path: Path) -> None:
    edge = NodeProcess(tmp_path / "edge", name="edge", allow_ae=["CT1"], workers=1,
                       extra_toml=LAB)
    center = NodeProcess(tmp_path / "center", name="center", role="center", workers=1,
                         extra_toml=LAB)
    with edge, center:
        # The edge learns the center (and makes it where cases go) while both run.
        add = _fenji("peer", "add", _invite(center), "--default", "--config", str(edge.config))
        assert add.returncode == 0, add.stderr
        assert "no restart needed" in add.stdout
        files = ct_series()[:3]
        assert len(storescu(files, edge.dicom_port, calling="CT1").sent) == len(files)
        study = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
        sent = edge.cli("case", "send", study, "--no-gate", "--json")
        case_id = json.loads(sent.stdout.splitlines()[-1])["case_id"]
        # The center does not know the edge yet: it says so, with the key, and the job
        # waits for the peer instead of dying.
        assert json.loads(edge.cli("peer", "ls", "--json").stdout)["default"] is True
        edge_line = _invite(edge)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and "unknown-node" not in center.log_tail(200):
            time.sleep(0.2)
        assert "unknown-node" in center.log_tail(200)
        assert "fenji peer add" in center.log_tail(200)
        jobs = [json.loads(x) for x in edge.cli("queue", "ls", "--json").stdout.splitlines()
                if x.strip()]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(
                "waiting for peer" in str(j.get("last_error")) for j in jobs):
            time.sleep(0.2)
            jobs = [json.loads(x) for x in edge.cli("queue", "ls", "--json").stdout
                    .splitlines() if x.strip()]
        assert jobs and all(j["state"] != "dead" for j in jobs), jobs
        assert any("waiting for peer" in str(j.get("last_error")) for j in jobs), jobs
        # Pair the other way: one command on the center, no restart, no retry by hand.
        add = _fenji("peer", "add", edge_line, "--config", str(center.config))
        assert add.returncode == 0, add.stderr
        deadline = time.monotonic() + 180
        received = False
        while time.monotonic() < deadline and not received:
            rows = [json.loads(x) for x in center.cli("case", "ls", "--json").stdout
                    .splitlines() if x.strip()]
            received = any(r["case_id"] == case_id and r["state"] == "received" for r in rows)
            time.sleep(0.5)
        assert received, edge.log_tail(40)
        assert len(center.stored()) == len(files)


def test_bad_pairing_lines_are_refused_with_the_reason(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "n", name="n", extra_toml=LAB)
    line = _invite(node)
    for bad, why in ((line[:40], "damaged"), ("hello", "not a pairing line"),
                     (line, "this node's own line")):
        r = _fenji("peer", "add", bad, "--config", str(node.config))
        assert r.returncode == 2 and why in r.stderr, (bad, r.stderr)
    other = NodeProcess(tmp_path / "o", name="o", extra_toml=LAB)
    ok = _fenji("peer", "add", _invite(other), "--config", str(node.config))
    assert ok.returncode == 0 and "not running" in ok.stdout
    again = _fenji("peer", "add", _invite(other), "--config", str(node.config))
    assert again.returncode == 2 and "already configured" in again.stderr
