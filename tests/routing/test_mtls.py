"""Mutual TLS between nodes: pinned certificates, unknown or mismatched ones refused."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from _data import ct_series
from _nodes import edge_and_center, send_to_center
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fenji.gateway import config as config_mod
from fenji.gateway.cases.case import release
from fenji.gateway.keys import client_ssl_context, generate_certificate
from fenji.gateway.lab.dcmtk import storescu
from fenji.gateway.node import open_store
from fenji.routing.transfer_client import ChunkSizer, Delivered, TransferError

pytestmark = pytest.mark.timeout(300)


def test_bundle_over_mutual_tls_and_strangers_refused(tmp_path: Path) -> None:
    edge, center = edge_and_center(tmp_path, tls=True)
    with edge, center:
        files = ct_series()[:4]
        storescu(files, edge.dicom_port, calling="CT1")
        cfg = config_mod.load(edge.config, env={})
        store = open_store(cfg)
        study = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
        rel = release(store, study, destination="center", sender_node="edge")
        store.close()
        peer = cfg.peer("center")
        assert peer is not None and peer.url.startswith("https://")
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
