"""DICOMweb on the node (PS3.18): QIDO-RS, WADO-RS and STOW-RS under ``/dicom-web``.

The shell between viewers and the store.  Routes (``{s}`` study, ``{se}``
series, ``{i}`` SOP instance UID):

* QIDO-RS ``GET /studies``, ``/series``, ``/instances``, ``/studies/{s}/series``,
  ``/studies/{s}/instances``, ``/studies/{s}/series/{se}/instances`` — matching is
  :func:`fenji.gateway.dicom.query.find` (the same model as C-FIND); keys by keyword or
  tag, ``fuzzymatching``, ``limit``/``offset``, ``includefield`` (list or ``all``);
  answers ``application/dicom+json`` (PS3.18 F.2), ``200 []`` when nothing matches;
* WADO-RS ``GET /studies/{s}[/series/{se}[/instances/{i}]]`` (multipart/related,
  ``application/dicom`` parts), the same ``+ /metadata`` (dicom+json, bulk data as
  ``BulkDataURI``), ``/studies/{s}/series/{se}/instances/{i}/frames/{list}`` and
  ``…/instances/{i}/bulkdata/{tag}``;
* STOW-RS ``POST /studies[/{s}]``: each ``application/dicom`` part goes through
  the validator and the durable store path like a C-STORE.

Content negotiation (PS3.18 8.7): ``transfer-syntax=*`` returns the stored
bytes unchanged; a named transfer syntax (or none: the default for
``application/dicom`` is Explicit VR Little Endian) is served as stored when it
matches, otherwise transcoded (native <-> native, compressed -> native when
pydicom has a decoder for it) and the parts say which syntax they carry; a
request nothing can satisfy gets ``406`` naming the stored syntax.

Multipart answers are streamed part by part, blobs read from disk in chunks,
so memory does not grow with the study.  Frames and pixel bulk data are
located in the stored file from its header and item tags (``_map_frames``) and
only the asked-for frames are read, so memory does not grow with a long cine
either; a decoded frame is decoded alone.  Deflated and big-endian files (and
fragments without an offset table that do not map one to one) fall back to
reading the instance whole.  A viewer's text SR or PDF stored by a reader for a
worklist study becomes the reader's signed report (gateway/reading/viewer.py).  Every
read of patient data is an ``opened`` event in the audit ledger (one per
request).  Store, ledger and
pydicom work run in threads, never on the event loop.
"""

from __future__ import annotations

from aiohttp import web

from fenji.gateway.config import Config
from fenji.gateway.store.db import Store
from fenji.gateway.web.dicomweb.common import PREFIX
from fenji.gateway.web.dicomweb.frames import get_frames
from fenji.gateway.web.dicomweb.qido import _qido_handler
from fenji.gateway.web.dicomweb.stow import stow
from fenji.gateway.web.dicomweb.wado import bulkdata, metadata, retrieve


def add_routes(app: web.Application, cfg: Config, store: Store) -> None:
    """Register the DICOMweb routes on the node's app (auth: gateway/access/users.py)."""
    del cfg, store  # read from the app per request, like the other handlers
    r = app.router
    s, se, i = "{study}", "{series}", "{sop}"
    p = PREFIX
    # QIDO-RS
    r.add_get(f"{p}/studies", _qido_handler("STUDY"))
    r.add_get(f"{p}/series", _qido_handler("SERIES"))
    r.add_get(f"{p}/instances", _qido_handler("IMAGE"))
    r.add_get(f"{p}/studies/{s}/series", _qido_handler("SERIES"))
    r.add_get(f"{p}/studies/{s}/instances", _qido_handler("IMAGE"))
    r.add_get(f"{p}/studies/{s}/series/{se}/instances", _qido_handler("IMAGE"))
    # WADO-RS
    r.add_get(f"{p}/studies/{s}", retrieve)
    r.add_get(f"{p}/studies/{s}/series/{se}", retrieve)
    r.add_get(f"{p}/studies/{s}/series/{se}/instances/{i}", retrieve)
    r.add_get(f"{p}/studies/{s}/metadata", metadata)
    r.add_get(f"{p}/studies/{s}/series/{se}/metadata", metadata)
    r.add_get(f"{p}/studies/{s}/series/{se}/instances/{i}/metadata", metadata)
    r.add_get(f"{p}/studies/{s}/series/{se}/instances/{i}/frames/{{frames}}", get_frames)
    r.add_get(f"{p}/studies/{s}/series/{se}/instances/{i}/bulkdata/{{tag}}", bulkdata)
    # STOW-RS
    r.add_post(f"{p}/studies", stow)
    r.add_post(f"{p}/studies/{s}", stow)


__all__ = ["add_routes", "attrs_to_json", "choose_syntax", "dicom_syntaxes", "parse_accept",
           "transcode"]
