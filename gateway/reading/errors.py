"""The reading center's refusals, each with the HTTP status and DICOM status it maps to."""

from __future__ import annotations

from fenji.gateway.dicom import status as st
from fenji.gateway.errors import PeerError


class ReadingError(PeerError):
    """A worklist or report request that cannot be done (the message says why)."""

    http_status = 409


class NotFound(ReadingError):
    http_status = 404


class Forbidden(ReadingError):
    http_status = 403
    dicom_status = 0x0124  # Refused: not authorized


def refusal_status(exc: ReadingError) -> int:
    """The DICOM status a refused viewer report gets (C-STORE, STOW-RS FailureReason)."""
    return st.NOT_AUTHORIZED if isinstance(exc, Forbidden) else st.REPORT_REFUSED
