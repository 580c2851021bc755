"""kill -9 at each step of a release: the case is unreleased, or released with its
manifest hash and its bundle, never in between (issue 15).

The release runs in a child process whose step hook (``case.on_step``) reports each
named step on stdout and blocks forever at the chosen one; the parent waits for that
line (an event, not a time), SIGKILLs the child and reopens the store.
"""

from __future__ import annotations

import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest
from _data import ct_series
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fenji.gateway.cases import case
from fenji.gateway.dicom.validate import check_part10
from fenji.gateway.store.db import Store
from fenji.routing.transfer_client import manifest_of

CHILD = r"""
import json, sys, threading
from pathlib import Path
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fenji.gateway.cases import case
from fenji.gateway.store.db import Store

root, study, stop_at = sys.argv[1:4]

def hook(name, info):
    print(json.dumps({"step": name, **info}), flush=True)
    if name == stop_at:
        threading.Event().wait()  # here until SIGKILL

case.on_step = hook
store = Store(Path(root))
case.release(store, study, destination="center", priority="stat", operator="tech",
             gate_key=Ed25519PrivateKey.generate(), sender_node="edge", hop="center")
print(json.dumps({"step": "returned"}), flush=True)
"""


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("pristine") / "store"
    store = Store(root)
    files = ct_series()[:4]
    for p in files:
        c = check_part10(p.read_bytes())
        store.put(c.part10, c.info)
    store.close()
    return root, str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)


def _kill_at(root: Path, study: str, step: str) -> list[str]:
    """Run a release in a child, SIGKILL it when it reports ``step``; the steps it reported."""
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(root), study, step],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    seen: list[str] = []
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + 300  # generous: a loaded 2-core machine
    try:
        while step not in seen:
            if not sel.select(timeout=max(0.0, deadline - time.monotonic())):
                raise AssertionError(f"no step {step!r} within 300 s; saw {seen}")
            line = proc.stdout.readline()
            if not line:
                raise AssertionError(f"the child ended before {step!r}: {seen}\n"
                                     + (proc.stderr.read() if proc.stderr else ""))
            seen.append(json.loads(line)["step"])
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        sel.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return seen


def _outcome(root: Path, study: str) -> str:
    """'unreleased' or 'released', after asserting it is wholly one of them."""
    store = Store(root)
    store.recover()
    try:
        rows = store.query("SELECT * FROM cases WHERE study_instance_uid = ?", (study,))
        released_events = store.query("SELECT 1 FROM audit WHERE kind = 'released'")
        jobs = store.query("SELECT bundle_id FROM outbox ORDER BY job_id")
        if not rows:
            assert not released_events and not jobs
            assert not list(store.tmp_dir.iterdir())  # recovery removed the half-written
            return "unreleased"
        (row,) = rows
        assert row["state"] == "released" and row["released_at"] is not None
        assert row["manifest_sha256"] and len(released_events) == 1
        manifest = json.loads(row["manifest_json"])
        full = root / "bundles" / f"{manifest['case']['bundle_id']}.fbundle"
        assert full.exists()
        assert case.manifest_sha256(manifest_of(full)) == row["manifest_sha256"]
        assert [j["bundle_id"] for j in jobs][-1] == manifest["case"]["bundle_id"]
        assert len(jobs) == 2  # the STAT preview first, then the full bundle
        return "released"
    finally:
        store.close()


@pytest.mark.timeout(1200)
@pytest.mark.parametrize("step", case.RELEASE_STEPS)
def test_kill_at_each_step_of_a_release(pristine: tuple[Path, str], tmp_path: Path,
                                        step: str) -> None:
    src, study = pristine
    root = tmp_path / "store"
    shutil.copytree(src, root)
    seen = _kill_at(root, study, step)
    assert seen == list(case.RELEASE_STEPS[:case.RELEASE_STEPS.index(step) + 1])
    got = _outcome(root, study)
    assert got == ("released" if step == "committed" else "unreleased"), (step, got)
    placed = list((root / "bundles").glob("*.fbundle"))
    if step in ("selected", "gated", "bundle_written"):  # a half-written bundle never shows
        assert not placed, placed
    if got == "unreleased":  # nothing half-done stands in the way of the next release
        store = Store(root)
        rel = case.release(store, study, destination="center", priority="stat",
                           gate_key=Ed25519PrivateKey.generate(), sender_node="edge",
                           hop="center")
        assert rel.instances == 4
        store.close()
        assert _outcome(root, study) == "released"
