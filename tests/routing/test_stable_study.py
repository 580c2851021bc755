"""A study that stops growing is released by the stable-study timer, recorded as such."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from _data import ct_series

from fenji.gateway.lab.dcmtk import storescu
from fenji.gateway.lab.harness import NodeProcess

pytestmark = pytest.mark.timeout(300)


def test_stable_study_timer_releases_and_sends(tmp_path: Path) -> None:
    edge = NodeProcess(tmp_path / "edge", name="edge", allow_ae=["CT1"], workers=1,
                       extra_toml="[transfer]\nstable_study_s = 2.0\n")
    center = NodeProcess(tmp_path / "center", name="center", role="center", workers=1)
    edge.add_peer(center, default=True)
    center.add_peer(edge)
    with edge, center:
        files = ct_series()[:6]
        storescu(files, edge.dicom_port, calling="CT1")
        deadline = time.monotonic() + 120
        rows: list[dict] = []  # type: ignore[type-arg]
        while time.monotonic() < deadline:
            rows = [json.loads(x) for x in center.cli("case", "ls", "--json").stdout
                    .splitlines() if x.strip()]
            if rows and rows[0]["state"] == "received":
                break
            time.sleep(0.5)
        assert rows and rows[0]["state"] == "received"
        mine = [json.loads(x) for x in edge.cli("case", "ls", "--json").stdout.splitlines()]
        assert len(mine) == 1 and mine[0]["released_by"] == "timer"
        assert len(center.stored()) == len(files)
