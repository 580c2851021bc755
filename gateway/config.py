"""Node configuration: one TOML file parsed once into frozen dataclasses.

Every default lives here, with the reason for it.  TOML files and ``FENJI_*``
environment variables only override.  Unknown keys and wrong types are errors
that name the key path and the bad value (``dicom.port = "eleven" is not an
integer``); :func:`load` collects every error before raising, so an engineer
fixes a broken file in one pass.

Environment overrides: ``FENJI_<SECTION>_<KEY>`` for every scalar key, e.g.
``FENJI_DICOM_PORT=11112``, ``FENJI_HTTP_PORT=8042``, ``FENJI_NODE_NAME=xian-1``.
Lists are comma separated (``FENJI_DICOM_ALLOW_AE=CT1,DR1``).
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import re
import tomllib
import types
import typing
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fenji.codecs.ecg.thresholds import EcgQualityThresholds
from fenji.codecs.image.thresholds import ImageQualityThresholds
from fenji.gateway.errors import ConfigError
from fenji.gateway.settings.checks import ROLES as ROLES  # re-exported: config.ROLES
from fenji.gateway.settings.checks import USER_ROLES as USER_ROLES
from fenji.gateway.settings.checks import check_values
from fenji.routing.outbox import OutboxPolicy

ENV_PREFIX = "FENJI_"

# -- hard limits ---------------------------------------------------------------
# Bounds no config changes, kept here beside the configurable ones ([dicom],
# [store], [limits], [transfer], [ingest] below), so every resource a request
# can spend is bounded in this one file.  Each says why its value.

#: Largest ECG cart file any reader accepts (the biggest real cart file seen is
#: 2.2 MiB; a 24-hour 12-lead Holter at 1000 Hz in int16 is ~2 GiB and goes by
#: C-STORE instead).
ECG_FILE_MAX_BYTES = 256 * 1024 * 1024
#: Largest signal (samples x leads) an ECG reader builds; float64 in memory, so
#: 256 MiB (24 h of 2 leads at 125 Hz is 21.6 M).  Binary files are checked
#: against it from their size before any decoding.
ECG_SAMPLE_VALUES_MAX = 32 * 1024 * 1024
#: Largest ECG XML document: real cart XML is 0.1-2 MiB; parsing costs ~10x its size.
ECG_XML_MAX_BYTES = 64 * 1024 * 1024
#: Deepest sequence nesting the validator walks (real objects nest < 10).
DICOM_SEQUENCE_DEPTH_MAX = 32
#: PS3.8 9.3.2.2: at most 128 presentation contexts in an A-ASSOCIATE-RQ.
DIMSE_MAX_CONTEXTS = 128
#: Above this many studies in one Q/R request the ledger gets one event listing
#: them (a universal C-FIND on a large archive would otherwise append thousands)...
AUDIT_STUDY_EVENTS_MAX = 100
#: ...and that event lists at most this many (the count is always complete).
AUDIT_STUDIES_LISTED_MAX = 5000
#: An "opened" event of one DICOMweb query lists at most this many studies.
AUDIT_QUERY_STUDIES_MAX = 200
#: Blob read size while streaming a DICOMweb answer: bounds memory per response.
DICOMWEB_READ_CHUNK_BYTES = 1 << 20
#: S3 blob store (store.blob_url = s3://…).  An instance up to this size goes in
#: one PUT (held in memory anyway: C-STORE hands it whole); above it, a multipart
#: upload, so no request body exceeds what one retry re-sends.
BLOB_S3_MULTIPART_THRESHOLD_BYTES = 64 * 1024 * 1024
#: Its part size (S3's minimum is 5 MiB; 10,000 parts make 160 GiB, past any instance).
BLOB_S3_PART_BYTES = 16 * 1024 * 1024
#: One ranged GET while streaming a blob (WADO-RS): large enough that a request's
#: latency is small beside its transfer, small enough to retry and to bound
#: memory (the body is read DICOMWEB_READ_CHUNK_BYTES at a time).
BLOB_S3_RANGE_BYTES = 8 * 1024 * 1024
#: The read-ahead window of a blob opened as a file (pydicom reading a header or
#: walking item tags): starts here after a seek, doubles while reads go on.
BLOB_S3_READAHEAD_MIN_BYTES = 64 * 1024
BLOB_S3_READAHEAD_MAX_BYTES = 4 * 1024 * 1024
#: A bucket object without an index row is an orphan only once it is this old:
#: with several center processes on one bucket, another may be between its PUT
#: and its commit (a 1,000-instance bundle stages every blob before one commit).
BLOB_S3_ORPHAN_GRACE_S = 3600.0
#: The receiver's cap on one upload chunk whatever a sender's [transfer] says.
TRANSFER_CHUNK_HARD_MAX_BYTES = 64 * 1024 * 1024
#: All preview sections of one bundle, encoded, as a receiver accepts them.
PREVIEW_SECTIONS_MAX_BYTES = 16 * 1024 * 1024
#: A STAT/urgent case whose instances total at most this many bytes carries its
#: preview inside its full bundle instead of ahead of it: the whole case goes in one
#: request (under transfer.single_request_bytes' default even uncompressed) as soon
#: as a separate preview would, without a second round trip (an ECG: issue 16).
PREVIEW_INLINE_MAX_RAW_BYTES = 512 * 1024

#: A process of a center ([node] shared_store) waits this long for the store's
#: lock while another process that found itself alone does its start-up
#: recovery (seconds on a large store: it lists the blob folder).
SHARED_STORE_JOIN_WAIT_S = 120.0
#: ... and, not being alone, removes only temporary files older than this: a
#: live process's temp file (a blob being fsynced, an upload part being spooled)
#: is seconds old, and one a killed process left is harmless until then.
SHARED_STORE_STALE_TMP_S = 3600.0

#: /api/ready answers 503 when the store does not answer its probe within this
#: long (a balancer checks every second or two; a store slower than this is
#: not one to send work to).
READY_PROBE_TIMEOUT_S = 5.0

#: The node's local API (gateway/access/local.py): a `fenji` command on the node's
#: machine hands a release to the running node, whose codecs are loaded, instead
#: of loading them itself (~1 s of an urgent ECG's time).  Its request bodies are
#: a few hundred bytes of JSON; the node serves a few at a time (each a release,
#: which the store serialises anyway); the command waits as long as the release of
#: a large study may take before it gives up (the release itself goes on).
LOCAL_API_SOCKET = "run/local.sock"
LOCAL_API_MAX_BODY_BYTES = 64 * 1024
LOCAL_API_MAX_CONCURRENT = 4
LOCAL_API_TIMEOUT_S = 3600.0

#: Shortest passphrase a reader's signing key is encrypted with: the key file
#: may be copied off the node, and a short passphrase falls to a guessing run.
MIN_PASSPHRASE_BYTES = 8

# Defaults of configurable limits that code outside a node's config also uses
# (ingest.Limits() in tools and tests); the reasons are at their keys below.
DEFAULT_MAX_INSTANCE_BYTES = 1024 * 1024 * 1024
DEFAULT_MAX_INFLATE_BYTES = 256 * 1024 * 1024
DEFAULT_MAX_RECORD_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class NodeSection:
    # A short, unique, human name: it appears in logs, receipts and audit events.
    name: str = "fenji-node"
    # edge sends up, relay stores and forwards, center reads and reports (DESIGN.md §1).
    role: str = "edge"
    # Where the store, keys and state live; relative paths are relative to the
    # config file so a node directory can be moved as a whole.
    data_dir: str = "."
    # The hospital as its doctors name it, printed on reports ("XX县人民医院").
    institution: str = ""
    # Times people read (report PDFs) are in this IANA zone; empty: the
    # system's own zone (Asia/Shanghai on a hospital server in China).
    timezone: str = ""
    # Several `fenji node` processes with this same config (ports from
    # FENJI_DICOM_PORT / FENJI_HTTP_PORT) serve one center from one store,
    # behind a load balancer.  Off (the default): one node per store, a second
    # is refused, as a township node wants.  On: every process holds the
    # store's lock shared; start-up clean-up that would touch a live process's
    # work (temp files, staged blobs, outbox leases) is done only by a process
    # that finds itself alone.  README: "Running a center on several processes".
    shared_store: bool = False
    # A center's process says it is alive in the index this often (one UPDATE) ...
    heartbeat_s: float = 5.0
    # ... and is dead (its outbox jobs handed on) after this long without, or when its
    # pid is gone on this machine.  Six beats: a stall on 2 busy cores or a PostgreSQL
    # restart keeps its work; a dead machine's jobs move in half outbox.lease_s.
    process_lease_s: float = 30.0


@dataclass(frozen=True, slots=True)
class DicomSection:
    # The AE title modalities are configured to send to (PS3.8: at most 16 chars).
    ae_title: str = "FENJI"
    # Loopback by default: a node is exposed to the hospital network on purpose.
    host: str = "127.0.0.1"
    # 11112 is the registered non-privileged DICOM port.
    port: int = 11112
    # Calling AE titles allowed to associate.  It must be written down: an
    # open SCP in a hospital is an incident.  ["*"] accepts any (labs only).
    allow_ae: tuple[str, ...] = ()
    # Optional source addresses allowed to connect (empty: any address).
    allow_hosts: tuple[str, ...] = ()
    # What one calling AE may retrieve (C-MOVE, C-GET) per rolling hour.  A reader
    # workstation pulls a few dozen studies an hour (a CT of 500 slices is about
    # 250 MiB); anything far beyond that is a workstation copying the archive.
    max_retrieve_bytes_per_hour: int = 16 * 1024 * 1024 * 1024
    # Refuse an association addressed to another called AE title: a modality
    # configured with a typo ("FENJ") must fail at set-up, not send into a
    # node that believes it was meant for it (PS3.8 7.1.1.6).
    require_called_aet: bool = True
    # Receiving processes sharing the port (SO_REUSEPORT): Python SCPs are
    # GIL-bound, so several modalities at once need several processes.
    # 0 means one per CPU core.
    workers: int = 0
    # Our maximum PDU receive size.  Large PDUs mean fewer Python-level PDU
    # decodes per instance; 4 MiB keeps memory per association bounded.
    max_pdu_bytes: int = 4 * 1024 * 1024
    # Concurrent associations per process; more are rejected (transient).
    max_associations: int = 32
    # Largest data set we accept over DIMSE or file import (1 GiB: a 4k x 4k
    # 16-bit multi-frame of 30 frames).  pynetdicom holds a data set in memory
    # while it arrives, so an association sending more is aborted as soon as
    # it passes this: memory per association stays bounded.
    max_instance_bytes: int = DEFAULT_MAX_INSTANCE_BYTES
    # Idle network timeout: a dead modality must not hold an association forever.
    network_timeout_s: float = 60.0
    # pynetdicom's reactor threads poll every 1 ms, which caps a single
    # association at a few hundred instances/s; fenji polls this often instead
    # (gateway/dimse/server.py, _FastPoll).  1e-3 restores pynetdicom's own behaviour.
    poll_interval_s: float = 0.0001
    acse_timeout_s: float = 30.0
    dimse_timeout_s: float = 60.0
    # (0008,0005) Specific Character Set assumed for instances that declare none:
    # a DICOM defined term ("GB18030", "GBK", "ISO_IR 192", "\\ISO 2022 IR 58").
    # Many Chinese modalities write GBK/GB18030 bytes and declare nothing; the
    # standard says such text is ASCII.  Empty: no default (undeclared non-ASCII
    # text is read as UTF-8, else Latin-1).  What was applied is recorded per
    # instance (instances.charset_source = "default").  Orthanc's DefaultEncoding.
    default_character_set: str = ""
    # A connection that sends no byte of its A-ASSOCIATE-RQ within this long is
    # dropped before it becomes an association: a modality sends its request at
    # once, and anonymous idle sockets must not hold association slots for
    # acse_timeout_s (issue 17: 40 idle sockets locked C-ECHO out).
    preassoc_idle_s: float = 5.0
    # On SIGTERM/SIGINT the node stops accepting and gives associations in
    # flight this long to finish before it aborts them (logging what was cut
    # and how many bytes of it had arrived).  An instance of a few hundred MB
    # arrives in seconds on a LAN; a service manager's stop timeout (systemd:
    # 90 s) must stay above this.
    stop_grace_s: float = 10.0
    # Connections (idle or associated) one source address may hold per
    # receiving process; more are refused with A-ASSOCIATE-RJ (local limit).
    # Half of max_associations: one host can never lock the others out.
    max_connections_per_host: int = 16


@dataclass(frozen=True, slots=True)
class HttpSection:
    # The node's HTTP API (cases, queue, DICOMweb).  Loopback by default.
    host: str = "127.0.0.1"
    port: int = 8042
    # Serve HTTPS with client certificates required (mutual TLS): how nodes
    # talk across the network.  Every peer then needs its `cert`.
    tls: bool = False


# The index on PostgreSQL (gateway/store/index_pg.py): readers borrow a
# connection per statement, so a process needs few; PostgreSQL's default
# max_connections (100) then serves a dozen center processes.
INDEX_POOL_MAX = 8
# A statement that waits this long (a lock held by a hung process) fails
# instead of hanging its association: well past any real statement.
INDEX_STATEMENT_TIMEOUT_S = 60
# TCP keepalive of a held key's connection (PgIndex.hold): idle s, interval s, lost
# probes.  A machine that vanished mid-release frees it in ~25 s, not 2 hours.
HOLD_KEEPALIVE = (10, 5, 3)
# A wake-up listener (PgIndex.listen) looks for its stop this often, and waits at
# most LISTEN_RETRY_MAX_S between tries of a lost connection (1, 2, 4, ... s).
LISTEN_STOP_CHECK_S = 1.0
LISTEN_RETRY_MAX_S = 30.0


@dataclass(frozen=True, slots=True)
class StoreSection:
    # Store directory (blobs, index, quarantine); relative to node.data_dir.
    path: str = "store"
    # Where the index lives.  Empty: the SQLite file index.sqlite in the store
    # directory (a township or county node).  "postgresql://user@host:port/db"
    # for a regional center whose processes share one index (issue 14; the
    # password from ~/.pgpass or PGPASSWORD rather than the file).
    # Environment: FENJI_STORE_INDEX_URL.
    index_url: str = ""
    # Where blobs (and quarantined bytes) live: empty is the store folder's
    # blobs/ (a township or county node); a regional center may name an
    # S3-compatible bucket: "s3://bucket/prefix?endpoint=https://oss.example&region=cn-1"
    # (addressing=path|virtual, checksum=sha256|md5).  Env FENJI_STORE_BLOB_URL.
    blob_url: str = ""
    # Credentials for an s3:// blob_url; empty: the standard AWS environment
    # (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, ~/.aws, an instance role),
    # which keeps secrets out of the config file.
    blob_access_key_id: str = ""
    blob_secret_access_key: str = ""
    # Refuse new instances (0xA700) while free space is below this, so the
    # index can always commit and the OS never fills up under us.
    min_free_bytes: int = 64 * 1024 * 1024
    # Keep rejected input in quarantine/ for forensics (never served or forwarded).
    quarantine: bool = True
    # The quarantine's bounds: past either, the oldest records (and their
    # files) are evicted and the eviction logged.  Forensics needs recent
    # rejects, not every part of a flood (10,000 tiny STOW-RS parts made
    # 12,000 rows).  0: unbounded.
    quarantine_max_records: int = 10000
    quarantine_max_bytes: int = 1024 * 1024 * 1024
    # Inflate deflated datasets at most this far (deflate bombs: a 3 MB file
    # that inflates to 3 GiB).
    max_inflate_bytes: int = DEFAULT_MAX_INFLATE_BYTES


@dataclass(frozen=True, slots=True)
class LimitsSection:
    """What one request may spend (issue 17: a node a careless or hostile party cannot
    bring down).  Refusals answer 4xx with the limit's key path in the message."""

    # WADO-RS frames per request, after duplicates are removed.  Viewers ask
    # one frame or a small batch; 1,000 listed frames decoded 378 MB at once.
    max_frames_per_request: int = 64
    # Decoded bytes of the frames one WADO-RS request asks for as
    # application/octet-stream from a compressed instance: they are held in
    # memory until sent.  256 MiB is six 4664 x 3064 16-bit mammogram frames.
    max_decoded_bytes_per_request: int = 256 * 1024 * 1024
    # Decoded pixels of one preview (all frames x samples): a preview is a
    # downsampled key image, 4096 x 4096 is more than any screen shows; a
    # 25 KB bundle decoded to a 1.16 GB preview without it.
    max_preview_pixels: int = 4096 * 4096
    # Words of a fuzzy person-name query: a name has five components of a few
    # words each; SQLite refuses an expression deeper than 1,000 terms.
    max_fuzzy_words: int = 16
    # Parts of one multipart request (STOW-RS, ECG upload): a study sent by a
    # viewer is rarely more than a few thousand instances.
    max_multipart_parts: int = 2000
    # Uploads one peer may have open (receiving) at once: an outbox sends one
    # bundle per peer at a time and resumes it, so 200 parallel creations are
    # not a sender doing its job.
    max_uploads_per_peer: int = 16
    # Seconds without a request after which a peer's unfinished upload is given up,
    # its bytes removed (routing/reaper.py; the sender's next try starts it again).
    abandoned_upload_s: float = 86400.0
    # Uploads (STOW-RS, ECG records, reports) one user may have in flight at
    # once: a viewer or cart sends one at a time, and each holds up to a whole
    # instance in memory (dicom.max_instance_bytes).
    max_uploads_per_user: int = 4


@dataclass(frozen=True, slots=True)
class KeysSection:
    # Ed25519 node key (PEM, PKCS#8) and its public half; relative to data_dir.
    private_key: str = "keys/node.key"
    public_key: str = "keys/node.pub"
    # Self-signed certificate of the node key: its TLS identity (fenji keys init).
    certificate: str = "keys/node.crt"


@dataclass(frozen=True, slots=True)
class PeerSection:
    """Another fenji node this one sends to or accepts uploads from (``[[peers]]``)."""

    # The peer's node.name: what it signs receipts and requests with.
    name: str = ""
    # Its HTTP API base URL, e.g. "https://center.example:8042".
    url: str = ""
    # Its Ed25519 public key: a PEM file (relative to data_dir) or 64 hex digits.
    public_key: str = ""
    # Its TLS certificate (PEM, relative to data_dir), pinned: required for https.
    cert: str = ""
    # Capacity of the link to it, bits/s (0: do not pace), and the share fenji
    # may use by time of day, e.g. ["08:00-18:00=30%"] keeps 70 % for the
    # hospital during clinic hours; outside every window fenji may use it all.
    rate_bps: int = 0
    schedule: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class EgressSection:
    """An archive a center hands received cases on to (``[[egress]]``)."""

    name: str = ""
    # orthanc (its REST API), dimse (C-STORE to any SCP) or stow (DICOMweb STOW-RS).
    kind: str = ""
    # orthanc / stow: base URL, e.g. "http://127.0.0.1:8042" or ".../dicom-web".
    url: str = ""
    # dimse: the SCP's address and AE title; we call as dicom.ae_title.
    host: str = ""
    port: int = 0
    ae_title: str = ""


@dataclass(frozen=True, slots=True)
class WebSection:
    """A second HTTP listener for people and viewers (``[web]``).

    Node-to-node traffic uses [http], which with ``http.tls`` demands a peer's
    client certificate; readers' viewers, Orthanc and browsers have none, so
    they come in here: the same API, authenticated by user token.
    """

    host: str = "127.0.0.1"
    # 0: no second listener (the API is served on [http] only).
    port: int = 0
    # The web console (gateway/web/console): a session ends after this long
    # without a request (a reader leaving a workstation unlocked at lunch) ...
    session_idle_s: float = 1800.0
    # ... and at the latest this long after sign-in (one shift), whatever the use.
    session_max_s: float = 12 * 3600.0
    # Live sessions kept at once; the oldest goes first beyond it (bounded memory).
    max_sessions: int = 1000
    # Origins (scheme://host:port) whose viewers may call /dicom-web with a token
    # from another origin: preflights are answered for exactly these, never with
    # credentials.  Empty: same origin only (the built-in viewer at /viewer/).
    cors_origins: tuple[str, ...] = ()
    # The OHIF Viewer build (@ohif/app dist/) served at /viewer/; empty: the
    # vendor/ohif folder `make` fills next to the source tree.  The console's
    # htmx is read from ../htmx/htmx.min.js beside it (make puts both there).
    viewer_dir: str = ""
    # The console is reached through an HTTPS reverse proxy that ends TLS and
    # forwards plain HTTP here: its cookies are then marked Secure all the same
    # (the browser must never send a session over plain HTTP).  Without it a
    # cookie is Secure exactly when this listener itself serves HTTPS.
    behind_https_proxy: bool = False


@dataclass(frozen=True, slots=True)
class UserSection:
    """A person (or a viewer acting for one) allowed on the HTTP API (``[[users]]``)."""

    name: str = ""
    # technician | reader | physician | operator
    role: str = ""
    # SHA-256 (hex) of the user's API token (`fenji user add` prints the token
    # once and writes only this).  Sent as "Authorization: Bearer TOKEN", or as
    # the password of HTTP Basic auth (for viewers such as Orthanc).
    token_sha256: str = ""
    # Readers: the services they read (their expert pools), e.g. ["imaging"].
    services: tuple[str, ...] = ()
    # Readers: the Ed25519 key pair reports are signed with (fenji keys init
    # --reader NAME); default keys/readers/NAME.key and .pub.
    private_key: str = ""
    public_key: str = ""
    # Printed on reports, e.g. "王医生 (Dr. Wang), attending radiologist".
    display_name: str = ""


@dataclass(frozen=True, slots=True)
class KnownNodeSection:
    """A fenji node this one trusts but does not talk to directly (``[[known_nodes]]``).

    An edge lists its reading center here (it reaches it through a relay), so it
    can check the center's endorsement of the readers who sign its reports.
    """

    name: str = ""
    # Ed25519 public key: a PEM file (relative to data_dir) or 64 hex digits.
    public_key: str = ""


@dataclass(frozen=True, slots=True)
class RemoteAeSection:
    """A DICOM node a center may send to on C-MOVE (``[[remote_aes]]``).

    ``reader``: the reader at this workstation.  A DICOM SR or encapsulated PDF
    this AE C-STOREs for a study on the worklist is signed as that reader's
    report (gateway/reading/viewer.py :func:`viewer_report_if_any`).
    """

    ae_title: str = ""
    host: str = ""
    port: int = 0
    reader: str = ""


@dataclass(frozen=True, slots=True)
class ReadingSection:
    # A claimed case goes back to the pool when its reader did nothing with it
    # for this long (a reader who went home must not sit on a STAT case).
    claim_ttl_s: float = 1800.0


@dataclass(frozen=True, slots=True)
class ServiceSection:
    """One line of the service catalog fees are computed from (``[[services]]``)."""

    # imaging | ecg | consultation ...: the case's service.
    name: str = ""
    # Fee per reported case, in currency units (e.g. yuan).
    price: float = 0.0
    currency: str = "CNY"
    # Share of the fee that goes to the inviting (sending) hospital; the rest
    # to the invited (reading) center.  0.2 is the 2:8 split of consultations.
    inviting_share: float = 0.2


@dataclass(frozen=True, slots=True)
class ReportsSection:
    # Edge: an [[egress]] name (dimse, orthanc or stow) that returned reports
    # (the SR and the PDF) are handed to: the hospital's PACS/HIS.  Empty: kept
    # in the store and shown by `fenji case show` only.
    deliver_to: str = ""
    # Edge: a command run when a report with a critical finding arrives, with
    # FENJI_CASE_ID, FENJI_REPORT_ID, FENJI_PRIORITY and FENJI_IMPRESSION in
    # its environment (e.g. a script that pages the requesting physician).
    critical_hook: str = ""
    # Center: a signed report goes back as a bundle of this priority.
    return_priority: str = "stat"


@dataclass(frozen=True, slots=True)
class TransferSection:
    # Destination of a case when `fenji case send` names none (a peer name).
    default_destination: str = ""
    # First chunk size; it then adapts to the link (doubling while a chunk
    # takes under 2 s, halving over 10 s) between the two bounds below.
    chunk_bytes: int = 256 * 1024
    min_chunk_bytes: int = 16 * 1024
    max_chunk_bytes: int = 8 * 1024 * 1024
    # One HTTP request may take this long before the attempt counts as failed.
    request_timeout_s: float = 120.0
    # Plain HTTP between nodes: only for a lab on loopback.  Production links
    # use HTTPS with client certificates (mutual TLS).
    allow_plain_http: bool = False
    # Release a study automatically when no instance arrived for this long
    # (0: only explicit release by CLI or API).
    stable_study_s: float = 0.0
    # Requests signed by a peer are accepted within this clock skew.
    max_clock_skew_s: float = 300.0
    # A bundle up to this size goes whole in one request that answers its receipt
    # (an urgent ECG, a STAT preview): one round trip instead of three.  Bounded
    # by TRANSFER_CHUNK_HARD_MAX_BYTES, what a receiver takes in one request; 0: off.
    single_request_bytes: int = 1024 * 1024
    # Larger bundles stream as frames of this size in one request, each frame
    # checksummed and fsynced at the receiver, so the link never waits for an
    # answer.  Half a second of a 1 Mbit/s link: a STAT case overtakes within a
    # frame, a cut loses at most one.  0: one request per chunk, each answered.
    frame_bytes: int = 64 * 1024


@dataclass(frozen=True, slots=True)
class IngestSection:
    # A folder ECG carts export WFDB records (or .dcm files) into; relative to
    # data_dir.  Empty: no folder is watched.  Ingested files move to done/,
    # rejected ones to failed/ with the reason beside them.
    watch_dir: str = ""
    # How often the folder is scanned.
    watch_interval_s: float = 2.0
    # A file younger than this may still be being written: it waits a round.
    settle_s: float = 2.0
    # One ECG record (all its files) from a cart, by upload or folder.  A 12-lead
    # rest ECG is well under 1 MiB; a 24-h Holter record is about 100-200 MiB.
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES


@dataclass(frozen=True, slots=True)
class LogSection:
    # INFO gives one line per association and per rejected instance.
    level: str = "INFO"
    # Empty: standard error.  Otherwise a file path relative to data_dir.
    file: str = ""


@dataclass(frozen=True, slots=True)
class Config:
    node: NodeSection = field(default_factory=NodeSection)
    dicom: DicomSection = field(default_factory=DicomSection)
    http: HttpSection = field(default_factory=HttpSection)
    store: StoreSection = field(default_factory=StoreSection)
    keys: KeysSection = field(default_factory=KeysSection)
    log: LogSection = field(default_factory=LogSection)
    transfer: TransferSection = field(default_factory=TransferSection)
    ingest: IngestSection = field(default_factory=IngestSection)
    limits: LimitsSection = field(default_factory=LimitsSection)
    # The quality gate's thresholds (DESIGN.md §9: thresholds live in config);
    # every default and its reason is in fenji/codecs/ecg_quality.py and
    # image_quality.py.  A [quality_ecg] / [quality_image] table overrides.
    quality_ecg: EcgQualityThresholds = field(default_factory=EcgQualityThresholds)
    quality_image: ImageQualityThresholds = field(default_factory=ImageQualityThresholds)
    # Retry, dead-letter, lease and circuit-breaker policy of the outbox; every
    # default and its reason is in fenji/routing/outbox.py.  [outbox] overrides.
    outbox: OutboxPolicy = field(default_factory=OutboxPolicy)
    web: WebSection = field(default_factory=WebSection)
    reading: ReadingSection = field(default_factory=ReadingSection)
    reports: ReportsSection = field(default_factory=ReportsSection)
    peers: tuple[PeerSection, ...] = ()
    egress: tuple[EgressSection, ...] = ()
    users: tuple[UserSection, ...] = ()
    remote_aes: tuple[RemoteAeSection, ...] = ()
    known_nodes: tuple[KnownNodeSection, ...] = ()
    services: tuple[ServiceSection, ...] = ()
    # The file this was loaded from (None for defaults); paths resolve against it.
    source: str | None = None

    # -- resolved paths -------------------------------------------------
    @property
    def data_dir(self) -> Path:
        base = Path(self.source).parent if self.source else Path.cwd()
        return (base / self.node.data_dir).resolve()

    def resolve(self, rel: str) -> Path:
        p = Path(rel)
        return p if p.is_absolute() else self.data_dir / p

    @property
    def store_dir(self) -> Path:
        return self.resolve(self.store.path)

    def peer(self, name: str) -> PeerSection | None:
        return next((p for p in self.peers if p.name == name), None)

    def egress_target(self, name: str) -> EgressSection | None:
        return next((e for e in self.egress if e.name == name), None)

    def user(self, name: str) -> UserSection | None:
        return next((u for u in self.users if u.name == name), None)

    def remote_ae(self, ae_title: str) -> RemoteAeSection | None:
        return next((a for a in self.remote_aes if a.ae_title == ae_title), None)

    def service(self, name: str) -> ServiceSection | None:
        return next((s for s in self.services if s.name == name), None)

    def reader_key_paths(self, name: str) -> tuple[Path, Path]:
        """A reader's (private, public) key paths: configured, or keys/readers/NAME.*."""
        u = self.user(name)
        priv = u.private_key if u and u.private_key else f"keys/readers/{name}.key"
        pub = u.public_key if u and u.public_key else f"keys/readers/{name}.pub"
        return self.resolve(priv), self.resolve(pub)

    # -- people's clock ---------------------------------------------------
    @property
    def timezone(self) -> str:
        """The IANA zone people's times are shown in: ``[node] timezone``, else the system's."""
        if self.node.timezone:
            return self.node.timezone
        tz = os.environ.get("TZ", "").lstrip(":")
        if "/" in tz:
            return tz
        try:
            link = os.readlink("/etc/localtime")
        except OSError:
            return "UTC"
        return link.split("zoneinfo/", 1)[1] if "zoneinfo/" in link else "UTC"

    def local_time(self, t: float | None) -> str:
        """A Unix time as people read it, in :attr:`timezone`: ``2026-12-03 23:16:09 CST``."""
        if not t:
            return "-"
        try:
            tz: datetime.tzinfo = zoneinfo.ZoneInfo(self.timezone)
        except (KeyError, ValueError, OSError):
            tz = datetime.UTC
        return datetime.datetime.fromtimestamp(float(t), tz).strftime("%Y-%m-%d %H:%M:%S %Z")


# ---------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------

_SECTIONS: dict[str, type] = {k: v for k, v in typing.get_type_hints(Config).items()
                              if k != "source"}


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _type_name(tp: Any) -> str:
    if tp is bool:
        return "a boolean (true/false)"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    origin = typing.get_origin(tp)
    if origin is tuple:
        inner = _type_name(typing.get_args(tp)[0]).removeprefix("a ").removeprefix("an ")
        return f"a list of {inner}s"
    return str(tp)


def _coerce(value: Any, tp: Any, path: str, errors: list[str]) -> Any:
    """Check ``value`` against ``tp``; return the value in its final form."""
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif typing.get_origin(tp) is tuple and dataclasses.is_dataclass(typing.get_args(tp)[0]):
        inner_cls = typing.get_args(tp)[0]
        if isinstance(value, list):
            return tuple(_build_section(f"{path}[{i}]", inner_cls, item, errors)
                         for i, item in enumerate(value))
    elif typing.get_origin(tp) is tuple:
        (inner,) = typing.get_args(tp)[:1]
        if isinstance(value, list | tuple):
            items = [_coerce(item, inner, f"{path}[{i}]", errors) for i, item in enumerate(value)]
            return tuple(item for item in items if item is not None)
    elif isinstance(tp, types.UnionType):
        for arm in typing.get_args(tp):
            if arm is type(None) and value is None:
                return None
        return _coerce(value, typing.get_args(tp)[0], path, errors)
    errors.append(f"{path} = {value!r} is not {_type_name(tp)}")
    return None


def _build_section(name: str, cls: type, raw: Any, errors: list[str]) -> Any:
    if not isinstance(raw, Mapping):
        errors.append(f"{name} = {raw!r} is not a table")
        return cls()
    hints = _hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in hints:
            known = ", ".join(sorted(hints))
            errors.append(f"{name}.{key}: unknown key (known keys: {known})")
            continue
        kwargs[key] = _coerce(value, hints[key], f"{name}.{key}", errors)
    try:
        return cls(**{k: v for k, v in kwargs.items() if v is not None})
    except (TypeError, ValueError) as exc:  # a section's own consistency checks
        errors.append(f"{name}: {exc}")
        return cls()


def _env_overrides(env: Mapping[str, str], errors: list[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for section, cls in _SECTIONS.items():
        if typing.get_origin(cls) is tuple:
            continue  # arrays of tables have no environment form
        for key, tp in _hints(cls).items():
            var = f"{ENV_PREFIX}{section}_{key}".upper()
            if var not in env:
                continue
            text = env[var]
            value: Any
            try:
                if tp is int:
                    value = int(text)
                elif tp is float:
                    value = float(text)
                elif tp is bool:
                    if text.lower() not in ("1", "0", "true", "false", "yes", "no"):
                        raise ValueError(text)
                    value = text.lower() in ("1", "true", "yes")
                elif typing.get_origin(tp) is tuple:
                    value = [t.strip() for t in text.split(",") if t.strip()]
                else:
                    value = text
            except ValueError:
                errors.append(f"{var}={text!r} (for {section}.{key}) is not {_type_name(tp)}")
                continue
            out.setdefault(section, {})[key] = value
    return out


def _error_key(error: str) -> str:
    """The key path an error is about, without a trailing list index.

    ``dicom.allow_ae[1] = 3 …`` -> ``dicom.allow_ae``; ``peers[1].url …`` -> ``peers[1].url``.
    """
    token = error.split(" ", 1)[0].rstrip(":")
    return re.sub(r"\[\d+\]$", "", token)


def from_mapping(raw: Mapping[str, Any], *, source: str | None = None,
                 env: Mapping[str, str] | None = None) -> Config:
    """Build a :class:`Config` from parsed TOML (and ``env`` overrides)."""
    errors: list[str] = []
    merged: dict[str, Any] = {k: dict(v) if isinstance(v, Mapping) else v for k, v in raw.items()}
    for section, values in _env_overrides(os.environ if env is None else env, errors).items():
        base = merged.setdefault(section, {})
        if isinstance(base, dict):
            base.update(values)
    sections: dict[str, Any] = {}
    for key, value in merged.items():
        if key not in _SECTIONS:
            known = ", ".join(sorted(_SECTIONS))
            errors.append(f"{key}: unknown section (known sections: {known})")
            continue
        if typing.get_origin(_SECTIONS[key]) is tuple:
            sections[key] = _coerce(value, _SECTIONS[key], key, errors) or ()
            continue
        sections[key] = _build_section(key, _SECTIONS[key], value, errors)
    cfg = Config(**sections, source=source)
    # A key whose type was wrong kept its default; checking that default's value
    # would only add a misleading second message for the same key.
    bad = {_error_key(e) for e in errors}
    semantic: list[str] = []
    check_values(cfg, semantic, chunk_hard_max=TRANSFER_CHUNK_HARD_MAX_BYTES)
    errors.extend(e for e in semantic if _error_key(e) not in bad)
    if errors:
        raise ConfigError(errors)
    return cfg


def load(path: str | os.PathLike[str], *, env: Mapping[str, str] | None = None) -> Config:
    """Parse and validate the TOML file at ``path``.

    Raises :class:`ConfigError` listing every problem with its key path.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{p}: cannot read config: {exc.strerror or exc}"]) from exc
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{p}: not valid TOML: {exc}"]) from exc
    return from_mapping(raw, source=str(p.resolve()), env=env)


# Where a CLI verb looks for the config when --config is not given (in order).
