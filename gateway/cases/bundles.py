"""A release's bundles: the STAT preview and the full bundle, written durably.

Each is staged under a temporary name in the store's ``tmp/`` (fsynced), then
renamed into ``bundles/`` (directory fsynced); nothing here records anything:
:mod:`fenji.gateway.cases.case` does, in its transactions.  ``step`` is the
release's named-step hook (the crash tests stop a release at each).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fenji.gateway.config import PREVIEW_INLINE_MAX_RAW_BYTES, PREVIEW_SECTIONS_MAX_BYTES
from fenji.gateway.errors import FenjiError, LocalError
from fenji.gateway.store.db import Store
from fenji.routing.encoding import part_path

Step = Callable[..., None]
log = logging.getLogger(__name__)


def _no_step(name: str, **info: Any) -> None:
    pass


@dataclass(frozen=True)
class Built:
    """A release's bundles, written and in place under ``bundles/``, not yet recorded."""

    bundle_id: str
    path: Path
    size: int
    raw_bytes: int
    manifest: dict[str, Any]  # as the receiver reads it back (JSON round trip)
    preview: tuple[str, Path, int] | None

    def discard(self) -> None:
        """The release was not recorded: its bundles are nobody's."""
        for p in (self.path, self.preview[1] if self.preview else None):
            if p is not None:
                with contextlib.suppress(OSError):
                    p.unlink()


def build_bundle(store: Store, rows: list[dict[str, Any]], case_meta: dict[str, Any],
                 bundle_id: str, priority: str, effort: str, step: Step = _no_step) -> Built:
    """The preview (STAT and urgent) and the full bundle, both placed in ``bundles/``
    (a small case's preview inside its full bundle: :func:`preview_inline`)."""
    inline = priority in ("stat", "urgent") and preview_inline(rows)
    preview = (stage_preview(store, rows, case_meta, step)
               if priority in ("stat", "urgent") and not inline else None)
    try:
        built = build_full(store, rows, case_meta, bundle_id, effort, step,
                           with_preview=inline)
    except BaseException:
        if preview is not None:
            with contextlib.suppress(OSError):
                preview[1].unlink()
        raise
    return Built(built.bundle_id, built.path, built.size, built.raw_bytes, built.manifest,
                 preview)


def preview_inline(rows: list[dict[str, Any]]) -> bool:
    """A case this small goes whole in one request as soon as a preview ahead of it
    would: its preview travels inside its full bundle (config.PREVIEW_INLINE_MAX_RAW_BYTES)."""
    return sum(int(r.get("size") or 0) for r in rows) <= PREVIEW_INLINE_MAX_RAW_BYTES


def _make_preview(store: Store, rows: list[dict[str, Any]]) -> Any:
    """A key image (middle of the series) or an ECG strip, or None."""
    from fenji.codecs.compress.bundle import make_preview

    for row in (rows[len(rows) // 2], *rows):
        with contextlib.suppress(Exception):  # a preview is a courtesy, never a blocker
            p = make_preview(store.read_blob(row["sha256"]))
            if p is not None:
                return p
    return None


def stage_preview(store: Store, rows: list[dict[str, Any]], case_meta: dict[str, Any],
                  step: Step = _no_step) -> tuple[str, Path, int] | None:
    """A key image (middle of the series) or an ECG strip in a bundle of its own,
    placed in ``bundles/``: (bundle_id, path, size), or None when no instance makes one."""
    # Here, not at module level: the DICOM workers import this module (through
    # reading.core) and never build a bundle; the codecs load Numba.
    from fenji.codecs.compress.bundle import plan_bundle

    p = _make_preview(store, rows)
    if p is None:
        return None
    pid = uuid.uuid4().hex
    meta = {**case_meta, "bundle_id": pid, "bundle_kind": "preview"}
    tmp, final, size = stage_plan(store, plan_bundle(meta, [], previews=[p]), pid)
    publish(store, [(tmp, final)])
    step("preview_renamed", case_id=case_meta["case_id"], bundle=str(final))
    return pid, final, size


WITHDRAWAL = "withdrawal"  # the bundle kind that withdraws a case's preview


def stage_withdrawal(store: Store, preview_id: str,
                     reason: str) -> tuple[str, Path, int] | None:
    """A manifest-only bundle saying the case of preview bundle ``preview_id`` will
    never come whole (its release failed), placed in ``bundles/``: (bundle_id, path,
    size), or None (logged) when the preview's manifest cannot be read.  It travels as
    any bundle (signed, resumable, receipted, once by bundle id) and every node on
    its way reads it as a withdrawal."""
    from fenji.codecs.compress.bundle import BundleReader, ManifestEvent, plan_bundle

    try:
        reader = BundleReader()
        with open(store.root / "bundles" / f"{preview_id}.fbundle", "rb") as fh:
            events = reader.feed(fh.read(PREVIEW_SECTIONS_MAX_BYTES))
        case = next(dict(e.manifest.get("case", {})) for e in events
                    if isinstance(e, ManifestEvent))
    except (OSError, StopIteration, FenjiError) as exc:
        log.error("preview %s: no withdrawal can be made of it: %s", preview_id, exc)
        return None
    wid = uuid.uuid4().hex
    meta = {k: case.get(k) for k in ("case_id", "kind", "study_instance_uid", "priority",
                                     "service", "destination", "sender")}
    meta.update({"bundle_id": wid, "bundle_kind": WITHDRAWAL, "withdraws": preview_id,
                 "reason": reason[:500]})
    tmp, final, size = stage_plan(store, plan_bundle(meta, []), wid)
    publish(store, [(tmp, final)])
    return wid, final, size


def build_full(store: Store, rows: list[dict[str, Any]], case_meta: dict[str, Any],
               bundle_id: str, effort: str, step: Step = _no_step, *,
               with_preview: bool = False) -> Built:
    """Encode the full bundle (``with_preview``: the case's preview inside it) and
    place it in ``bundles/`` (not yet recorded)."""
    from fenji.codecs.compress.bundle import plan_bundle

    blobs = [store.read_blob(r["sha256"]) for r in rows]
    full = _full_meta(rows, case_meta, bundle_id)
    previews = [_make_preview(store, rows)] if with_preview else []
    plan = plan_bundle(full, blobs, previews=previews, effort=effort)
    tmp, final, size = stage_plan(store, plan, bundle_id)
    _place(store, tmp, final, str(case_meta["case_id"]), step)
    # The manifest as every reader of the bundle parses it: the hash a report binds to.
    manifest = json.loads(json.dumps(plan.manifest, sort_keys=True))
    return Built(bundle_id, final, size, sum(len(b) for b in blobs), manifest, None)


def _full_meta(rows: list[dict[str, Any]], case_meta: dict[str, Any],
               bundle_id: str) -> dict[str, Any]:
    full = {**case_meta, "bundle_id": bundle_id, "bundle_kind": "full"}
    # Instances that declare no (0008,0005) were read with this node's
    # dicom.default_character_set: the receiver reads them the same way, whatever
    # its own default (one entry per instance, None where none was applied).
    defaults = [r.get("specific_character_set") if r.get("charset_source") == "default"
                else None for r in rows]
    if any(defaults):
        full["default_character_sets"] = defaults
    return full


def stream_full(store: Store, rows: list[dict[str, Any]], case_meta: dict[str, Any],
                bundle_id: str, effort: str, step: Step = _no_step) -> Built:
    """Encode the full bundle (format version 2) into ``bundles/<id>.fbundle.part`` while
    the sender already sends what is written (its job was queued, unsealed, before:
    :mod:`fenji.routing.encoding`); fsync, rename it to ``<id>.fbundle`` (not yet
    recorded).  Each section is flushed as it is encoded."""
    from fenji.codecs.compress.bundle import stream_bundle

    blobs = [store.read_blob(r["sha256"]) for r in rows]
    streamed = stream_bundle(_full_meta(rows, case_meta, bundle_id), blobs, effort=effort)
    part = part_path(store, bundle_id)
    final = store.root / "bundles" / f"{bundle_id}.fbundle"
    size = 0
    try:
        part.parent.mkdir(parents=True, exist_ok=True)
        with open(part, "wb") as fh:
            for chunk in streamed.iter_bytes():
                fh.write(chunk)
                fh.flush()  # the sender reads the file as it grows
                size += len(chunk)
            os.fsync(fh.fileno())
    except BaseException as exc:
        with contextlib.suppress(OSError):
            part.unlink()
        if isinstance(exc, OSError):
            raise LocalError(f"cannot write bundle {part}: {exc}") from exc
        raise
    _place(store, part, final, str(case_meta["case_id"]), step)
    manifest = json.loads(json.dumps(streamed.manifest, sort_keys=True))
    return Built(bundle_id, final, size, sum(len(b) for b in blobs), manifest, None)


def _place(store: Store, written: Path, final: Path, case_id: str, step: Step) -> None:
    """Give a written, fsynced bundle its final name in ``bundles/`` (not yet recorded);
    if that fails (or a test's step hook stops it), neither name is left behind."""
    try:
        step("bundle_written", case_id=case_id, bundle=str(written))
        publish(store, [(written, final)])
    except BaseException:
        for path in (written, final):
            with contextlib.suppress(OSError):
                path.unlink()
        raise
    step("bundle_renamed", case_id=case_id, bundle=str(final))


def stage_plan(store: Store, plan: Any, bundle_id: str) -> tuple[Path, Path, int]:
    """Write a bundle under a temporary name in the store's ``tmp/`` (same file system;
    :meth:`Store.recover` removes what a crash leaves there) and fsync it."""
    final = store.root / "bundles" / f"{bundle_id}.fbundle"
    tmp = store.tmp_dir / f"{bundle_id}.fbundle.{os.getpid()}.tmp"
    size = 0
    try:
        with open(tmp, "wb") as fh:
            for chunk in plan.iter_bytes():
                fh.write(chunk)
                size += len(chunk)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise LocalError(f"cannot write bundle {final}: {exc}") from exc
    return tmp, final, size


def publish(store: Store, staged: list[tuple[Path, Path]]) -> None:
    """Rename staged bundles into ``bundles/`` and fsync the directory."""
    out_dir = store.root / "bundles"
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        for tmp, final in staged:
            os.rename(tmp, final)
        fd = os.open(out_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise LocalError(f"cannot place bundle in {out_dir}: {exc}") from exc


def write_plan(store: Store, plan: Any, bundle_id: str) -> tuple[Path, int]:
    """Write a bundle durably under ``bundles/`` (temporary name, fsync, rename)."""
    tmp, final, size = stage_plan(store, plan, bundle_id)
    publish(store, [(tmp, final)])
    return final, size
