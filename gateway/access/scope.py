"""What a reader may read: the services they read, on every route (issue 17, finding 7).

The worklist already showed a reader only the cases of their services
(``[[users]] services``), but QIDO, WADO-RS (instances, metadata, frames, bulk
data), previews and case views served any study to any reader: a reader of
the ``ecg`` service read a whole CT.  These checks apply the worklist's rule
everywhere.  Only role ``reader`` is restricted; operators run the node and
see everything, and the other roles have no study reads on DICOMweb.

A study's service is its case's (:mod:`fenji.gateway.cases.case`); a study with no
case here is classified the way a release would classify it: ``ecg`` when
every instance is a waveform, else ``imaging``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fenji.gateway.access.users import User
from fenji.gateway.cases.case import ECG_SOP_PREFIX
from fenji.gateway.config import Config
from fenji.gateway.reading.errors import Forbidden
from fenji.gateway.store.db import Store


def restricted(user: User) -> bool:
    return user.role == "reader"


def study_service(store: Store, study_uid: str) -> str | None:
    """The service a study belongs to, or None when this node knows nothing of it."""
    row = store.query_one("SELECT service FROM cases WHERE study_instance_uid = ? AND "
                          "kind = 'case' ORDER BY created_at DESC LIMIT 1", (study_uid,))
    if row is not None:
        return str(row["service"])
    classes = [str(r["sop_class_uid"]) for r in store.query(
        "SELECT DISTINCT sop_class_uid FROM instances WHERE study_instance_uid = ?",
        (study_uid,))]
    if not classes:
        return None
    return "ecg" if all(c.startswith(ECG_SOP_PREFIX) for c in classes) else "imaging"


def _refuse(user: User, service: str, what: str) -> Forbidden:
    return Forbidden(f"reader {user.name!r} reads {', '.join(user.services) or 'nothing'}, "
                     f"not {service!r} ({what})")


def check_study(store: Store, user: User, study_uid: str) -> None:
    """Raise Forbidden (403) when ``user`` may not read this study; an unknown study
    passes (the route answers 404 itself)."""
    if not restricted(user):
        return
    service = study_service(store, study_uid)
    if service is not None and service not in user.services:
        raise _refuse(user, service, f"study {study_uid}")


def visible_studies(store: Store, user: User, studies: Iterable[str]) -> set[str]:
    """The studies among ``studies`` that ``user`` may read."""
    uids = set(studies)
    if not restricted(user):
        return uids
    return {s for s in uids if study_service(store, s) in user.services}


def check_case(user: User, case: dict[str, Any]) -> None:
    if restricted(user) and case.get("service") not in user.services:
        raise _refuse(user, str(case.get("service")), f"case {case.get('case_id')}")


def check_preview(store: Store, user: User, case_id: str, kind: str) -> None:
    """A preview is read like its case; one that arrived before its case (a STAT
    preview goes first) is judged by its kind: an image preview is imaging."""
    if not restricted(user):
        return
    row = store.query_one("SELECT case_id, service FROM cases WHERE case_id = ?", (case_id,))
    if row is not None:
        check_case(user, row)
        return
    service = "ecg" if kind == "ecg" else "imaging"
    if service not in user.services:
        raise _refuse(user, service, f"preview of case {case_id}")


def reader_of_ae(cfg: Config, calling_ae: str) -> User | None:
    """The reader a calling AE title is mapped to (``[[remote_aes]] reader``), if any:
    DIMSE Q/R from that workstation then sees that reader's services only."""
    remote = cfg.remote_ae(calling_ae)
    if remote is None or not remote.reader:
        return None
    u = cfg.user(remote.reader)
    return User.of(u) if u is not None else None


def filter_rows(store: Store, cfg: Config, calling_ae: str, rows: list[dict[str, Any]],
                key: str) -> list[dict[str, Any]]:
    """``rows`` (C-FIND matches or instances to retrieve) whose study, under ``key``,
    the reader mapped to ``calling_ae`` may read; all rows for other AEs."""
    user = reader_of_ae(cfg, calling_ae)
    if user is None:
        return rows
    seen = visible_studies(store, user, (str(r.get(key) or "") for r in rows))
    return [r for r in rows if str(r.get(key) or "") in seen]
