"""`python -m bench scale --quick` end to end: a smoke test of the benchmark itself
(PostgreSQL cluster, four center processes, two HAProxies, fenji on SQLite, Orthanc
on its PostgreSQL index), not a measurement -- no figure is checked, only that
every configuration has every row and that the servers answered alike."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from _data import REPO

from bench.scale import COLS, QUICK

pytestmark = pytest.mark.timeout(600)

KEYS = ["pg-1", "pg-2", "pg-4", "sqlite", "orthanc-pg"]


def test_bench_scale_quick_has_every_row(tmp_path: Path) -> None:
    out = tmp_path / "scale.json"
    res = subprocess.run([sys.executable, "-m", "bench", "scale", "--quick", "--json", str(out)],
                         cwd=REPO, capture_output=True, text=True, timeout=540)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    doc = json.loads(out.read_text())
    assert doc["benchmark"] == "scale" and doc["params"]["quick"] is True
    result = doc["result"]
    rows = {r["key"]: r for r in result["rows"]}
    assert list(rows) == KEYS
    numeric = ["inst/s", "QIDO p50 ms", "QIDO p95 ms", "QIDO p95 ms (C)", "QIDO q/s (C)",
               "WADO MB/s"]
    for key, row in rows.items():
        assert set(COLS) <= set(row), key
        for col in numeric:
            assert isinstance(row[col], float) and row[col] > 0, (key, col, row[col])
        if key != "orthanc-pg":  # the ratios are fenji's against Orthanc+PostgreSQL
            for col in ("bundles/s", "inst/s vs Orthanc", "QIDO p95 vs Orthanc",
                        "WADO vs Orthanc"):
                assert isinstance(row[col], float) and row[col] > 0, (key, col, row[col])
    # Every bundle delivered with a verified receipt; Orthanc got the same instances.
    n = QUICK["cases"] * QUICK["case_instances"]
    for key in KEYS:
        up = result["targets"][key]["upload"]
        assert up["units"] == QUICK["cases"] and up["instances"] == n, (key, up)
    # One store, any number of processes: the same studies as fenji on SQLite.
    for key in ("pg-1", "pg-2", "pg-4"):
        assert rows[key]["same QIDO answers"] == f"{QUICK['queries']}/{QUICK['queries']}", key
    assert "PostgreSQL" in str(result["versions"]["orthanc_database"])
    assert "| server |" in res.stdout  # the markdown table
