"""The reading center's side: worklist, claims, viewer reports, signing, the report's return.

By responsibility (docs/architecture.md): :mod:`.claims` (worklist, claims),
:mod:`.viewer` (viewer reports, drafts), :mod:`.report_return` (signing, queueing back,
arrival at the edge, delivery, acknowledgement), :mod:`.errors`, and :mod:`.delivery`
(what the sender's events mean).  Callers use the names here:
``from fenji.gateway import reading``.
"""

from __future__ import annotations

from fenji.gateway.reading.claims import claim, unclaim, worklist, worklist_case_for_study
from fenji.gateway.reading.errors import Forbidden, NotFound, ReadingError, refusal_status
from fenji.gateway.reading.report_return import (
    acknowledge,
    export_report,
    may_sign,
    report_arrived,
    report_delivered,
    report_pdf,
    reports_of,
    submit_report,
    trusted_centers,
    with_reports,
)
from fenji.gateway.reading.viewer import (
    VIEWER_REPORT_CLASSES,
    confirm_draft,
    drafts_of,
    report_from_viewer,
    viewer_report_draft,
    viewer_report_if_any,
)

__all__ = ["VIEWER_REPORT_CLASSES", "Forbidden", "NotFound", "ReadingError", "acknowledge",
           "claim", "confirm_draft", "drafts_of", "export_report", "may_sign",
           "refusal_status", "report_arrived", "report_delivered", "report_from_viewer",
           "report_pdf", "reports_of", "submit_report", "trusted_centers", "unclaim",
           "viewer_report_draft", "viewer_report_if_any", "with_reports", "worklist",
           "worklist_case_for_study"]
