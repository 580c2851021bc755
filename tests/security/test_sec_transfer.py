"""Issue 17, findings 3-5: the transfer routes' authentication as an attacker sees it.

Real nodes on loopback; the attacker holds a request validly signed by a
configured peer (the edge's key) and tries to use it where it must not work.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest
import requests

from fenji.gateway import config as config_mod
from fenji.gateway.keys import canonical_json, load_private, sign
from fenji.gateway.lab.harness import NodeProcess
from fenji.routing.transfer_client import TransferError, check_receipt
from fenji.routing.transfer_server import auth_message

pytestmark = pytest.mark.timeout(300)


def _edge_key(edge: NodeProcess):  # type: ignore[no-untyped-def]
    cfg = config_mod.load(edge.config, env={})
    return load_private(cfg.resolve(cfg.keys.private_key))


def _signed(edge: NodeProcess, method: str, path: str, extra: dict[str, str], *,
            receiver: str, ts: str | None = None) -> dict[str, str]:
    ts = ts if ts is not None else f"{time.time():.3f}"
    sig = sign(_edge_key(edge), auth_message(method, path, ts, extra, receiver=receiver))
    return {**extra, "Fenji-Auth": f"node=edge;ts={ts};sig={sig}"}


def _create(edge: NodeProcess, receiver: str, **kw: str) -> dict[str, str]:
    extra = {"Fenji-Bundle-Id": f"b{time.monotonic_ns()}", "Upload-Length": "1000"}
    return _signed(edge, "POST", "/transfer/uploads", extra, receiver=receiver, **kw)


def test_tls_node_refuses_transfer_on_plain_web_listener(tmp_path: Path) -> None:
    """Finding 3: with http.tls, a signed request over the plain [web] listener is refused."""
    edge = NodeProcess(tmp_path / "edge", name="edge", workers=1)
    center = NodeProcess(tmp_path / "center", name="center", role="center", workers=1)
    center.add_peer(edge, tls=True)
    web_port = center.enable_web()
    with center:
        r = requests.post(f"http://127.0.0.1:{web_port}/transfer/uploads",
                          headers=_create(edge, "center"), timeout=30)
        assert r.status_code == 403, r.text
        body = r.json()
        assert body["error"] == "tls_required" and "TLS" in body["message"]
        # Nothing was created: the upload table is empty.
        cfg = config_mod.load(center.config, env={})
        from fenji.gateway.node import open_store

        store = open_store(cfg)
        try:
            assert store.query("SELECT * FROM uploads") == []
        finally:
            store.close()


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """Two receivers (plain HTTP, a lab) that both accept the same edge."""
    root = tmp_path_factory.mktemp("lab")
    edge = NodeProcess(root / "edge", name="edge", workers=1)
    center = NodeProcess(root / "center", name="center", role="center", workers=1)
    other = NodeProcess(root / "center2", name="center2", role="center", workers=1)
    center.add_peer(edge)
    other.add_peer(edge)
    with center, other:
        yield edge, center, other


@pytest.mark.parametrize("ts", ["nan", "NaN", "inf", "-inf", "1e308"])
def test_transfer_timestamp_must_be_finite_and_recent(lab, ts: str) -> None:  # type: ignore[no-untyped-def]
    """Finding 4: ts=nan compared false to the skew bound and never expired."""
    edge, center, _ = lab
    r = requests.post(center.http_url + "/transfer/uploads",
                      headers=_create(edge, "center", ts=ts), timeout=30)
    assert r.status_code == 403, r.text
    assert ts in r.json()["message"] or "off" in r.json()["message"]


def test_request_signed_for_one_receiver_is_refused_by_another(lab) -> None:  # type: ignore[no-untyped-def]
    """Finding 5: the signed message names the receiver, so a replay elsewhere fails."""
    edge, center, other = lab
    h = _create(edge, "center")
    r = requests.post(other.http_url + "/transfer/uploads", headers=h, timeout=30)
    assert r.status_code == 403, r.text
    assert r.json()["error"] == "bad_signature"
    # The same request where it was meant to go is accepted.
    r = requests.post(center.http_url + "/transfer/uploads", headers=h, timeout=30)
    assert r.status_code == 201, r.text


def test_client_refuses_receipt_naming_another_receiver(tmp_path: Path) -> None:
    """Finding 5, client side: a receipt must name the peer the bundle was sent to."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    bundle = tmp_path / "b.fbundle"
    bundle.write_bytes(b"bundle bytes")
    receipt = {"bundle_id": "b1", "receiver": "center2", "instances": [],
               "bundle_sha256": hashlib.sha256(b"bundle bytes").hexdigest()}
    sig = sign(key, canonical_json(receipt))
    with pytest.raises(TransferError, match="center2"):
        check_receipt(receipt, sig, key.public_key(), bundle, "b1", {"instances": []},
                      receiver="center")
    check_receipt({**receipt, "receiver": "center"},
                  sign(key, canonical_json({**receipt, "receiver": "center"})),
                  key.public_key(), bundle, "b1", {"instances": []}, receiver="center")
