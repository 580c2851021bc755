"""The one way data enters a node.

Every way in — C-STORE, STOW-RS, ``fenji store import``, the ECG watched folder
and ``POST /api/ecg``, the instances of a bundle at a receiving node, and a
viewer's report — hands its bytes and their :class:`Source` to :func:`ingest`
(or, for a bundle, to a :class:`Batch`).  It validates (and decodes the text
with the instance's character set), makes the blob durable, indexes it, and
returns one :class:`IngestResult`.  Each shell only maps that result to its own
answer: a DICOM status, an HTTP status with a FailureReason, or ``done/`` /
``failed/`` with a reason file.  One set of limits (:class:`Limits`, from the
config) and one status table (:data:`HTTP_STATUS`).
"""

from fenji.gateway.dicom.terms import check_term
from fenji.gateway.dicom.validate import Rejected, split_part10
from fenji.gateway.ingest.core import (
    HTTP_STATUS,
    Batch,
    Dimse,
    IngestResult,
    Limits,
    Outcome,
    Source,
    check,
    commit,
    handled,
    ingest,
    refused,
    reject,
)

__all__ = ["HTTP_STATUS", "Batch", "Dimse", "IngestResult", "Limits", "Outcome", "Source",
           "check", "commit", "handled", "ingest", "refused", "reject",
           # what the receiving side of a transfer (routing) needs of DICOM
           "Rejected", "check_term", "split_part10"]
