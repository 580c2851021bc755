"""The checks of a config that its types alone cannot express (gateway/config.py).

Each appends a message naming the key path and the offending value to ``errors``;
the loader reports them all at once.  ``cfg`` is a :class:`fenji.gateway.config.Config`
(not imported: config imports this module).
"""

from __future__ import annotations

import math
import re
from typing import Any

from fenji.gateway.dicom.terms import check_term
from fenji.gateway.errors import ConfigError
from fenji.gateway.settings.blob_url import parse_blob_url

ROLES = ("edge", "relay", "center")
# Who may do what over the HTTP API (DESIGN.md §11).  A technician registers
# and releases cases and fixes quality holds; a reader reads studies and signs
# reports; the requesting physician acknowledges reports; an operator runs the
# node (queues, statistics, audit) and may also override holds.
USER_ROLES = ("technician", "reader", "physician", "operator")


def _unique_names(errors: list[str], key: str, items: Any) -> None:
    """Each ``[[key]]`` entry has a name, and no two the same."""
    names = [x.name for x in items]
    for i, name in enumerate(names):
        if not name:
            errors.append(f"{key}[{i}].name is empty")
        elif names.count(name) > 1:
            errors.append(f"{key}[{i}].name = {name!r} is listed twice")


def check_values(cfg: Any, errors: list[str], *, chunk_hard_max: int) -> None:
    """Semantic checks that types alone cannot express.

    ``chunk_hard_max``: config.TRANSFER_CHUNK_HARD_MAX_BYTES (config imports this
    module, so it hands its limit in rather than this module naming it again)."""
    if cfg.node.role not in ROLES:
        errors.append(f"node.role = {cfg.node.role!r} is not one of {', '.join(ROLES)}")
    if not cfg.node.name.strip():
        errors.append("node.name is empty")
    if not 0 < cfg.node.heartbeat_s <= 60:
        errors.append(f"node.heartbeat_s = {cfg.node.heartbeat_s} is not in (0, 60] seconds")
    elif cfg.node.process_lease_s < 3 * cfg.node.heartbeat_s:
        errors.append(f"node.process_lease_s = {cfg.node.process_lease_s} is shorter than "
                      f"three heartbeats (node.heartbeat_s = {cfg.node.heartbeat_s}): a live "
                      "process would be counted dead after one late beat")
    ae = cfg.dicom.ae_title
    if not (0 < len(ae.strip()) <= 16) or "\\" in ae or not ae.isascii():
        errors.append(f"dicom.ae_title = {ae!r} must be 1-16 ASCII characters without '\\'")
    if not cfg.dicom.allow_ae:
        errors.append("dicom.allow_ae is empty: no modality could send; list the calling AE "
                      "titles of your modalities (or [\"*\"] to accept any, for a lab)")
    for i, t in enumerate(cfg.dicom.allow_ae):
        if not (0 < len(t.strip()) <= 16) or not t.isascii():
            errors.append(f"dicom.allow_ae[{i}] = {t!r} must be 1-16 ASCII characters")
    for sec, port in (("dicom", cfg.dicom.port), ("http", cfg.http.port)):
        if not 0 <= port <= 65535:
            errors.append(f"{sec}.port = {port} is outside 0-65535")
    if cfg.dicom.workers < 0 or cfg.dicom.workers > 64:
        errors.append(f"dicom.workers = {cfg.dicom.workers} is outside 0-64")
    if not 0 <= cfg.dicom.max_pdu_bytes <= 64 * 1024 * 1024:
        errors.append(f"dicom.max_pdu_bytes = {cfg.dicom.max_pdu_bytes} is outside 0-67108864")
    if cfg.dicom.max_associations < 1:
        errors.append(f"dicom.max_associations = {cfg.dicom.max_associations} must be >= 1")
    if cfg.dicom.max_instance_bytes < 1024:
        errors.append(f"dicom.max_instance_bytes = {cfg.dicom.max_instance_bytes} is too small")
    why = check_term(cfg.dicom.default_character_set)
    if why:
        errors.append(f"dicom.default_character_set = {cfg.dicom.default_character_set!r}: "
                      f"{why}")
    if not 0 < cfg.dicom.poll_interval_s <= 0.01:
        errors.append(f"dicom.poll_interval_s = {cfg.dicom.poll_interval_s} is outside (0, 0.01]")
    for name in ("network_timeout_s", "acse_timeout_s", "dimse_timeout_s", "preassoc_idle_s",
                 "stop_grace_s"):
        v = getattr(cfg.dicom, name)
        if not v > 0 or v == float("inf"):
            errors.append(f"dicom.{name} = {v} must be a finite number > 0")
    if cfg.dicom.max_connections_per_host < 1:
        errors.append(f"dicom.max_connections_per_host = {cfg.dicom.max_connections_per_host} "
                      "must be >= 1")
    for name in ("max_frames_per_request", "max_decoded_bytes_per_request",
                 "max_preview_pixels", "max_fuzzy_words",
                 "max_multipart_parts", "max_uploads_per_peer", "max_uploads_per_user"):
        v = getattr(cfg.limits, name)
        if v < 1:
            errors.append(f"limits.{name} = {v} must be >= 1")
    idle = cfg.limits.abandoned_upload_s
    if not 0 <= idle < float("inf"):
        errors.append(f"limits.abandoned_upload_s = {idle} must be a finite number >= 0 "
                      "(0: never give an upload up)")
    skew = cfg.transfer.max_clock_skew_s
    if not 0 < skew < float("inf"):
        errors.append(f"transfer.max_clock_skew_s = {skew} must be a finite number > 0")
    for name in ("quarantine_max_records", "quarantine_max_bytes"):
        if getattr(cfg.store, name) < 0:
            errors.append(f"store.{name} = {getattr(cfg.store, name)} must be >= 0")
    if cfg.store.min_free_bytes < 0:
        errors.append(f"store.min_free_bytes = {cfg.store.min_free_bytes} must be >= 0")
    url = cfg.store.index_url.strip()
    if url and not url.startswith(("postgresql://", "postgres://", "sqlite:///")):
        errors.append(f"store.index_url = {url!r} must be postgresql://user@host:port/db, "
                      "sqlite:///path, or empty (the SQLite file in the store folder)")
    try:
        parse_blob_url(cfg.store.blob_url)
    except ConfigError as exc:
        errors.extend(exc.errors)
    _unique_names(errors, "peers", cfg.peers)
    names = [p.name for p in cfg.peers]
    for i, peer in enumerate(cfg.peers):
        if not peer.url.startswith(("http://", "https://")):
            errors.append(f"peers[{i}].url = {peer.url!r} must start with https:// "
                          "(or http:// with transfer.allow_plain_http)")
        elif peer.url.startswith("http://") and not cfg.transfer.allow_plain_http:
            errors.append(f"peers[{i}].url = {peer.url!r} is plain HTTP; set "
                          "transfer.allow_plain_http = true (labs only) or use https://")
        if not peer.public_key:
            errors.append(f"peers[{i}].public_key is empty (PEM path or 64 hex digits)")
        if peer.rate_bps < 0:
            errors.append(f"peers[{i}].rate_bps = {peer.rate_bps} must be >= 0")
        try:
            from fenji.routing.shaping import parse_schedule

            parse_schedule(peer.schedule)
        except ValueError as exc:
            errors.append(f"peers[{i}].{exc}")
        if (peer.url.startswith("https://") or cfg.http.tls) and not peer.cert:
            errors.append(f"peers[{i}].cert is empty: mutual TLS needs the peer's certificate "
                          "(copy its keys/node.crt)")
    for i, eg in enumerate(cfg.egress):
        if eg.kind not in ("orthanc", "dimse", "stow"):
            errors.append(f"egress[{i}].kind = {eg.kind!r} is not orthanc, dimse or stow")
        if not eg.name or eg.name in names:
            errors.append(f"egress[{i}].name = {eg.name!r} must be set and differ from peers")
        if eg.kind in ("orthanc", "stow") and not eg.url.startswith(("http://", "https://")):
            errors.append(f"egress[{i}].url = {eg.url!r} must be an http(s) URL")
        if eg.kind == "dimse" and not (eg.host and 0 < eg.port < 65536 and eg.ae_title):
            errors.append(f"egress[{i}] (dimse) needs host, port and ae_title")
    dest = cfg.transfer.default_destination
    if dest and dest not in names:
        errors.append(f"transfer.default_destination = {dest!r} is not a configured peer "
                      f"(peers: {', '.join(names) or 'none'})")
    tr = cfg.transfer
    if not 0 < tr.min_chunk_bytes <= tr.chunk_bytes <= tr.max_chunk_bytes:
        errors.append(f"transfer chunk sizes must satisfy 0 < min_chunk_bytes "
                      f"({tr.min_chunk_bytes}) <= chunk_bytes ({tr.chunk_bytes}) <= "
                      f"max_chunk_bytes ({tr.max_chunk_bytes})")
    if not 0 <= tr.single_request_bytes <= chunk_hard_max:
        errors.append(f"transfer.single_request_bytes = {tr.single_request_bytes} must be "
                      f"between 0 and {chunk_hard_max} (what a receiver takes "
                      "in one request)")
    if not (tr.frame_bytes == 0 or 1024 <= tr.frame_bytes <= chunk_hard_max):
        errors.append(f"transfer.frame_bytes = {tr.frame_bytes} must be 0 (no pipelining) or "
                      f"between 1024 and {chunk_hard_max}")
    check_reading(cfg, errors)
    if cfg.log.level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        errors.append(f"log.level = {cfg.log.level!r} is not DEBUG, INFO, WARNING or ERROR")


def check_reading(cfg: Any, errors: list[str]) -> None:
    if not 0 <= cfg.web.port <= 65535:
        errors.append(f"web.port = {cfg.web.port} is outside 0-65535")
    for name in ("session_idle_s", "session_max_s"):
        v = getattr(cfg.web, name)
        if not (v > 0 and math.isfinite(v)):
            errors.append(f"web.{name} = {v} must be a finite number > 0")
    if cfg.web.max_sessions < 1:
        errors.append(f"web.max_sessions = {cfg.web.max_sessions} must be >= 1")
    for i, origin in enumerate(cfg.web.cors_origins):
        if not re.fullmatch(r"https?://[^/\s*]+", origin):
            errors.append(f"web.cors_origins[{i}] = {origin!r} is not an origin like "
                          f"'https://viewer.example:8443' (no path, no wildcard)")
    if cfg.node.timezone:
        try:
            from zoneinfo import ZoneInfo

            ZoneInfo(cfg.node.timezone)
        except (KeyError, ValueError, OSError):
            errors.append(f"node.timezone = {cfg.node.timezone!r} is not an IANA time zone "
                          "(e.g. \"Asia/Shanghai\")")
    if cfg.http.tls and cfg.web.port == 0 and cfg.users:
        # With mutual TLS on [http], only peers holding a pinned certificate get
        # in; people and viewers have none and would be locked out entirely.
        errors.append("http.tls = true with no [web] listener (web.port = 0) would lock "
                      f"every user ({', '.join(u.name for u in cfg.users)}) out, "
                      "/api/health included: set web.port for people and viewers")
    if cfg.reading.claim_ttl_s <= 0:
        errors.append(f"reading.claim_ttl_s = {cfg.reading.claim_ttl_s} must be > 0")
    if cfg.reports.return_priority not in ("stat", "urgent", "routine"):
        errors.append(f"reports.return_priority = {cfg.reports.return_priority!r} is not "
                      "stat, urgent or routine")
    if cfg.reports.deliver_to and cfg.egress_target(cfg.reports.deliver_to) is None:
        errors.append(f"reports.deliver_to = {cfg.reports.deliver_to!r} is not an [[egress]] "
                      f"name ({', '.join(e.name for e in cfg.egress) or 'none configured'})")
    _unique_names(errors, "users", cfg.users)
    tokens = [u.token_sha256 for u in cfg.users]
    for i, u in enumerate(cfg.users):
        if u.role not in USER_ROLES:
            errors.append(f"users[{i}].role = {u.role!r} is not one of {', '.join(USER_ROLES)}")
        if not re.fullmatch(r"[0-9a-f]{64}", u.token_sha256):
            errors.append(f"users[{i}].token_sha256 = {u.token_sha256!r} is not 64 lowercase "
                          "hex digits (fenji user add writes it)")
        elif tokens.count(u.token_sha256) > 1:
            errors.append(f"users[{i}].token_sha256 is shared with another user")
        for j, svc in enumerate(u.services):
            if not svc:
                errors.append(f"users[{i}].services[{j}] is empty")
    for i, a in enumerate(cfg.remote_aes):
        if not (0 < len(a.ae_title.strip()) <= 16) or not a.ae_title.isascii():
            errors.append(f"remote_aes[{i}].ae_title = {a.ae_title!r} must be 1-16 ASCII "
                          "characters")
        if not a.host or not 0 < a.port < 65536:
            errors.append(f"remote_aes[{i}] ({a.ae_title!r}) needs host and port (1-65535)")
        if a.reader:
            ru = cfg.user(a.reader)
            if ru is None or ru.role != "reader":
                errors.append(f"remote_aes[{i}].reader = {a.reader!r} is not a configured user "
                              "with role reader (fenji user add NAME --role reader)")
    for i, k in enumerate(cfg.known_nodes):
        if not k.name or not k.public_key:
            errors.append(f"known_nodes[{i}] needs name and public_key (PEM path or 64 hex)")
    _unique_names(errors, "services", cfg.services)
    for i, s in enumerate(cfg.services):
        if s.price < 0:
            errors.append(f"services[{i}].price = {s.price} must be >= 0")
        if not 0 <= s.inviting_share <= 1:
            errors.append(f"services[{i}].inviting_share = {s.inviting_share} is outside 0-1")
