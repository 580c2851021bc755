"""The reading center: worklist, claims, reports and their way back (DESIGN.md §3 steps 8-9).

(Being written.)
"""

from __future__ import annotations

# Migration 7 of gateway/store.py.
MIGRATION_SQL = """
ALTER TABLE cases ADD COLUMN sending_node TEXT;
ALTER TABLE cases ADD COLUMN received_at REAL;
ALTER TABLE cases ADD COLUMN claimed_by TEXT;
ALTER TABLE cases ADD COLUMN claimed_until REAL;
ALTER TABLE cases ADD COLUMN read_state TEXT;
ALTER TABLE cases ADD COLUMN manifest_sha256 TEXT;
ALTER TABLE cases ADD COLUMN manifest_json TEXT;
CREATE TABLE reports (
    report_id           TEXT PRIMARY KEY,
    case_id             TEXT NOT NULL,
    version             INTEGER NOT NULL,
    supersedes          TEXT,
    superseded_by       TEXT,
    status              TEXT NOT NULL,
    reader              TEXT NOT NULL,
    signed_at           REAL NOT NULL,
    critical            INTEGER NOT NULL DEFAULT 0,
    amendment_reason    TEXT,
    report_json         TEXT NOT NULL,
    signature           TEXT NOT NULL,
    endorsement_json    TEXT,
    sr_sop_instance_uid TEXT,
    pdf_sop_instance_uid TEXT,
    origin_node         TEXT NOT NULL,
    bundle_id           TEXT,
    returned_at         REAL,
    received_at         REAL,
    delivered_at        REAL,
    delivered_to        TEXT,
    acknowledged_at     REAL,
    acknowledged_by     TEXT,
    created_at          REAL NOT NULL
);
CREATE INDEX reports_case ON reports(case_id);
CREATE INDEX cases_read_state ON cases(read_state)
"""
