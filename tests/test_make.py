"""`make` steps are incremental: with nothing changed, nothing is reinstalled or recompiled."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_install_is_up_to_date_after_make() -> None:
    assert shutil.which("make"), "make is part of the set-up (make test runs this suite)"
    # `make test` ran `make install` just before the suite: a second `make demo` or
    # `make test` must find nothing to do (no pip run, no Numba recompile).
    r = subprocess.run(["make", "-q", "install"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, ("make install would run again with nothing changed: "
                               f"{r.stdout}{r.stderr}")
    dry = subprocess.run(["make", "-n", "demo"], cwd=REPO, capture_output=True, text=True)
    assert "pip install" not in dry.stdout and "warmup" not in dry.stdout, dry.stdout
