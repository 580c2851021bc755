"""The reading center's functions under one name, for callers written before the split.

The reading lives in four modules by responsibility (docs/architecture.md):
:mod:`~fenji.gateway.reading.worklist` (worklist, claims),
:mod:`~fenji.gateway.reading.viewer` (viewer reports, drafts),
:mod:`~fenji.gateway.reading.report_return` (signing, queueing back, arrival at the
edge, delivery, acknowledgement) and :mod:`~fenji.gateway.reading.errors`.  New code
imports those; this module only re-exports them (web/dicomweb/stow.py still uses it).
"""

from __future__ import annotations

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
from fenji.gateway.reading.worklist import claim, unclaim, worklist, worklist_case_for_study

__all__ = ["VIEWER_REPORT_CLASSES", "Forbidden", "NotFound", "ReadingError", "acknowledge",
           "claim", "confirm_draft", "drafts_of", "export_report", "may_sign",
           "refusal_status", "report_arrived", "report_delivered", "report_from_viewer",
           "report_pdf", "reports_of", "submit_report", "trusted_centers", "unclaim",
           "viewer_report_draft", "viewer_report_if_any", "with_reports", "worklist",
           "worklist_case_for_study"]
