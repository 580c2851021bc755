"""The DICOM JSON model (PS3.18 F.2) of indexed attributes."""

from __future__ import annotations

import logging
from typing import Any

from fenji.gateway.dicom import charset

log = logging.getLogger(__name__)

# -- DICOM JSON (PS3.18 F.2) --------------------------------------------------
_NUMERIC_VRS = {"IS", "SL", "SS", "UL", "US", "SV", "UV"}
_FLOAT_VRS = {"DS", "FL", "FD"}
_MULTI_TEXT_VRS = {"LT", "ST", "UT", "UR"}  # backslash is not a separator in these


def _vr_of(tag: int) -> str:
    from pydicom.datadict import dictionary_VR

    try:
        vr = str(dictionary_VR(tag))
    except KeyError:
        return "UN"
    return vr.split(" or ")[0]


def _json_value(vr: str, value: Any) -> list[Any]:
    if isinstance(value, list | tuple):
        items = list(value)
    elif isinstance(value, str) and vr not in _MULTI_TEXT_VRS:
        items = value.split("\\")
    else:
        items = [value]
    out: list[Any] = []
    for v in items:
        if v is None or v == "":
            out.append(None)
        elif vr == "PN":  # PS3.18 F.2.2: one object per name, one key per group
            out.append(charset.pn_json(str(v)) or None)
        elif vr in _NUMERIC_VRS:
            try:
                out.append(int(v))
            except (TypeError, ValueError):
                out.append(None)
        elif vr in _FLOAT_VRS:
            try:
                f = float(v)
                out.append(int(f) if vr == "DS" and f.is_integer() else f)
            except (TypeError, ValueError):
                out.append(None)
        else:
            out.append(str(v))
    return out


def attrs_to_json(attrs: dict[str, Any]) -> dict[str, Any]:
    """``{keyword: value}`` -> DICOM JSON ``{"0010 0010" tag: {"vr", "Value"}}``, tag order."""
    from pydicom.datadict import tag_for_keyword

    out: dict[int, dict[str, Any]] = {}
    for key, value in attrs.items():
        tag = tag_for_keyword(key)
        if tag is None:
            continue
        vr = _vr_of(tag)
        if vr == "SQ":
            continue
        elem: dict[str, Any] = {"vr": vr}
        if value not in (None, "", [], ()):
            vals = _json_value(vr, value)
            if any(v is not None for v in vals):
                elem["Value"] = vals
        out[tag] = elem
    return {f"{t:08X}": out[t] for t in sorted(out)}


# -- helpers shared by the handlers -------------------------------------------
