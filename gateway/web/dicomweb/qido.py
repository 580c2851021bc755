"""QIDO-RS: search for studies, series and instances (the same model as C-FIND)."""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

from aiohttp import web

from fenji.gateway.access import scope as access
from fenji.gateway.access.users import require
from fenji.gateway.dicom import query as qr
from fenji.gateway.store.db import Store
from fenji.gateway.web.dicomweb.common import (
    _PRIVATE_KEYS,
    _RESERVED_PARAMS,
    _app,
    _audit_open,
    _base_url,
    _dicom_json,
)
from fenji.gateway.web.dicomweb.json_model import _vr_of, attrs_to_json

log = logging.getLogger(__name__)

# QIDO default return attributes per level (PS3.18 Table 10.6.3-3 … -5), besides
# the matching keys and includefield.
DEFAULT_FIELDS: dict[str, tuple[str, ...]] = {
    "STUDY": ("SpecificCharacterSet", "StudyDate", "StudyTime", "AccessionNumber",
              "InstanceAvailability", "ReferringPhysicianName", "TimezoneOffsetFromUTC",
              "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
              "StudyInstanceUID", "StudyID", "ModalitiesInStudy",
              "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances",
              "StudyDescription"),
    "SERIES": ("SpecificCharacterSet", "Modality", "TimezoneOffsetFromUTC",
               "SeriesDescription", "SeriesInstanceUID", "SeriesNumber",
               "NumberOfSeriesRelatedInstances", "PerformedProcedureStepStartDate",
               "PerformedProcedureStepStartTime", "RequestAttributesSequence",
               "StudyInstanceUID"),
    "IMAGE": ("SpecificCharacterSet", "SOPClassUID", "SOPInstanceUID", "InstanceAvailability",
              "TimezoneOffsetFromUTC", "InstanceNumber", "Rows", "Columns", "BitsAllocated",
              "NumberOfFrames", "StudyInstanceUID", "SeriesInstanceUID"),
}
# qr.find's own bookkeeping keys: never sent to a viewer.
# -- QIDO-RS ------------------------------------------------------------------
def _keyword(name: str) -> str:
    """A query key (keyword or 8-hex-digit tag) as its keyword; 400 when unknown."""
    from pydicom.datadict import keyword_for_tag, tag_for_keyword

    if re.fullmatch(r"[0-9A-Fa-f]{8}", name):
        kw = keyword_for_tag(int(name, 16))
        if not kw:
            raise web.HTTPBadRequest(text=f"query key {name}: tag ({name[:4]},{name[4:]}) is "
                                          "not in the DICOM dictionary")
        return str(kw)
    if tag_for_keyword(name) is None:
        raise web.HTTPBadRequest(text=f"query key {name!r} is neither a DICOM keyword nor a "
                                      "tag (e.g. PatientName or 00100010)")
    return name


_INT64_MAX = (1 << 63) - 1  # SQLite's INTEGER: a larger bound raised OverflowError (a 500)
_INTEGER_VRS = {"IS", "SL", "SS", "UL", "US", "SV", "UV"}


def _nonneg(request: web.Request, name: str) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    if not raw.isascii() or not raw.isdigit():
        raise web.HTTPBadRequest(text=f"{name} = {raw[:40]!r} is not a non-negative integer")
    if len(raw) > 19 or int(raw) > _INT64_MAX:
        raise web.HTTPBadRequest(text=f"{name} = {raw[:40]}… exceeds {_INT64_MAX}")
    return int(raw)


def _check_value(keyword: str, value: str, fuzzy: bool, max_words: int) -> None:
    """Refuse a matching value the store cannot evaluate (400 naming the key)."""
    vr = _vr_of(_tag_of(keyword))
    if vr in _INTEGER_VRS:
        digits = value.strip().lstrip("+-")
        if digits.isascii() and digits.isdigit() and (len(digits) > 19
                                                      or int(digits) > _INT64_MAX):
            raise web.HTTPBadRequest(text=f"query key {keyword} = {value[:40]}… ({len(value)} "
                                          f"characters) is outside the 64-bit range of {vr}")
    if vr == "PN" and fuzzy:
        words = [w for w in re.split(r"[\s^=*?]+", value) if w]
        if len(words) > max_words:
            raise web.HTTPBadRequest(text=f"query key {keyword}: fuzzy matching on {len(words)} "
                                          f"words, more than limits.max_fuzzy_words = "
                                          f"{max_words}")


def _tag_of(keyword: str) -> int:
    from pydicom.datadict import tag_for_keyword

    tag = tag_for_keyword(keyword)
    return int(tag) if tag is not None else 0


def parse_qido(request: web.Request, *, max_fuzzy_words: int = 16
               ) -> tuple[dict[str, str], set[str] | None, bool, int | None, int]:
    """(match keys, include fields (None = all), fuzzy, limit, offset) of a QIDO request."""
    keys: dict[str, str] = {}
    include: set[str] | None = set()
    for name, value in request.query.items():
        low = name.lower()
        if low in _RESERVED_PARAMS:
            if low == "includefield":
                for f in value.split(","):
                    f = f.strip()
                    if not f:
                        continue
                    if f.lower() == "all":
                        include = None
                    elif include is not None:
                        include.add(_keyword(f))
                    else:
                        _keyword(f)
            continue
        if "." in name:
            raise web.HTTPBadRequest(text=f"query key {name!r}: sequence matching is not "
                                          "supported")
        keys[_keyword(name)] = value
    fuzzy = request.query.get("fuzzymatching", "false").lower() == "true"
    for kw, value in keys.items():
        _check_value(kw, value, fuzzy, max_fuzzy_words)
    return keys, include, fuzzy, _nonneg(request, "limit"), _nonneg(request, "offset") or 0


def _qido_shape(level: str, results: list[dict[str, Any]], keys: dict[str, str],
                include: set[str] | None, base: str) -> list[dict[str, Any]]:
    wanted = None if include is None else set(DEFAULT_FIELDS[level]) | set(keys) | include
    out = []
    for res in results:
        attrs = {k: v for k, v in res.items() if k not in _PRIVATE_KEYS
                 and (wanted is None or k in wanted)}
        study = res.get("StudyInstanceUID")
        if study:
            url = f"{base}/studies/{study}"
            if level in ("SERIES", "IMAGE") and res.get("SeriesInstanceUID"):
                url += f"/series/{res['SeriesInstanceUID']}"
            if level == "IMAGE" and res.get("SOPInstanceUID"):
                url += f"/instances/{res['SOPInstanceUID']}"
            attrs["RetrieveURL"] = url
        out.append(attrs_to_json(attrs))
    return out


def _qido_find(store: Store, level: str, keys: dict[str, str], include: set[str] | None,
               fuzzy: bool, limit: int | None, offset: int) -> list[dict[str, Any]]:
    ask = dict(keys)
    # Extra return keys are asked for the C-FIND way: present with an empty
    # value.  The level's defaults are whatever qr returns, filtered afterwards.
    for k in (include or ()):
        ask.setdefault(k, "")
    return qr.find(store, level, ask, limit=limit, offset=offset, fuzzy=fuzzy)


def _qido_handler(level: str) -> Any:
    async def handler(request: web.Request) -> web.Response:
        cfg, store = _app(request)
        user = require(request, "reader", "operator", action="search studies")
        keys, include, fuzzy, limit, offset = parse_qido(
            request, max_fuzzy_words=cfg.limits.max_fuzzy_words)
        m = request.match_info
        if "study" in m:
            keys["StudyInstanceUID"] = m["study"]
        if "series" in m:
            keys["SeriesInstanceUID"] = m["series"]
        try:
            results = await asyncio.to_thread(_qido_find, store, level, keys, include, fuzzy,
                                              limit, offset)
        except (ValueError, KeyError, OverflowError) as exc:  # qr names the key
            raise web.HTTPBadRequest(text=f"query: {str(exc)[:300]}") from None
        if access.restricted(user):  # a reader sees the studies of their services only
            seen = await asyncio.to_thread(access.visible_studies, store, user, (
                str(r.get("StudyInstanceUID") or "") for r in results))
            results = [r for r in results if str(r.get("StudyInstanceUID") or "") in seen]
        studies = list(dict.fromkeys(str(r["StudyInstanceUID"]) for r in results
                                     if r.get("StudyInstanceUID")))
        await asyncio.to_thread(_audit_open, store, cfg, user, studies, "qido-rs", request,
                                matches=len(results))
        body = _qido_shape(level, results, keys, include, _base_url(request))
        return _dicom_json(body)

    return handler
