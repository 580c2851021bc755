"""The root of fenji's exception tree.

It lives in ``fenji.codecs`` because codecs imports nothing of fenji while the
gateway and routing import codecs: the base class has to sit at the bottom.
Every error says whose fault it is (STYLE.md, Errors).
"""

from __future__ import annotations


class FenjiError(Exception):
    """Base of every fenji error.

    ``http_status`` is what an HTTP shell answers, ``dicom_status`` what a DIMSE shell
    answers (PS3.7 C.4 / PS3.4 B.2.3; the names are in gateway/dicom/status.py, which
    codecs may not import).  A subclass sets both when its meaning is narrower.
    """

    http_status = 500
    dicom_status = 0x0110  # Processing failure: unexpected, ours


class PeerError(FenjiError):
    """The other side (a modality, a node, a file we were given) is at fault."""

    http_status = 400
    dicom_status = 0xC000  # Cannot understand


class LocalError(FenjiError):
    """This node is at fault or lacks a resource (disk, config, key)."""

    http_status = 500


class DecodeError(PeerError):
    """Encoded bytes are corrupt, truncated or of an unknown version.

    Raised instead of ever returning a wrong image or waveform.
    """

    http_status = 422
    dicom_status = 0xC000  # Cannot understand
