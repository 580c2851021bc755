"""validate -> quarantine or store -> one result (see the package docstring)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from fenji.gateway.config import (
    DEFAULT_MAX_INFLATE_BYTES,
    DEFAULT_MAX_INSTANCE_BYTES,
    DEFAULT_MAX_RECORD_BYTES,
    Config,
)
from fenji.gateway.dicom import status as st
from fenji.gateway.dicom.info import InstanceInfo
from fenji.gateway.dicom.validate import Checked, Rejected, check_dimse, check_part10, with_preamble
from fenji.gateway.store.db import BatchConflict, PutStatus, Store, StoreFull

log = logging.getLogger(__name__)


class Outcome(Enum):
    STORED = "stored"  # new, durable and indexed
    DUPLICATE = "duplicate"  # the same data set was already held: idempotent success
    REPORT = "report"  # a viewer's object became a signed report (the hook handled it)
    REJECTED = "rejected"  # invalid input: quarantined, never served
    REFUSED = "refused"  # valid, but this sender may not store it now (a report hook's no)
    CONFLICT = "conflict"  # same SOP Instance UID held with other bytes
    FULL = "full"  # no room: nothing stored, the sender should retry later
    FAILED = "failed"  # a local fault (a bug or an I/O error): logged, nothing acknowledged

    @property
    def ok(self) -> bool:
        return self in (Outcome.STORED, Outcome.DUPLICATE, Outcome.REPORT)


# The one status table: each outcome's HTTP answer (the DICOM status travels in
# the result, since a rejection names its own: PS3.4 B.2.3).
HTTP_STATUS = {
    Outcome.STORED: 201, Outcome.DUPLICATE: 200, Outcome.REPORT: 201,
    Outcome.REJECTED: 422, Outcome.REFUSED: 403, Outcome.CONFLICT: 409,
    Outcome.FULL: 507, Outcome.FAILED: 500,
}
_DICOM_STATUS = {
    Outcome.STORED: st.SUCCESS, Outcome.DUPLICATE: st.SUCCESS, Outcome.REPORT: st.SUCCESS,
    Outcome.CONFLICT: st.SOP_INSTANCE_CONFLICT, Outcome.FULL: st.OUT_OF_RESOURCES,
    Outcome.FAILED: st.PROCESSING_FAILURE,
}


@dataclass(frozen=True, slots=True)
class Source:
    """Where bytes came from.  ``actor`` is what the index and the ledger record as the
    sender (a calling AE title, ``viewer:NAME``, ``import``, ``node:NAME``)."""

    channel: str  # "c-store" | "stow-rs" | "import" | "ecg" | "bundle" | "report"
    actor: str
    peer: str | None = None


@dataclass(frozen=True, slots=True)
class Dimse:
    """A C-STORE's data set comes without File Meta: the request supplies it."""

    transfer_syntax: str
    affected_sop_class: str
    affected_sop_instance: str


@dataclass(frozen=True, slots=True)
class Limits:
    """Every size limit ingest applies; built from the config in one place."""

    # The config's defaults (gateway/config.py), so a Limits() in a test is the node's.
    max_instance_bytes: int = DEFAULT_MAX_INSTANCE_BYTES
    max_inflate_bytes: int = DEFAULT_MAX_INFLATE_BYTES
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES  # one ECG record, all its files
    default_character_set: str | None = None

    @classmethod
    def of(cls, cfg: Config) -> Limits:
        return cls(max_instance_bytes=cfg.dicom.max_instance_bytes,
                   max_inflate_bytes=cfg.store.max_inflate_bytes,
                   max_record_bytes=cfg.ingest.max_record_bytes,
                   default_character_set=_default_charset(cfg))


def _default_charset(cfg: Config) -> str | None:
    value = getattr(cfg.dicom, "default_character_set", None)
    return str(value) if value else None


@dataclass(frozen=True, slots=True)
class IngestResult:
    outcome: Outcome
    status: int  # the DICOM status to answer (Success for ok outcomes)
    reason: str = ""
    info: InstanceInfo | None = None
    sha256: str | None = None
    size: int = 0
    uid_hint: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.outcome.ok

    @property
    def http_status(self) -> int:
        return HTTP_STATUS[self.outcome]

    @property
    def sop_instance_uid(self) -> str | None:
        return self.info.sop_instance_uid if self.info is not None else self.uid_hint

    def as_dict(self) -> dict[str, Any]:
        """The result as JSON-ready values (API answers, ``--json`` lines)."""
        out: dict[str, Any] = {"outcome": self.outcome.value}
        if self.sop_instance_uid:
            out["sop_instance_uid"] = self.sop_instance_uid
        if self.info is not None:
            out["study_instance_uid"] = self.info.study_instance_uid
        if self.sha256:
            out["sha256"] = self.sha256
        if not self.ok:
            out.update(status=st.describe(self.status), reason=self.reason)
        out.update(self.extra)
        return out


def _result(outcome: Outcome, reason: str = "", **kw: Any) -> IngestResult:
    return IngestResult(outcome, kw.pop("status", _DICOM_STATUS.get(outcome, st.SUCCESS)),
                        reason, **kw)


def check(data: bytes, limits: Limits, *, dimse: Dimse | None = None) -> Checked:
    """Validate (and decode) one instance; raise :class:`Rejected` naming the element."""
    kw: dict[str, Any] = {"max_instance_bytes": limits.max_instance_bytes,
                          "max_inflate_bytes": limits.max_inflate_bytes}
    if limits.default_character_set:
        kw["default_character_set"] = limits.default_character_set
    if dimse is not None:
        return check_dimse(data, dimse.transfer_syntax,
                           affected_sop_class=dimse.affected_sop_class,
                           affected_sop_instance=dimse.affected_sop_instance, **kw)
    return check_part10(with_preamble(data), **kw)


def reject(store: Store, data: bytes, source: Source, exc: Rejected,
           uid_hint: str | None = None) -> IngestResult:
    """Keep refused bytes in quarantine (never served, never forwarded) and say why."""
    hint = exc.uid_hint or uid_hint
    store.quarantine(data, exc.reason, status=exc.status, calling_ae=source.actor,
                     peer_address=source.peer, uid_hint=hint)
    log.warning("ingest channel=%s actor=%s peer=%s rejected status=%s sop=%s reason=%s",
                source.channel, source.actor, source.peer, st.describe(exc.status),
                _safe(hint or ""), exc.reason)
    return _result(Outcome.REJECTED, exc.reason, status=exc.status, uid_hint=hint)


def commit(store: Store, checked: Checked, source: Source) -> IngestResult:
    """Make a checked instance durable and indexed; map every store outcome to a result."""
    info = checked.info
    try:
        out = store.put(checked.part10, info, calling_ae=source.actor, peer_address=source.peer)
    except StoreFull as exc:
        log.warning("ingest channel=%s actor=%s refused status=%s sop=%s reason=%s",
                    source.channel, source.actor, st.describe(st.OUT_OF_RESOURCES),
                    _safe(info.sop_instance_uid), exc)
        return _result(Outcome.FULL, f"store full: {exc}", info=info)
    except Exception as exc:  # a bug or an I/O fault: never answer success
        log.exception("ingest channel=%s actor=%s sop=%s store failed", source.channel,
                      source.actor, _safe(info.sop_instance_uid))
        return _result(Outcome.FAILED, f"store failed: {type(exc).__name__}", info=info)
    if out.status is PutStatus.CONFLICT:
        reason = (f"SOP Instance UID {info.sop_instance_uid} already stored with other bytes "
                  f"(sha256 {(out.existing_sha256 or '?')[:12]}…); a corrected instance "
                  "needs new UIDs")
        log.warning("ingest channel=%s actor=%s rejected status=%s reason=%s", source.channel,
                    source.actor, st.describe(st.SOP_INSTANCE_CONFLICT), reason)
        return _result(Outcome.CONFLICT, reason, info=info, sha256=out.existing_sha256)
    outcome = Outcome.STORED if out.status is PutStatus.STORED else Outcome.DUPLICATE
    return _result(outcome, info=info, sha256=out.sha256, size=out.size)


Hook = Callable[[Checked], "IngestResult | None"]


def ingest(store: Store, data: bytes, source: Source, limits: Limits, *,
           dimse: Dimse | None = None, on_checked: Hook | None = None) -> IngestResult:
    """The one ingest path: validate, quarantine or store, return what happened.

    ``on_checked`` sees every valid instance before it is stored; returning a
    result ends the ingest there (a viewer's report that was signed, or refused,
    stores nothing further); returning ``None`` stores it as an ordinary instance.
    Never raises for bad input.
    """
    if not data:
        return reject(store, data, source, Rejected(st.CANNOT_UNDERSTAND, "empty data set"),
                      dimse.affected_sop_instance if dimse else None)
    try:
        checked = check(data, limits, dimse=dimse)
    except Rejected as exc:
        return reject(store, data, source, exc,
                      dimse.affected_sop_instance if dimse else None)
    if on_checked is not None:
        try:
            handled = on_checked(checked)
        except Exception as exc:  # a bug or an I/O fault: never answer success
            log.exception("ingest channel=%s actor=%s sop=%s hook failed", source.channel,
                          source.actor, _safe(checked.info.sop_instance_uid))
            return _result(Outcome.FAILED, f"processing failed: {type(exc).__name__}",
                           info=checked.info)
        if handled is not None:
            return handled
    return commit(store, checked, source)


def refused(reason: str, status: int, info: InstanceInfo | None = None) -> IngestResult:
    """A hook's "no": valid data this sender may not store now (nothing is stored)."""
    return _result(Outcome.REFUSED, reason, status=status, info=info)


def handled(info: InstanceInfo, size: int = 0, **extra: Any) -> IngestResult:
    """A hook's "done": the object became something else (a signed report)."""
    return _result(Outcome.REPORT, info=info, size=size, extra=extra)


class Batch:
    """All-or-nothing ingest of many instances (a bundle at a receiving node).

    :meth:`add` validates each instance and writes its blob durably but
    invisibly; :meth:`commit` indexes them all in one transaction.  Until then
    nothing of the batch is visible: a refused bundle leaves only a quarantine
    record, and blobs of an abandoned batch are removed by store recovery.
    """

    def __init__(self, store: Store, source: Source, limits: Limits) -> None:
        self.store, self.source, self.limits = store, source, limits
        self._staged: list[tuple[InstanceInfo, str, int]] = []

    def add(self, data: bytes, *, default_character_set: str | None = None) -> Checked:
        """Check and stage one instance; raises :class:`Rejected` or :class:`StoreFull`.

        ``default_character_set`` replaces the limits' one for this instance (the
        character set its sender applied to it: gateway/dicom/charset.py)."""
        limits = self.limits if default_character_set is None else dataclasses.replace(
            self.limits, default_character_set=default_character_set)
        checked = check(data, limits)
        held = self.store.get_instance(checked.info.sop_instance_uid)
        if held is not None and held["dataset_sha256"] != checked.info.dataset_sha256:
            raise Rejected(st.SOP_INSTANCE_CONFLICT,
                           f"instance {checked.info.sop_instance_uid} conflicts with a "
                           "stored copy", checked.info.sop_instance_uid)
        digest, size = self.store.stage_blob(checked.part10)
        self._staged.append((checked.info, digest, size))
        return checked

    def commit(self) -> list[IngestResult]:
        """Index everything staged in one transaction; raises :class:`Rejected` on a
        conflict found at commit time (nothing is then indexed)."""
        try:
            outs = self.store.index_staged(self._staged, calling_ae=self.source.actor,
                                           peer_address=self.source.peer)
        except BatchConflict as exc:
            raise Rejected(st.SOP_INSTANCE_CONFLICT, str(exc), exc.sop_instance_uid) from exc
        results = []
        for (info, _, _), out in zip(self._staged, outs, strict=True):
            outcome = Outcome.STORED if out.status is PutStatus.STORED else Outcome.DUPLICATE
            results.append(_result(outcome, info=info, sha256=out.sha256, size=out.size))
        return results


def _safe(text: str) -> str:
    return text.encode("unicode_escape").decode()[:80]
