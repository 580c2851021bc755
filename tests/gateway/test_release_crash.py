"""kill -9 at each step of a release: the case is unreleased, released with its
manifest hash and its bundle, or (killed between a STAT release's two commits) failed
with the reason recorded, never silently in between (issues 15, 16).

The release runs in a child process whose step hook (``case.on_step``) reports each
named step on stdout and blocks forever at the chosen one; the parent waits for that
line (an event, not a time), SIGKILLs the child and reopens the store.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
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
    # A thread reads the lines: select() on a buffered pipe misses lines that arrived
    # together (two steps a millisecond apart) and sit in the reader's buffer.
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(ln) for ln in iter(
        proc.stdout.readline, "")] + [lines.put("")], daemon=True)  # type: ignore[union-attr]
    reader.start()
    seen: list[str] = []
    deadline = time.monotonic() + 300  # generous: a loaded 2-core machine
    try:
        while step not in seen:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no step {step!r} within 300 s; saw {seen}") from None
            if not line:
                raise AssertionError(f"the child ended before {step!r}: {seen}\n"
                                     + (proc.stderr.read() if proc.stderr else ""))
            seen.append(json.loads(line)["step"])
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return seen


def _outcome(root: Path, study: str) -> str:
    """'unreleased', 'failed' or 'released', after asserting it is wholly one of them.

    A STAT release queues its preview (the case "releasing") before it encodes the full
    bundle; a kill between its two commits leaves a case the node's start-up recovery
    records as "failed", with the reason, its instances free for the next release."""
    store = Store(root)
    store.recover()
    case.recover_releases(store)
    try:
        rows = store.query("SELECT * FROM cases WHERE study_instance_uid = ? AND state != "
                           "'failed'", (study,))
        failed = store.query("SELECT * FROM cases WHERE study_instance_uid = ? AND state = "
                             "'failed'", (study,))
        released_events = store.query("SELECT 1 FROM audit WHERE kind = 'released'")
        failed_events = store.query("SELECT case_id FROM audit WHERE kind = 'release_failed'")
        assert sorted(e["case_id"] for e in failed_events) == sorted(f["case_id"] for f in failed)
        jobs = store.query("SELECT bundle_id, case_id FROM outbox ORDER BY job_id")
        for f in failed:  # its preview was queued (it may have gone), then its withdrawal
            assert f["manifest_sha256"] is None
            mine = [j for j in jobs if j["case_id"] == f["case_id"]]
            assert len(mine) == 2
            kinds = [manifest_of(root / "bundles" / f"{j['bundle_id']}.fbundle")["case"]
                     for j in mine]
            assert [k["bundle_kind"] for k in kinds] == ["preview", "withdrawal"]
            assert kinds[1]["withdraws"] == mine[0]["bundle_id"]
            assert kinds[1]["case_id"] == f["case_id"]
        jobs = [j for j in jobs if j["case_id"] not in {f["case_id"] for f in failed}]
        assert not store.query("SELECT 1 FROM cases WHERE state = 'releasing'")
        if not rows:
            assert not released_events and not jobs
            assert not list(store.tmp_dir.iterdir())  # recovery removed the half-written
            return "failed" if failed else "unreleased"
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


# Where a kill leaves the case: nothing recorded before the preview's commit; after it
# and before the full bundle's commit, "releasing", which recovery records as "failed".
EXPECTED = {s: ("unreleased" if i < case.RELEASE_STEPS.index("preview_committed") else
                "released" if s == "committed" else "failed")
            for i, s in enumerate(case.RELEASE_STEPS)}


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
    assert got == EXPECTED[step], (step, got)
    placed = list((root / "bundles").glob("*.fbundle"))
    if step in ("selected", "gated"):  # a half-written bundle never shows
        assert not placed, placed
    if step == "bundle_written":  # the preview and (recovered) its withdrawal, no full one
        assert len(placed) == 2, placed
    if got != "released":  # nothing half-done stands in the way of the next release
        store = Store(root)
        rel = case.release(store, study, destination="center", priority="stat",
                           gate_key=Ed25519PrivateKey.generate(), sender_node="edge",
                           hop="center")
        assert rel.instances == 4
        store.close()
        assert _outcome(root, study) == "released"


def test_full_bundle_that_cannot_be_made_after_its_preview_went(
        pristine: tuple[Path, str], tmp_path: Path) -> None:
    """A blob lost from the store: the preview (the middle image) is queued, the full
    bundle cannot be made -- the case ends "failed" with the reason in the ledger,
    not silently half-released, and the study can be sent again once repaired."""
    src, study = pristine
    root = tmp_path / "store"
    shutil.copytree(src, root)
    store = Store(root)
    first = store.query("SELECT sha256 FROM instances WHERE study_instance_uid = ? "
                        "ORDER BY instance_number, sop_instance_uid LIMIT 1", (study,))[0]
    blob = store.blob_path(first["sha256"])
    kept = blob.read_bytes()
    blob.unlink()
    with pytest.raises(case.ReleaseFailed, match="full bundle could not be made.*send the "
                                                  "study again") as err:
        case.release(store, study, destination="center", priority="stat", sender_node="edge",
                     hop="center")
    assert str(blob.name) in str(err.value)  # names what was missing
    (row,) = store.query("SELECT * FROM cases WHERE study_instance_uid = ?", (study,))
    assert row["state"] == "failed" and row["manifest_sha256"] is None
    (ev,) = store.query("SELECT detail FROM audit WHERE kind = 'release_failed'")
    assert "full bundle could not be made" in ev["detail"]
    # the preview, queued first, then its withdrawal (the center is told); no full bundle
    jobs = store.query("SELECT bundle_id FROM outbox ORDER BY job_id")
    kinds = [manifest_of(root / "bundles" / f"{j['bundle_id']}.fbundle")["case"]["bundle_kind"]
             for j in jobs]
    assert kinds == ["preview", "withdrawal"]
    assert len(list((root / "bundles").glob("*.fbundle"))) == 2
    assert json.loads(ev["detail"])["withdrawal"] == jobs[1]["bundle_id"]
    assert not list(store.tmp_dir.iterdir())
    blob.write_bytes(kept)  # repaired: the next release takes every instance again
    rel = case.release(store, study, destination="center", priority="stat", sender_node="edge",
                       hop="center")
    assert rel.instances == 4 and rel.kind == "case"
    store.close()
