"""`fenji conf check` as an engineer runs it (issue 18's walkthrough): in the node's
folder without naming the file, and on a node that is running."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fenji.gateway.lab import demo
from fenji.gateway.lab.harness import NodeProcess

pytestmark = pytest.mark.timeout(300)


def _check(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "FENJI_CONFIG"}
    return subprocess.run([sys.executable, "-m", "fenji.gateway.cli.main", "conf", "check",
                           *args], capture_output=True, text=True, timeout=60, cwd=cwd, env=env)


def test_conf_check_finds_its_config_and_knows_its_own_running_node(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "edge", workers=1)
    r = _check(node.directory)  # ./fenji.toml, as every other verb finds it
    assert r.returncode == 0 and "ok (node" in r.stdout, r.stderr
    with node:
        r = _check(node.directory)
        assert r.returncode == 0, r.stderr
        assert f"this node is running (pid {node.proc.pid})" in r.stderr  # type: ignore[union-attr]
        # Another node's config on the same ports is still refused, naming the holder.
        other = NodeProcess(tmp_path / "other", dicom_port=node.dicom_port)
        r = _check(tmp_path, str(other.config))
        assert r.returncode == 1 and f"dicom.port {node.dicom_port} is in use" in r.stderr


def test_demo_finds_the_shared_data_beside_the_repository() -> None:
    assert (demo.REPO / "pyproject.toml").is_file()
    if not os.environ.get("FENJI_SHARED_DATA"):
        assert demo._shared_dicom() == demo.REPO.parent / "shared" / "data" / "dicom"
