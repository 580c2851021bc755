"""Mutual TLS between nodes: pinned certificates, unknown or mismatched ones refused."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pydicom
import pytest
from _data import ct_series
from _nodes import edge_and_center, send_to_center
from _proxy import Faulty
from cryptography.hazmat.primitives import serialization
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


def _released(edge: NodeProcess, files: list[Path]) -> tuple[Any, Any, Any]:
    """Store ``files`` at the edge and release their study to the center over https:
    (the edge's config, the release, the center as its peer)."""
    storescu(files, edge.dicom_port, calling="CT1")
    cfg = config_mod.load(edge.config, env={})
    store = open_store(cfg)
    study = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    rel = release(store, study, destination="center", sender_node="edge")
    store.close()
    peer = cfg.peer("center")
    assert peer is not None and peer.url.startswith("https://")
    return cfg, rel, peer


def test_bundle_over_mutual_tls_and_strangers_refused(tmp_path: Path) -> None:
    edge, center = edge_and_center(tmp_path, tls=True)
    with edge, center:
        files = ct_series()[:4]
        cfg, rel, peer = _released(edge, files)
        sizer = ChunkSizer(1 << 16, 1 << 14, 1 << 20)

        good = client_ssl_context(cfg.resolve(cfg.keys.certificate),
                                  cfg.resolve(cfg.keys.private_key), cfg.resolve(peer.cert))
        out = send_to_center(edge, rel, sizer=sizer, ssl=good)
        assert isinstance(out, Delivered) and len(out.receipt["instances"]) == 4
        # A stranger with its own self-signed certificate: the handshake fails.
        stranger = Ed25519PrivateKey.generate()
        skey = tmp_path / "s.key"
        skey.write_bytes(stranger.private_bytes(serialization.Encoding.PEM,
                                                serialization.PrivateFormat.PKCS8,
                                                serialization.NoEncryption()))
        generate_certificate(stranger, "edge", tmp_path / "s.crt")  # even claiming "edge"
        bad = client_ssl_context(tmp_path / "s.crt", skey, cfg.resolve(peer.cert))
        with pytest.raises(TransferError):
            send_to_center(edge, rel, sizer=sizer, ssl=bad, key=stranger)
        # Without the pinned peer certificate (system trust store) nothing goes either.
        with pytest.raises(TransferError):
            send_to_center(edge, rel, sizer=sizer, ssl=None)
        assert len(center.stored()) == 4


def test_a_reconnect_after_a_cut_resumes_the_tls_session(tmp_path: Path) -> None:
    """The sender's context offers the session ticket of its last connection: the
    connection after a cut resumes it (no certificate exchange), and the receiver
    still reads the sender's pinned certificate from the resumed session (it refuses
    a connection whose certificate is not the node's: the bundle would not go)."""

    from fenji.routing.transfer_client import Pipeline, ResumingContext

    edge = NodeProcess(tmp_path / "edge", name="edge", allow_ae=["CT1"], workers=1)
    center = NodeProcess(tmp_path / "center", name="center", role="center", workers=1)
    edge.add_peer(center, default=True, tls=True)
    center.add_peer(edge, tls=True)
    with edge, center:
        files = ct_series()[:12]
        cfg, rel, peer = _released(edge, files)
        port = int(peer.url.rsplit(":", 1)[1].split("/")[0])
        ctx = client_ssl_context(cfg.resolve(cfg.keys.certificate),
                                 cfg.resolve(cfg.keys.private_key), cfg.resolve(peer.cert),
                                 context_class=ResumingContext)
        assert isinstance(ctx, ResumingContext)

        async def go() -> tuple[Delivered, int]:
            async with Faulty(port, cut_up=rel.bundle_bytes // 2) as proxy, \
                    aiohttp.ClientSession() as s:
                out = await send_bundle(
                    s, f"https://127.0.0.1:{proxy.port}", Sender("edge", load_private(
                        cfg.resolve(cfg.keys.private_key))),
                    public_from_config(peer.public_key, cfg.data_dir), rel.bundle_path,
                    rel.bundle_id, receiver="center",
                    sizer=ChunkSizer(1 << 16, 1 << 14, 1 << 20),
                    manifest=manifest_of(rel.bundle_path), ssl=ctx,
                    pipeline=Pipeline(frame_bytes=16 * 1024))
                assert isinstance(out, Delivered)
                return out, proxy.connections

        out, connections = asyncio.run(go())
        # Cut once, resumed within the call.  aiohttp may open one more connection of
        # its own after the cut (a pooled connection the server closed), so count at
        # least two; every one after the first must have resumed.
        assert connections >= 2
        assert len(out.receipt["instances"]) == 12
        # Newest first: every reconnect resumed, the first connection was a full handshake.
        shakes = ctx.handshakes()
        assert len(shakes) == min(connections, ctx.KEEP)
        if connections <= ctx.KEEP:
            assert shakes[-1] is False and all(shakes[:-1])
        else:
            assert all(shakes)
        assert len(center.stored()) == 12
