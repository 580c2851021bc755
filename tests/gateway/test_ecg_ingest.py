"""ECG carts without C-STORE: WFDB over HTTP and through a watched folder."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import aiohttp
import pytest
from _data import ECG_DIR

from fenji.gateway.lab.harness import NodeProcess

pytestmark = pytest.mark.timeout(300)
TWELVE_LEAD = "1.2.840.10008.5.1.4.1.1.9.1.1"


def _record_files(folder: str, name: str) -> dict[str, bytes]:
    base = ECG_DIR / folder
    hea = (base / f"{name}.hea").read_text()
    files = {f"{name}.hea": hea.encode()}
    for line in hea.splitlines()[1:]:
        if line.strip() and not line.startswith("#"):
            fn = line.split()[0]
            files.setdefault(fn, (base / fn).read_bytes())
    return files


async def _post(url: str, files: dict[str, bytes], headers: dict[str, str] | None = None,
                **fields: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    form = aiohttp.FormData()
    for k, v in fields.items():
        form.add_field(k, v)
    for name, data in files.items():
        form.add_field("file", data, filename=name, content_type="application/octet-stream")
    async with aiohttp.ClientSession() as s, s.post(url + "/api/ecg", data=form,
                                                          headers=headers) as r:
        return r.status, await r.json()


def test_wfdb_upload_is_wrapped_stored_and_idempotent(tmp_path: Path) -> None:
    with NodeProcess(tmp_path / "edge", name="edge", workers=1,
                     users={"tech": "technician", "dr.wang": "reader"}) as node:
        files = _record_files("cinc2021", "A0001")
        # Anonymous and wrong-role uploads are refused and store nothing.
        anon, _ = asyncio.run(_post(node.http_url, files, patient_id="P1"))
        assert anon == 401
        reader, err = asyncio.run(_post(node.http_url, files, node.auth("dr.wang"),
                                        patient_id="P1"))
        assert reader == 403 and "reader" in err["message"]
        assert node.stored() == []
        status, body = asyncio.run(_post(node.http_url, files, node.auth("tech"),
                                         patient_id="P1"))
        assert status == 201, body
        assert body["outcome"] == "stored" and len(body["leads"]) == 12
        assert body["quality"]["verdict"] in ("acceptable", "acceptable_with_warnings",
                                              "unacceptable")
        again, body2 = asyncio.run(_post(node.http_url, files, node.auth("tech"),
                                         patient_id="P1"))
        assert again == 200 and body2["outcome"] == "duplicate"
        assert body2["sop_instance_uid"] == body["sop_instance_uid"]
        (row,) = node.stored()
        assert row["sop_class_uid"] == TWELVE_LEAD
        # The header names a signal file that is not sent: refused, nothing stored.
        partial = {k: v for k, v in files.items() if k.endswith(".hea")}
        bad, err = asyncio.run(_post(node.http_url, partial, node.auth("tech")))
        assert bad == 422 and "not provided" in err["message"]
        assert len(node.stored()) == 1


def test_watched_folder_ingests_records_and_sets_aside_bad_files(tmp_path: Path) -> None:
    watch = tmp_path / "edge" / "inbox"
    node = NodeProcess(tmp_path / "edge", name="edge", workers=1,
                       extra_toml='[ingest]\nwatch_dir = "inbox"\nwatch_interval_s = 0.2\n'
                                  'settle_s = 0.2\n')
    with node:
        watch.mkdir(exist_ok=True)
        for fn in ("s0010_re.hea", "s0010_re.dat", "s0010_re.xyz"):
            shutil.copy(ECG_DIR / "ptb" / fn, watch / fn)
        (watch / "junk.dcm").write_bytes(b"not dicom at all" * 10)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if (watch / "done" / "s0010_re.hea").exists() and \
                    (watch / "failed" / "junk.dcm").exists():
                break
            time.sleep(0.1)
        assert (watch / "done" / "s0010_re.dat").exists()
        reason = (watch / "failed" / "junk.dcm.reason.txt").read_text()
        assert "DICM" in reason
        rows = node.stored()
        assert len(rows) == 1 and rows[0]["sop_class_uid"].startswith("1.2.840.10008.5.1.4.1.1.9.")
