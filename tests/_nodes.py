"""An edge and a center as real node processes, and a bundle sent between them
(import as ``from _nodes import edge_and_center, send_to_center``)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pydicom
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fenji.gateway import config as config_mod
from fenji.gateway.cases.case import Released
from fenji.gateway.keys import load_private, public_from_config
from fenji.gateway.lab.harness import NodeProcess, fenji_cmd
from fenji.routing.transfer_client import (
    ChunkSizer,
    Delivered,
    Sender,
    Yielded,
    manifest_of,
    send_bundle,
)


def edge_and_center(base: Path, *, tls: bool = False,
                    **edge_kw: Any) -> tuple[NodeProcess, NodeProcess]:
    """An edge taking C-STOREs from CT1 and a center taking them from anyone, one worker
    each, peered both ways (the center is the edge's default peer); not started.

    ``tls``: mutual TLS with pinned certificates; ``edge_kw``: more NodeProcess fields
    for the edge (users, extra_toml)."""
    edge = NodeProcess(base / "edge", name="edge", allow_ae=["CT1"], workers=1, **edge_kw)
    center = NodeProcess(base / "center", name="center", role="center", allow_ae=["*"],
                         workers=1)
    edge.add_peer(center, default=True, tls=tls)
    center.add_peer(edge, tls=tls)
    return edge, center


def send_to_center(edge: NodeProcess, rel: Released, *, sizer: ChunkSizer,
                   key: Ed25519PrivateKey | None = None, name: str = "edge", ssl: Any = None,
                   should_yield: Callable[[], bool] | None = None) -> Delivered | Yielded:
    """``rel``'s bundle sent from ``edge`` to its peer "center" by the transfer client,
    signed by ``name`` with ``key`` (the edge's own key unless given)."""
    cfg = config_mod.load(edge.config, env={})
    key = key or load_private(cfg.resolve(cfg.keys.private_key))
    peer = cfg.peer("center")
    assert peer is not None
    peer_key = public_from_config(peer.public_key, cfg.data_dir)

    async def yield_now() -> bool:
        return bool(should_yield and should_yield())

    async def go() -> Delivered | Yielded:
        async with aiohttp.ClientSession() as session:
            return await send_bundle(session, peer.url, Sender(name, key), peer_key,
                                     rel.bundle_path, rel.bundle_id, receiver="center",
                                     sizer=sizer, manifest=manifest_of(rel.bundle_path),
                                     should_yield=yield_now, ssl=ssl)

    return asyncio.run(go())


def send_every_study(edge: NodeProcess, files: list[Path]) -> list[str]:
    """``fenji case send`` each study of ``files`` (priorities STAT, urgent, routine in
    turn, no gate) with the edge's own CLI; the case IDs, in study order."""
    studies = sorted({str(pydicom.dcmread(f, stop_before_pixels=True).StudyInstanceUID)
                      for f in files})
    case_ids = []
    for i, study in enumerate(studies):
        res = subprocess.run([*fenji_cmd(), "case", "send", study, "--priority",
                              ("stat", "urgent", "routine")[i % 3], "--no-gate", "--json",
                              "--config", str(edge.config)],
                             capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr
        case_ids.append(json.loads(res.stdout)["case_id"])
    return case_ids


def index_rows(node: NodeProcess, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
    """Rows of a running node's SQLite index, read-only; none before it is migrated."""
    con = sqlite3.connect(f"file:{node.directory / 'store' / 'index.sqlite'}?mode=ro",
                          uri=True, timeout=30)
    con.row_factory = sqlite3.Row
    try:
        return con.execute(sql, args).fetchall()
    except sqlite3.OperationalError:  # not migrated yet
        return []
    finally:
        con.close()
