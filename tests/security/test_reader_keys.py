"""Issue 17 finding 6: a reader's signing key is under the reader's sole control.

The key is PKCS#8-encrypted with the reader's passphrase; `fenji user add` and
`fenji keys init --reader` ask for it (a prompt, FENJI_KEY_PASSPHRASE or
--passphrase-file, never argv); signing needs it (CLI: asked; API: "passphrase" in
the sign request); a wrong or missing one is a 403 / exit 2; a plain key from before
still loads, with a warning.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from _data import ct_series
from _tools import call
from _wait import until

from fenji.gateway import config as config_mod
from fenji.gateway.cli.init import init_node
from fenji.gateway.cli.user import add_user
from fenji.gateway.errors import PeerError
from fenji.gateway.keys import (
    KeyLocked,
    fingerprint,
    generate_keypair,
    is_encrypted,
    load_public,
    load_signing_key,
    sign,
    verify,
)
from fenji.gateway.lab.dcmtk import storescu
from fenji.gateway.lab.harness import NodeProcess

pytestmark = pytest.mark.timeout(600)

PHRASE = "马上就好-correct horse"


def _fenji(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    run_env = {k: v for k, v in os.environ.items() if k != "FENJI_KEY_PASSPHRASE"}
    run_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "fenji.gateway.cli.main", *args],
                          capture_output=True, text=True, timeout=120, env=run_env,
                          stdin=subprocess.DEVNULL)


def test_encrypted_key_needs_the_right_passphrase(tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    priv, pub = tmp_path / "r.key", tmp_path / "r.pub"
    generate_keypair(priv, pub, passphrase=PHRASE.encode())
    assert is_encrypted(priv) and b"ENCRYPTED PRIVATE KEY" in priv.read_bytes()
    key = load_signing_key(priv, PHRASE.encode(), who="dr.wang")
    assert verify(load_public(pub), b"m", sign(key, b"m"))
    for wrong, says in ((None, "is encrypted"), (b"", "is encrypted"),
                        (b"not the passphrase", "wrong passphrase")):
        with pytest.raises(KeyLocked, match=says) as err:
            load_signing_key(priv, wrong, who="dr.wang")
        assert err.value.http_status == 403 and "dr.wang" in str(err.value)
    with pytest.raises(PeerError, match="too short"):
        generate_keypair(tmp_path / "s.key", tmp_path / "s.pub", passphrase=b"short")
    # A key from before encryption still loads, with a warning naming the fix.
    generate_keypair(tmp_path / "old.key", tmp_path / "old.pub")
    with caplog.at_level(logging.WARNING, logger="fenji.gateway.keys"):
        load_signing_key(tmp_path / "old.key", None, who="dr.old")
    assert "not encrypted" in caplog.text and "fenji keys protect --reader dr.old" in caplog.text


def test_cli_creates_encrypted_reader_keys_and_refuses_without_a_passphrase(
        tmp_path: Path) -> None:
    conf = init_node(tmp_path / "center", role="center", name="center", allow_ae=["*"])
    # No terminal, no file, no variable: refused, and nothing is written.
    before = conf.read_text(encoding="utf-8")
    r = _fenji("user", "add", "dr.a", "--role", "reader", "--services", "imaging",
               "--config", str(conf))
    assert r.returncode == 2 and "passphrase" in r.stderr and "dr.a" in r.stderr, r.stderr
    assert conf.read_text(encoding="utf-8") == before
    # --passphrase-file (first line) and the environment variable.
    pf = tmp_path / "phrase.txt"
    pf.write_text(PHRASE + "\n", encoding="utf-8")
    r = _fenji("user", "add", "dr.a", "--role", "reader", "--services", "imaging",
               "--passphrase-file", str(pf), "--config", str(conf))
    assert r.returncode == 0, r.stderr
    r = _fenji("user", "add", "dr.b", "--role", "reader", "--services", "ecg",
               "--config", str(conf), env={"FENJI_KEY_PASSPHRASE": PHRASE})
    assert r.returncode == 0, r.stderr
    cfg = config_mod.load(conf)
    for name in ("dr.a", "dr.b"):
        priv, _ = cfg.reader_key_paths(name)
        assert is_encrypted(priv)
        load_signing_key(priv, PHRASE.encode(), who=name)  # the phrase given unlocks it
    # A technician has no key, so no passphrase is asked for.
    assert _fenji("user", "add", "t", "--role", "technician", "--config",
                  str(conf)).returncode == 0

    # An old plain key is encrypted in place: same key pair.
    add_user(conf, "dr.old", "reader", services=("imaging",))  # as before: plain
    cfg = config_mod.load(conf)
    priv, pub = cfg.reader_key_paths("dr.old")
    assert not is_encrypted(priv)
    fp = fingerprint(load_public(pub))
    r = _fenji("keys", "protect", "--reader", "dr.old", "--config", str(conf),
               env={"FENJI_KEY_PASSPHRASE": PHRASE})
    assert r.returncode == 0, r.stderr
    assert is_encrypted(priv)
    key = load_signing_key(priv, PHRASE.encode(), who="dr.old")
    assert fingerprint(key.public_key()) == fp


@pytest.fixture()
def nodes(tmp_path: Path) -> Any:
    edge = NodeProcess(tmp_path / "edge", name="edge", allow_ae=["CT1"], workers=1,
                       users={"tech": "technician"})
    center = NodeProcess(tmp_path / "center", name="center", role="center", allow_ae=["*"],
                         workers=1)
    center.tokens["dr.enc"] = add_user(center.config, "dr.enc", "reader",
                                       services=("imaging",), passphrase=PHRASE.encode())
    edge.add_peer(center, default=True)
    center.add_peer(edge, default=True)
    with edge, center:
        yield edge, center


def test_signing_over_the_api_and_cli_takes_the_readers_passphrase(nodes: Any) -> None:
    edge, center = nodes
    files = ct_series()[:2]
    assert len(storescu(files, edge.dicom_port, calling="CT1").sent) == len(files)
    import pydicom

    study = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    s, case = call("POST", edge.http_url + "/api/cases", edge.auth("tech"),
                   {"study_instance_uid": study, "priority": "routine"})
    assert s == 201, case
    cid, c, auth = case["case_id"], center.http_url, center.auth("dr.enc")
    until(lambda: any(r["case_id"] == cid for r in
                      call("GET", c + "/api/worklist", auth)[1]), 180, "the case at the center")
    assert call("POST", c + f"/api/worklist/{cid}/claim", auth, {})[0] == 200
    body = {"findings": "未见异常。", "impression": "Normal."}

    s, err = call("POST", c + f"/api/cases/{cid}/reports", auth, body)
    assert s == 403 and "encrypted" in err["message"], err
    wrong = "wrong-but-long-enough"
    s, err = call("POST", c + f"/api/cases/{cid}/reports", auth, {**body, "passphrase": wrong})
    assert s == 403 and "wrong passphrase" in err["message"], err
    s, err = call("POST", c + f"/api/cases/{cid}/reports", auth, {**body, "passphrase": 12})
    assert s == 400, err
    s, rep = call("POST", c + f"/api/cases/{cid}/reports", auth, {**body, "passphrase": PHRASE})
    assert s == 201 and rep["version"] == 1, rep

    # The CLI: a wrong passphrase is exit 2 and signs nothing; the right one amends.
    args = ("report", "submit", cid, "--reader", "dr.enc", "--findings", "补充", "--impression",
            "Normal.", "--amend-reason", "typo", "--config", str(center.config))
    r = _fenji(*args, env={"FENJI_KEY_PASSPHRASE": wrong})
    assert r.returncode == 2 and "wrong passphrase" in r.stderr, r.stderr
    r = _fenji(*args)  # no terminal and nothing given
    assert r.returncode == 2 and "is encrypted" in r.stderr, r.stderr
    r = _fenji(*args, "--json", env={"FENJI_KEY_PASSPHRASE": PHRASE})
    assert r.returncode == 0 and '"version": 2' in r.stdout, r.stderr
    # The passphrase is never written down by the node.
    log = center.log_path.read_text(errors="replace")
    assert PHRASE not in log and wrong not in log


def test_an_encrypted_reader_key_is_pkcs8_with_scrypt(tmp_path: Path) -> None:
    # issue 17 finding 6 asks for scrypt: OpenSSL's own parser names the KDF
    from fenji.gateway.keys import generate_keypair, load_signing_key

    priv, pub = tmp_path / "r.key", tmp_path / "r.pub"
    generate_keypair(priv, pub, passphrase=b"correct horse battery")
    dump = subprocess.run(["/usr/bin/openssl", "asn1parse", "-in", str(priv)],
                          capture_output=True, text=True, check=True).stdout
    assert ":scrypt" in dump and ":aes-256-cbc" in dump and "PBKDF2" not in dump
    assert load_signing_key(priv, b"correct horse battery", who="r") is not None
