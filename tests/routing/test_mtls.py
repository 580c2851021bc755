"""Mutual TLS between nodes: pinned certificates, unknown or mismatched ones refused."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest
from _data import ct_series
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fenji.gateway import config as config_mod
from fenji.gateway.cases.case import release
from fenji.gateway.keys import (
    client_ssl_context,
    generate_certificate,
    load_private,
    public_from_config,
)
from fenji.gateway.lab.dcmtk import storescu
from fenji.gateway.lab.harness import NodeProcess
from fenji.gateway.node import open_store
from fenji.routing.transfer_client import (
    ChunkSizer,
    Delivered,
    Sender,
    TransferError,
    manifest_of,
    send_bundle,
)

pytestmark = pytest.mark.timeout(300)


def test_bundle_over_mutual_tls_and_strangers_refused(tmp_path: Path) -> None:
    edge = NodeProcess(tmp_path / "edge", name="edge", allow_ae=["CT1"], workers=1)
    center = NodeProcess(tmp_path / "center", name="center", role="center", workers=1)
    edge.add_peer(center, default=True, tls=True)
    center.add_peer(edge, tls=True)
    with edge, center:
        files = ct_series()[:4]
        storescu(files, edge.dicom_port, calling="CT1")
        cfg = config_mod.load(edge.config, env={})
        store = open_store(cfg)
        import pydicom

        study = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
        rel = release(store, study, destination="center", sender_node="edge")
        store.close()
        peer = cfg.peer("center")
        assert peer is not None and peer.url.startswith("https://")
        peer_key = public_from_config(peer.public_key, cfg.data_dir)
        own_key = load_private(cfg.resolve(cfg.keys.private_key))

        def send(ssl_ctx: object, key: Ed25519PrivateKey = own_key, name: str = "edge"):  # type: ignore[no-untyped-def]
            async def go():  # type: ignore[no-untyped-def]
                async with aiohttp.ClientSession() as s:
                    return await send_bundle(s, peer.url, Sender(name, key), peer_key,
                                             rel.bundle_path, rel.bundle_id,
                                             receiver="center",
                                             sizer=ChunkSizer(1 << 16, 1 << 14, 1 << 20),
                                             manifest=manifest_of(rel.bundle_path),
                                             ssl=ssl_ctx)
            return asyncio.run(go())

        good = client_ssl_context(cfg.resolve(cfg.keys.certificate),
                                  cfg.resolve(cfg.keys.private_key), cfg.resolve(peer.cert))
        out = send(good)
        assert isinstance(out, Delivered) and len(out.receipt["instances"]) == 4
        # A stranger with its own self-signed certificate: the handshake fails.
        stranger = Ed25519PrivateKey.generate()
        from cryptography.hazmat.primitives import serialization

        skey = tmp_path / "s.key"
        skey.write_bytes(stranger.private_bytes(serialization.Encoding.PEM,
                                                serialization.PrivateFormat.PKCS8,
                                                serialization.NoEncryption()))
        generate_certificate(stranger, "edge", tmp_path / "s.crt")  # even claiming "edge"
        bad = client_ssl_context(tmp_path / "s.crt", skey, cfg.resolve(peer.cert))
        with pytest.raises(TransferError):
            send(bad, key=stranger)
        # Without the pinned peer certificate (system trust store) nothing goes either.
        with pytest.raises(TransferError):
            send(None)
        assert len(center.stored()) == 4
