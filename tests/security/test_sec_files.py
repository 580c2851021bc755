"""Issue 17, finding 9: a node's config, keys, store and log are its user's alone.

The test process runs with umask 022 (files 0644, readable by every local
user); the node and ``fenji init`` set their own umask.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from _data import ct_series

from fenji.gateway.lab.dcmtk import storescu
from fenji.gateway.lab.harness import NodeProcess

pytestmark = pytest.mark.timeout(300)


def test_store_config_and_log_are_owner_only(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        node = NodeProcess(tmp_path / "n", name="n", workers=1,
                           extra_toml='[log]\nfile = "logs/fenji.log"\n')
        with node:
            storescu(ct_series()[:2], node.dicom_port, calling="CT1")
    finally:
        os.umask(old)
    root = node.directory
    files = [root / "fenji.toml", root / "keys" / "node.key", root / "store" / "index.sqlite",
             root / "logs" / "fenji.log"]
    blobs = [p for p in (root / "store").rglob("*") if p.is_file()
             and p.stat().st_size > 100_000]  # the two CT instances
    assert len(blobs) >= 2, sorted(str(p) for p in (root / "store").rglob("*"))
    loose = {}
    for p in [*files, *blobs]:
        mode = stat.S_IMODE(p.stat().st_mode)
        if mode & 0o077:
            loose[str(p.relative_to(root))] = oct(mode)
    for d in [root, *(p for p in root.rglob("*") if p.is_dir())]:
        mode = stat.S_IMODE(d.stat().st_mode)
        if mode & 0o077:
            loose[str(d.relative_to(root)) + "/"] = oct(mode)
    assert not loose, f"readable by other users: {loose}"
