"""``store.blob_url``: where a store keeps its blobs (checked when the config loads).

Empty is the store folder's ``blobs/``; ``s3://bucket/prefix?endpoint=…&region=…``
an S3-compatible bucket (gateway/store/blobs.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

from fenji.gateway.errors import ConfigError

_BUCKET = re.compile(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]")
_URL_KEYS = ("endpoint", "region", "addressing", "checksum")


@dataclass(frozen=True, slots=True)
class S3Url:
    """``s3://bucket/prefix?endpoint=…&region=…&addressing=path|virtual&checksum=sha256|md5``."""

    bucket: str
    prefix: str  # "" or ending in "/"
    endpoint: str | None
    region: str | None
    addressing: str
    checksum: str  # "sha256": Content-MD5 and x-amz-checksum-sha256; "md5": Content-MD5 only


def parse_blob_url(url: str, *, key: str = "store.blob_url") -> S3Url | None:
    """``None`` for the local folder (``""``), an :class:`S3Url`, or ConfigError naming the key."""
    if not url.strip():
        return None
    parts = urlsplit(url.strip())
    if parts.scheme != "s3":
        raise ConfigError([f"{key} = {url!r}: only s3://bucket/prefix (or empty, for the "
                           "local blob folder) is supported"])
    if not _BUCKET.fullmatch(parts.netloc or "") or ".." in parts.netloc:
        raise ConfigError([f"{key} = {url!r}: bucket {parts.netloc!r} is not a valid bucket "
                           "name (3-63 lower-case letters, digits, '.' and '-')"])
    prefix = parts.path.strip("/")
    if any(seg in ("", ".", "..") for seg in prefix.split("/")) and prefix:
        raise ConfigError([f"{key} = {url!r}: prefix {prefix!r} has an empty, '.' or '..' "
                           "segment"])
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    for k in query:
        if k not in _URL_KEYS:
            raise ConfigError([f"{key} = {url!r}: unknown parameter {k!r} (known: "
                               f"{', '.join(_URL_KEYS)})"])
    endpoint = query.get("endpoint") or None
    if endpoint is not None:
        ep = urlsplit(endpoint)
        if ep.scheme not in ("http", "https") or not ep.hostname:
            raise ConfigError([f"{key} = {url!r}: endpoint {endpoint!r} is not an http(s) URL"])
    addressing = query.get("addressing") or ("path" if endpoint else "virtual")
    if addressing not in ("path", "virtual"):
        raise ConfigError([f"{key} = {url!r}: addressing {addressing!r} is not 'path' or "
                           "'virtual'"])
    checksum = query.get("checksum") or "sha256"
    if checksum not in ("sha256", "md5"):
        raise ConfigError([f"{key} = {url!r}: checksum {checksum!r} is not 'sha256' or 'md5'"])
    return S3Url(parts.netloc, prefix + "/" if prefix else "", endpoint,
                 query.get("region") or None, addressing, checksum)
