"""Every schema migration of a node's store, in one place.

Numbered and append-only: never edit a released migration, add a new one.  The
store applies those its database has not seen, each in its own transaction
(gateway/store/db.py).  Which module owns which tables is said at each entry.
"""

# The columns of one ledger event after its node and seq, alike in the node's own
# chain (audit) and in the events it imported from others (audit_foreign), in
# this order (rows are read and written by position).  Part of migration 5.
EVENT_COLUMNS = """at        REAL NOT NULL,
    kind      TEXT NOT NULL,
    actor     TEXT NOT NULL,
    role      TEXT NOT NULL,
    object    TEXT NOT NULL,
    case_id   TEXT,
    detail    TEXT NOT NULL DEFAULT '{}',
    prev_hash TEXT NOT NULL,
    hash      TEXT NOT NULL UNIQUE"""

# Part of migration 5.  Created IF NOT EXISTS so that audit.ledger.ensure_tables can
# add them to a store migrated before they existed (migration 5 was unreleased then).
AUDIT_EXTRA_SQL = """
CREATE TABLE IF NOT EXISTS audit_head (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    node      TEXT NOT NULL,
    seq       INTEGER NOT NULL,
    hash      TEXT NOT NULL,
    at        REAL NOT NULL,
    key       TEXT NOT NULL,
    signature TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_foreign (
    node        TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    """ + EVENT_COLUMNS + """,
    via         TEXT NOT NULL,
    imported_at REAL NOT NULL,
    PRIMARY KEY (node, seq)
);
CREATE INDEX IF NOT EXISTS audit_foreign_case ON audit_foreign(case_id)
"""

# Numbered, append-only.  Never edit a released migration: add a new one.
MIGRATIONS: list[tuple[int, str]] = [
    (1, """
    CREATE TABLE patients (
        patient_id   TEXT PRIMARY KEY,
        patient_name TEXT,
        birth_date   TEXT,
        sex          TEXT
    );
    CREATE TABLE studies (
        study_instance_uid TEXT PRIMARY KEY,
        patient_id         TEXT,
        study_date         TEXT,
        study_time         TEXT,
        accession_number   TEXT,
        study_description  TEXT,
        first_received_at  REAL NOT NULL,
        last_received_at   REAL NOT NULL
    );
    CREATE TABLE series (
        series_instance_uid TEXT PRIMARY KEY,
        study_instance_uid  TEXT NOT NULL,
        modality            TEXT,
        series_number       INTEGER,
        series_description  TEXT
    );
    CREATE INDEX series_study ON series(study_instance_uid);
    CREATE TABLE instances (
        sop_instance_uid    TEXT PRIMARY KEY,
        sop_class_uid       TEXT NOT NULL,
        study_instance_uid  TEXT NOT NULL,
        series_instance_uid TEXT NOT NULL,
        transfer_syntax_uid TEXT NOT NULL,
        instance_number     INTEGER,
        sha256              TEXT NOT NULL,
        dataset_sha256      TEXT NOT NULL,
        size                INTEGER NOT NULL,
        received_at         REAL NOT NULL,
        calling_ae          TEXT,
        peer_address        TEXT
    );
    CREATE INDEX instances_series ON instances(series_instance_uid);
    CREATE INDEX instances_study ON instances(study_instance_uid);
    CREATE INDEX instances_sha ON instances(sha256);
    CREATE TABLE events (
        id               INTEGER PRIMARY KEY AUTOINCREMENT,
        at               REAL NOT NULL,
        kind             TEXT NOT NULL,
        sop_instance_uid TEXT,
        calling_ae       TEXT,
        detail           TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX events_kind ON events(kind);
    CREATE TABLE quarantine (
        id           INTEGER PRIMARY KEY AUTOINCREMENT,
        at           REAL NOT NULL,
        sha256       TEXT NOT NULL,
        size         INTEGER NOT NULL,
        reason       TEXT NOT NULL,
        status       INTEGER,
        calling_ae   TEXT,
        peer_address TEXT,
        uid_hint     TEXT
    );
    """),
    (2, """
    CREATE TABLE cases (
        case_id              TEXT PRIMARY KEY,
        study_instance_uid   TEXT NOT NULL,
        kind                 TEXT NOT NULL DEFAULT 'case',
        parent_case_id       TEXT,
        priority             TEXT NOT NULL,
        service              TEXT NOT NULL,
        destination          TEXT NOT NULL,
        requesting_physician TEXT,
        clinical_question    TEXT,
        consent_ref          TEXT,
        state                TEXT NOT NULL,
        released_by          TEXT,
        released_at          REAL,
        created_at           REAL NOT NULL,
        updated_at           REAL NOT NULL
    );
    CREATE INDEX cases_study ON cases(study_instance_uid);
    CREATE TABLE case_instances (
        case_id          TEXT NOT NULL,
        sop_instance_uid TEXT NOT NULL,
        PRIMARY KEY (case_id, sop_instance_uid)
    );
    CREATE INDEX case_instances_sop ON case_instances(sop_instance_uid);
    CREATE TABLE outbox (
        job_id          INTEGER PRIMARY KEY AUTOINCREMENT,
        bundle_id       TEXT NOT NULL UNIQUE,
        case_id         TEXT NOT NULL,
        destination     TEXT NOT NULL,
        priority        INTEGER NOT NULL,
        state           TEXT NOT NULL,
        attempts        INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL,
        lease_owner     TEXT,
        lease_until     REAL,
        bytes_total     INTEGER NOT NULL DEFAULT 0,
        bytes_sent      INTEGER NOT NULL DEFAULT 0,
        last_error      TEXT,
        created_at      REAL NOT NULL,
        updated_at      REAL NOT NULL,
        done_at         REAL
    );
    CREATE INDEX outbox_ready ON outbox(state, destination, priority, next_attempt_at);
    CREATE TABLE destinations (
        name                 TEXT PRIMARY KEY,
        paused               INTEGER NOT NULL DEFAULT 0,
        breaker              TEXT NOT NULL DEFAULT 'closed',
        consecutive_failures INTEGER NOT NULL DEFAULT 0,
        open_until           REAL
    );
    CREATE TABLE receipts (
        bundle_id    TEXT PRIMARY KEY,
        case_id      TEXT,
        destination  TEXT,
        receipt_json TEXT NOT NULL,
        signature    TEXT NOT NULL,
        signer       TEXT NOT NULL,
        received_at  REAL NOT NULL
    );
    CREATE TABLE uploads (
        upload_id     TEXT PRIMARY KEY,
        bundle_id     TEXT NOT NULL UNIQUE,
        sender        TEXT NOT NULL,
        length        INTEGER NOT NULL,
        offset        INTEGER NOT NULL DEFAULT 0,
        state         TEXT NOT NULL,
        manifest_json TEXT,
        receipt_json  TEXT,
        signature     TEXT,
        created_at    REAL NOT NULL,
        updated_at    REAL NOT NULL
    );
    """),
    (3, """
    CREATE TABLE quality (
        case_id          TEXT PRIMARY KEY,
        verdict          TEXT NOT NULL,
        report_json      TEXT NOT NULL,
        attestation_json TEXT,
        created_at       REAL NOT NULL,
        updated_at       REAL NOT NULL
    );
    """),
    (4, """
    ALTER TABLE destinations ADD COLUMN throughput_bps REAL;
    ALTER TABLE destinations ADD COLUMN rtt_ms REAL;
    ALTER TABLE destinations ADD COLUMN requests INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE destinations ADD COLUMN errors INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE destinations ADD COLUMN allowed_bps REAL;
    """),
    # 5: the hash-chained audit ledger (gateway/audit/ledger.py).
    (5, """
CREATE TABLE audit (
    seq       INTEGER PRIMARY KEY,
    node      TEXT NOT NULL,
    """ + EVENT_COLUMNS + """
);
CREATE INDEX audit_case ON audit(case_id);
CREATE INDEX audit_kind ON audit(kind, at);
""" + AUDIT_EXTRA_SQL),
    # 6: query/retrieve index columns for C-FIND and QIDO-RS (gateway/dicom/query.py).
    (6, """
ALTER TABLE studies ADD COLUMN referring_physician TEXT;
ALTER TABLE studies ADD COLUMN study_id TEXT;
ALTER TABLE studies ADD COLUMN patient_name TEXT;
ALTER TABLE studies ADD COLUMN birth_date TEXT;
ALTER TABLE studies ADD COLUMN sex TEXT;
UPDATE studies SET
    patient_name = (SELECT p.patient_name FROM patients p WHERE p.patient_id = studies.patient_id),
    birth_date = (SELECT p.birth_date FROM patients p WHERE p.patient_id = studies.patient_id),
    sex = (SELECT p.sex FROM patients p WHERE p.patient_id = studies.patient_id);
CREATE INDEX studies_patient_name ON studies(patient_name);
CREATE INDEX studies_patient ON studies(patient_id);
CREATE INDEX studies_date ON studies(study_date);
CREATE INDEX studies_accession ON studies(accession_number);
CREATE INDEX studies_referring ON studies(referring_physician);
CREATE INDEX patients_name ON patients(patient_name);
CREATE INDEX series_modality ON series(modality)
"""),
    # 7: worklist claims, reports and their way back (gateway/reading/).
    (7, """
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
"""),
    # 8: character sets (gateway/dicom/charset.py).  Per instance, the (0008,0005) value its
    # text was decoded with and where it came from ("declared", "default": the node's
    # dicom.default_character_set, "none", "invalid": an unknown declared value, kept
    # here as declared).  Person names split into their component groups
    # (Alphabetic, Ideographic, Phonetic; PS3.5 6.2.1) so that C-FIND and QIDO-RS
    # match any group through an index (PS3.4 C.2.2.2): kind "patient" (owner: a
    # patient ID), "study_patient" and "study_referring" (owner: a Study Instance UID).
    # Group text is stored without trailing "^" and spaces; existing names are split
    # here as they were indexed.
    (8, """
    ALTER TABLE instances ADD COLUMN specific_character_set TEXT;
    ALTER TABLE instances ADD COLUMN charset_source TEXT;
    CREATE TABLE name_groups (
        kind  TEXT NOT NULL,
        owner TEXT NOT NULL,
        grp   INTEGER NOT NULL,
        name  TEXT NOT NULL,
        PRIMARY KEY (kind, owner, grp)
    );
    CREATE INDEX name_groups_name ON name_groups(kind, name);
    INSERT OR IGNORE INTO name_groups(kind, owner, grp, name)
    WITH RECURSIVE parts(kind, owner, grp, name, rest) AS (
        SELECT 'patient', patient_id, -1, '', patient_name || '=' FROM patients
            WHERE patient_name IS NOT NULL AND patient_id IS NOT NULL
        UNION ALL
        SELECT 'study_patient', study_instance_uid, -1, '', patient_name || '=' FROM studies
            WHERE patient_name IS NOT NULL
        UNION ALL
        SELECT 'study_referring', study_instance_uid, -1, '', referring_physician || '='
            FROM studies WHERE referring_physician IS NOT NULL
        UNION ALL
        SELECT kind, owner, grp + 1, rtrim(substr(rest, 1, instr(rest, '=') - 1), '^ '),
               substr(rest, instr(rest, '=') + 1)
            FROM parts WHERE rest <> '' AND grp < 2
    )
    SELECT kind, owner, grp, name FROM parts WHERE grp >= 0 AND name <> ''
    """),
    # 9: instances a technician dropped from a case before release (who, why).
    (9, """
    CREATE TABLE excluded_instances (
        sop_instance_uid   TEXT PRIMARY KEY,
        study_instance_uid TEXT NOT NULL,
        case_id            TEXT NOT NULL,
        excluded_by        TEXT NOT NULL,
        reason             TEXT NOT NULL,
        at                 REAL NOT NULL
    );
    """),
    # 10: reports from a workstation's AE title wait, unsigned, for the reader.
    (10, """
    CREATE TABLE report_drafts (
        sop_instance_uid TEXT PRIMARY KEY,
        case_id          TEXT NOT NULL,
        reader           TEXT NOT NULL,
        calling_ae       TEXT NOT NULL,
        peer_address     TEXT,
        received_at      REAL NOT NULL,
        report_id        TEXT,
        confirmed_at     REAL
    );
    CREATE INDEX report_drafts_case ON report_drafts(case_id);
    """),
    # 11: bytes each calling AE retrieved (C-MOVE/C-GET), for its hourly budget.
    (11, """
    CREATE TABLE retrieve_usage (
        calling_ae TEXT NOT NULL,
        at         REAL NOT NULL,
        bytes      INTEGER NOT NULL
    );
    CREATE INDEX retrieve_usage_ae ON retrieve_usage(calling_ae, at);
    """),
    # 12: console sessions (gateway/web/console/session.py), shared by every process
    # of a center and kept over a restart.  The id is stored only as its SHA-256:
    # reading the index does not hand out sessions.
    (12, """
    CREATE TABLE console_sessions (
        sid_sha256   TEXT PRIMARY KEY,
        user_name    TEXT NOT NULL,
        token_sha256 TEXT NOT NULL,
        created_at   REAL NOT NULL,
        last_seen    REAL NOT NULL
    );
    CREATE INDEX console_sessions_seen ON console_sessions(last_seen);
    """),
    # 13: a center's processes, each alive while it beats (gateway/store/processes.py):
    # their outbox leases are handed on when one is not.
    (13, """
    CREATE TABLE processes (
        owner      TEXT PRIMARY KEY,
        host       TEXT NOT NULL,
        pid        INTEGER NOT NULL,
        started_at REAL NOT NULL,
        seen_at    REAL NOT NULL
    );
    """),
]
