"""The root of fenji's exception tree.

It lives in ``fenji.codecs`` because codecs imports nothing of fenji while the
gateway and routing import codecs: the base class has to sit at the bottom.
Every error says whose fault it is (STYLE.md, Errors).
"""

from __future__ import annotations


class FenjiError(Exception):
    """Base of every fenji error.  ``http_status`` is what an HTTP shell answers."""

    http_status = 500


class PeerError(FenjiError):
    """The other side (a modality, a node, a file we were given) is at fault."""

    http_status = 400


class LocalError(FenjiError):
    """This node is at fault or lacks a resource (disk, config, key)."""

    http_status = 500


class DecodeError(PeerError):
    """Encoded bytes are corrupt, truncated or of an unknown version.

    Raised instead of ever returning a wrong image or waveform.
    """

    http_status = 422
