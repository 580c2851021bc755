"""The bundle: one case's instances, encoded, in a streamable, resumable byte format.

Spec: ``codecs/BUNDLE.md``.  Sans-I/O: the writer yields bytes, the reader is
fed bytes; neither touches files or sockets.

Sender::

    plan = plan_bundle(case, [part10, ...], previews=[make_preview(part10)])
    plan.size, plan.manifest            # known before the first byte is sent
    for chunk in plan.iter_bytes(start=offset_acknowledged_by_peer):
        send(chunk)

Receiver::

    reader = BundleReader()
    for chunk in received_chunks:
        for event in reader.feed(chunk):
            ...  # ManifestEvent, PreviewEvent, InstanceEvent (verified part-10 bytes), EndEvent
    reader.close()                      # DecodeError if the bundle is incomplete

>>> plan = plan_bundle({"case": "c1"}, [b"not DICOM"])
>>> manifest, previews, instances = read_bundle(plan.to_bytes())
>>> manifest["case"], instances
({'case': 'c1'}, [b'not DICOM'])
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import struct
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from fenji.codecs.compress.instance import (
    decode_instance,
    encode_instance,
    instance_info,
    reference_id,
    series_uid,
)
from fenji.codecs.compress.pixel import pixel_decode, pixel_encode
from fenji.codecs.compress.waveform import waveform_decode, waveform_encode
from fenji.codecs.errors import DecodeError
from fenji.codecs.image import sandbox
from fenji.codecs.image.codestream import dataset_codestream_mismatch

MAGIC = b"FJBU"
VERSION = 1  # what plan_bundle writes: every offset in the manifest
STREAM_VERSION = 2  # what stream_bundle writes: encoded while it is sent (BUNDLE.md)
VERSIONS = (1, 2)
FORMAT = "fenji-bundle"
_START = struct.Struct("<4sB3x")  # magic, version
_SEC = struct.Struct("<4sIQII")  # kind, index, payload length, payload CRC-32, header CRC-32
MANIFEST, PREVIEW, INSTANCE, END = b"MANI", b"PREV", b"INST", b"END."
KIND_NAMES = {MANIFEST: "manifest", PREVIEW: "preview", INSTANCE: "instance", END: "end"}
MAX_MANIFEST = 64 << 20
MAX_SECTION = 1 << 34


@dataclass(frozen=True)
class Preview:
    """A small lossless preview: ``kind`` "image" (8-bit) or "ecg" (int16 strip)."""

    kind: str
    meta: dict[str, Any]
    data: bytes  # pixel_encode / waveform_encode output

    def array(self, *, max_pixels: int = 4096 * 4096) -> np.ndarray:
        """The preview samples: (rows, cols[, 3]) uint8 image or (n, 1) int16 strip.

        An image preview declaring more than ``max_pixels`` samples raises
        DecodeError unread (a preview is a downsampled key image, never a bomb).
        """
        if self.kind == "image":
            return pixel_decode(self.data, max_pixels=max_pixels)
        return waveform_decode(self.data)

    def to_bytes(self) -> bytes:
        head = json.dumps({"kind": self.kind, "meta": self.meta}, sort_keys=True).encode()
        return struct.pack("<I", len(head)) + head + self.data

    @classmethod
    def from_bytes(cls, buf: bytes) -> Preview:
        try:
            (n,) = struct.unpack_from("<I", buf)
            head = json.loads(buf[4:4 + n])
            return cls(str(head["kind"]), dict(head["meta"]), bytes(buf[4 + n:]))
        except (struct.error, ValueError, KeyError, TypeError) as exc:
            raise DecodeError(f"preview section unreadable: {exc}") from None


@dataclass(frozen=True)
class SectionInfo:
    """Where a section sits: ``offset`` of its 24-byte header, ``size`` header included."""

    kind: str
    index: int
    offset: int
    size: int


@dataclass(frozen=True)
class BundlePlan:
    """A bundle fully laid out in memory: manifest, section offsets, total size."""

    manifest: dict[str, Any]
    sections: tuple[SectionInfo, ...]
    size: int
    _blobs: tuple[bytes, ...] = field(repr=False)

    def iter_bytes(self, start: int = 0, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """The bundle's bytes from ``start`` on (resume a transfer at any offset)."""
        if not 0 <= start <= self.size:
            raise ValueError(f"start = {start} outside the bundle (size {self.size})")
        pos = 0
        for blob in self._blobs:
            end = pos + len(blob)
            if end > start:
                lo = max(start - pos, 0)
                for i in range(lo, len(blob), chunk_size):
                    yield blob[i:i + chunk_size]
            pos = end

    def to_bytes(self) -> bytes:
        return b"".join(self._blobs)


def _section(kind: bytes, index: int, payload: bytes) -> bytes:
    head = struct.pack("<4sIQI", kind, index, len(payload), zlib.crc32(payload))
    return head + struct.pack("<I", zlib.crc32(head)) + payload


def choose_references(instances: Sequence[bytes]) -> list[int | None]:
    """The reference of each instance in a bundle: the first earlier instance of the
    same series (by Series Instance UID), or None.  A key instance never has one,
    so decoding any instance needs at most one other."""
    first: dict[str, int] = {}
    refs: list[int | None] = []
    for i, inst in enumerate(instances):
        uid = series_uid(inst)
        refs.append(first.get(uid) if uid else None)
        if uid and uid not in first:
            first[uid] = i
    return refs


def plan_bundle(case: dict[str, Any], instances: Iterable[bytes],
                previews: Sequence[Preview | None] = (), *, effort: str = "fast",
                encoded: Sequence[bytes | None] | None = None,
                series_reference: bool = True) -> BundlePlan:
    """Encode ``instances`` (Part-10 bytes) and lay out the bundle.

    ``case`` is any JSON-able dict (case id, priority, attestation ...).
    ``encoded`` may hold already-encoded instances (same order, None = encode);
    one encoded with a reference must use the one :func:`choose_references` picks.
    With ``series_reference`` each instance's header is coded against the first
    instance of its series (``reference`` in the manifest).
    """
    originals = list(instances)
    refs = choose_references(originals) if series_reference else [None] * len(originals)
    given = [(encoded[i] if encoded is not None and i < len(encoded) else None)
             for i in range(len(originals))]
    encs: list[bytes] = []
    for i, (e, o) in enumerate(zip(given, originals, strict=True)):
        r = refs[i]
        if e is None:
            encs.append(encode_instance(o, effort=effort,
                                        reference=originals[r] if r is not None else None))
            continue
        used = instance_info(e)["reference_blake2b"]
        if used is None:
            refs[i] = None
        elif r is None or reference_id(originals[r]) != used:
            raise ValueError(f"pre-encoded instance {i} was encoded against a reference "
                             "other than choose_references() picks")
        encs.append(e)
    prevs = [p for p in previews if p is not None]
    prev_blobs = [_section(PREVIEW, i, p.to_bytes()) for i, p in enumerate(prevs)]
    inst_blobs = [_section(INSTANCE, i, e) for i, e in enumerate(encs)]
    start = _START.pack(MAGIC, VERSION)
    mlen = 0
    manifest: dict[str, Any] = {}
    mblob = b""
    for _ in range(8):  # offsets depend on the manifest's own length: iterate to a fixed point
        pos = len(start) + _SEC.size + mlen
        pinfo = []
        for i, (p, blob) in enumerate(zip(prevs, prev_blobs, strict=True)):
            pinfo.append({"index": i, "kind": p.kind, "offset": pos, "size": len(blob),
                          "meta": p.meta})
            pos += len(blob)
        iinfo = []
        for i, (o, e, blob) in enumerate(zip(originals, encs, inst_blobs, strict=True)):
            info = instance_info(e)
            entry = {"index": i, "sha256": hashlib.sha256(o).hexdigest(), "size": len(o),
                     "encoded_size": len(e), "offset": pos,
                     "codecs": [p["codec"] for p in info["payloads"]] or ["header"]}
            if refs[i] is not None:
                entry["reference"] = refs[i]
            iinfo.append(entry)
            pos += len(blob)
        manifest = {"format": FORMAT, "version": VERSION, "effort": effort, "case": case,
                    "previews": pinfo, "instances": iinfo, "end_offset": pos}
        try:
            body = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
        except (TypeError, ValueError) as exc:
            raise ValueError(f"case metadata is not JSON-able: {exc}") from None
        if len(body) == mlen or (len(body) < mlen and _ > 2):
            mblob = body + b" " * (mlen - len(body))
            break
        mlen = len(body)
    else:  # pragma: no cover - the padding rule above always terminates
        raise RuntimeError("bundle manifest offsets did not converge")
    head = start + _section(MANIFEST, 0, mblob)
    body_blobs = [head, *prev_blobs, *inst_blobs]
    digest = hashlib.sha256()
    for b in body_blobs:
        digest.update(b)
    n_sections = 1 + len(prev_blobs) + len(inst_blobs)
    end_payload = json.dumps({"sections": n_sections, "sha256": digest.hexdigest()},
                             sort_keys=True).encode()
    blobs = (*body_blobs, _section(END, 0, end_payload))
    sections = [SectionInfo("manifest", 0, len(start), len(head) - len(start))]
    pos = len(head)
    for i, b in enumerate(prev_blobs):
        sections.append(SectionInfo("preview", i, pos, len(b)))
        pos += len(b)
    for i, b in enumerate(inst_blobs):
        sections.append(SectionInfo("instance", i, pos, len(b)))
        pos += len(b)
    sections.append(SectionInfo("end", 0, pos, len(blobs[-1])))
    return BundlePlan(manifest, tuple(sections), pos + len(blobs[-1]), blobs)


def write_bundle(case: dict[str, Any], instances: Iterable[bytes],
                 previews: Sequence[Preview | None] = (), *,
                 effort: str = "fast") -> Iterator[bytes]:
    """The bundle's bytes, chunk by chunk (``plan_bundle(...).iter_bytes()``)."""
    return plan_bundle(case, instances, previews, effort=effort).iter_bytes()


@dataclass(frozen=True)
class StreamedBundle:
    """A version-2 bundle: its manifest is known before any instance is encoded, and
    :meth:`iter_bytes` encodes each instance as the stream reaches it (BUNDLE.md)."""

    manifest: dict[str, Any]
    _head: bytes = field(repr=False)
    _previews: tuple[bytes, ...] = field(repr=False)
    _originals: tuple[bytes, ...] = field(repr=False)
    _refs: tuple[int | None, ...] = field(repr=False)
    effort: str = "fast"

    def iter_bytes(self) -> Iterator[bytes]:
        """Start and manifest, previews, then one section per instance, encoded as it
        is reached, then the END trailer (the SHA-256 of everything before it)."""
        digest = hashlib.sha256()
        n = 0  # sections: the manifest (in the head, after the start), previews, instances
        for blob in (self._head, *self._previews):
            digest.update(blob)
            n += 1
            yield blob
        for i, o in enumerate(self._originals):
            r = self._refs[i]
            enc = encode_instance(o, effort=self.effort,
                                  reference=self._originals[r] if r is not None else None)
            blob = _section(INSTANCE, i, enc)
            digest.update(blob)
            n += 1
            yield blob
        yield _section(END, 0, json.dumps({"sections": n, "sha256": digest.hexdigest()},
                                          sort_keys=True).encode())

    def to_bytes(self) -> bytes:
        return b"".join(self.iter_bytes())


def stream_bundle(case: dict[str, Any], instances: Iterable[bytes],
                  previews: Sequence[Preview | None] = (), *, effort: str = "fast",
                  series_reference: bool = True) -> StreamedBundle:
    """A version-2 bundle of ``instances`` (Part-10 bytes), not yet encoded: its
    manifest holds what is known before encoding (each instance's SHA-256, size and
    reference), so the manifest's hash and the first bytes exist at once."""
    originals = tuple(instances)
    refs = tuple(choose_references(originals) if series_reference
                 else [None] * len(originals))
    prevs = [p for p in previews if p is not None]
    iinfo: list[dict[str, Any]] = []
    for i, o in enumerate(originals):
        entry: dict[str, Any] = {"index": i, "sha256": hashlib.sha256(o).hexdigest(),
                                 "size": len(o)}
        if refs[i] is not None:
            entry["reference"] = refs[i]
        iinfo.append(entry)
    manifest = {"format": FORMAT, "version": STREAM_VERSION, "effort": effort, "case": case,
                "previews": [{"index": i, "kind": p.kind, "meta": p.meta}
                             for i, p in enumerate(prevs)],
                "instances": iinfo}
    try:
        body = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    except (TypeError, ValueError) as exc:
        raise ValueError(f"case metadata is not JSON-able: {exc}") from None
    head = _START.pack(MAGIC, STREAM_VERSION) + _section(MANIFEST, 0, body)
    return StreamedBundle(manifest, head,
                          tuple(_section(PREVIEW, i, p.to_bytes()) for i, p in enumerate(prevs)),
                          originals, refs, effort)


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class ManifestEvent:
    manifest: dict[str, Any]
    offset: int


@dataclass(frozen=True)
class PreviewEvent:
    index: int
    preview: Preview
    offset: int


@dataclass(frozen=True)
class InstanceEvent:
    """A decoded instance whose SHA-256 matched the manifest."""

    index: int
    data: bytes
    sha256: str
    offset: int


@dataclass(frozen=True)
class EndEvent:
    offset: int
    size: int


Event = ManifestEvent | PreviewEvent | InstanceEvent | EndEvent


class BundleReader:
    """Incremental bundle parser: ``feed(chunk) -> [events]``, then ``close()``.

    Every section is CRC-checked, every instance decoded and checked against the
    manifest's SHA-256 before its event is produced, and the trailer's SHA-256
    covers the whole stream; any inconsistency raises DecodeError.  Instances in
    ``skip`` (indices already stored, e.g. after a restart) are checked but not
    decoded and produce no event.
    """

    def __init__(self, *, skip: Iterable[int] = ()) -> None:
        self._buf = bytearray()
        self._offset = 0  # absolute offset of _buf[0]
        self._started = False
        self._version = 0
        self._manifest: dict[str, Any] | None = None
        self._next_preview = 0
        self._next_instance = 0
        self._done = False
        self._sha = hashlib.sha256()
        self._sections = 0
        self._skip = frozenset(skip)
        self._needed: set[int] = set()  # indices other instances reference
        self._kept: dict[int, bytes] = {}

    @property
    def offset(self) -> int:
        """Bytes consumed so far (fully processed sections)."""
        return self._offset

    @property
    def complete(self) -> bool:
        return self._done

    @property
    def manifest(self) -> dict[str, Any] | None:
        return self._manifest

    def feed(self, chunk: bytes) -> list[Event]:
        if self._done:
            if chunk:
                raise DecodeError(f"{len(chunk)} bytes after the end of the bundle")
            return []
        self._buf += chunk
        events: list[Event] = []
        while True:
            ev = self._step()
            if ev is None:
                break
            if not isinstance(ev, bool):
                events.append(ev)
            if self._done:
                if self._buf:
                    raise DecodeError(f"{len(self._buf)} bytes after the end of the bundle")
                break
        return events

    def close(self) -> None:
        if not self._done:
            raise DecodeError(f"bundle truncated: {self._offset + len(self._buf)} bytes read, "
                              "no end section")

    def _consume(self, n: int) -> bytes:
        out = bytes(self._buf[:n])
        del self._buf[:n]
        self._offset += n
        return out

    def _step(self) -> Event | Literal[True] | None:
        if not self._started:
            if len(self._buf) < _START.size:
                return None
            magic, version = _START.unpack_from(self._buf)
            if magic != MAGIC:
                raise DecodeError(f"bundle magic {magic!r} != {MAGIC!r}")
            if version not in VERSIONS:
                raise DecodeError(f"bundle version {version} is not supported "
                                  f"(known: {', '.join(map(str, VERSIONS))})")
            self._version = version
            self._sha.update(self._consume(_START.size))
            self._started = True
            return True
        if len(self._buf) < _SEC.size:
            return None
        kind, index, length, pcrc, hcrc = _SEC.unpack_from(self._buf)
        if zlib.crc32(bytes(self._buf[:_SEC.size - 4])) != hcrc:
            raise DecodeError(f"bundle section header at offset {self._offset} is corrupt")
        if kind not in KIND_NAMES:
            raise DecodeError(f"bundle section kind {kind!r} at offset {self._offset} unknown")
        limit = MAX_MANIFEST if kind in (MANIFEST, END) else MAX_SECTION
        if length > limit:
            raise DecodeError(f"bundle section {kind!r} declares {length} bytes (limit {limit})")
        self._check_order(kind, index)
        if len(self._buf) < _SEC.size + length:
            return None
        offset = self._offset
        payload = bytes(self._buf[_SEC.size:_SEC.size + length])
        if zlib.crc32(payload) != pcrc:
            raise DecodeError(f"bundle {KIND_NAMES[kind]} section {index} at offset {offset}: "
                              "CRC-32 mismatch")
        if kind == END:
            self._finish(payload, offset)
            self._consume(_SEC.size + length)
            self._done = True
            return EndEvent(offset, self._offset)
        self._sha.update(self._consume(_SEC.size + length))
        self._sections += 1
        if kind == MANIFEST:
            return self._on_manifest(payload, offset)
        assert self._manifest is not None
        if kind == PREVIEW:
            self._expect_offset("previews", index, offset)
            self._next_preview += 1
            return PreviewEvent(index, Preview.from_bytes(payload), offset)
        self._expect_offset("instances", index, offset)
        self._next_instance += 1
        entry = self._manifest["instances"][index]
        if index in self._skip and index not in self._needed:
            return True
        ref_index = entry.get("reference")
        ref = self._kept.get(ref_index) if isinstance(ref_index, int) else None
        if ref_index is not None and ref is None:
            raise DecodeError(f"bundle instance {index}: reference {ref_index} not available")
        data = decode_instance(payload, reference=ref)
        sha = hashlib.sha256(data).hexdigest()
        if sha != entry.get("sha256") or len(data) != entry.get("size"):
            raise DecodeError(f"bundle instance {index}: SHA-256 {sha} does not match the "
                              f"manifest's {entry.get('sha256')}")
        if index in self._needed:
            self._kept[index] = data
        if index in self._skip:
            return True
        return InstanceEvent(index, data, sha, offset)

    def _check_order(self, kind: bytes, index: int) -> None:
        m = self._manifest
        if m is None:
            if kind != MANIFEST or index != 0:
                raise DecodeError(f"bundle must start with its manifest, found {kind!r}")
            return
        if kind == MANIFEST:
            raise DecodeError("bundle has a second manifest")
        if kind == PREVIEW and (self._next_instance or index != self._next_preview
                                or index >= len(m["previews"])):
            raise DecodeError(f"bundle preview {index} out of order")
        if kind == INSTANCE and (index != self._next_instance or index >= len(m["instances"])):
            raise DecodeError(f"bundle instance {index} out of order "
                              f"(expected {self._next_instance})")
        if kind == END and (self._next_instance != len(m["instances"])
                            or self._next_preview != len(m["previews"])):
            raise DecodeError(f"bundle ends after {self._next_instance} of "
                              f"{len(m['instances'])} instances")

    def _expect_offset(self, key: str, index: int, offset: int) -> None:
        """Version 1 only: each section where the manifest placed it (version 2's
        sections are self-delimiting; the trailer's count and digest cover them)."""
        assert self._manifest is not None
        if self._version != 1:
            return
        want = self._manifest[key][index].get("offset")
        if want != offset:
            raise DecodeError(f"bundle {key[:-1]} {index} at offset {offset}, manifest says {want}")

    def _on_manifest(self, payload: bytes, offset: int) -> ManifestEvent:
        try:
            m = json.loads(payload)
        except ValueError as exc:
            raise DecodeError(f"bundle manifest is not JSON: {exc}") from None
        if not isinstance(m, dict) or m.get("format") != FORMAT:
            raise DecodeError("bundle manifest format is not 'fenji-bundle'")
        if m.get("version") != self._version:
            raise DecodeError(f"bundle manifest version {m.get('version')!r} is not the "
                              f"stream's version {self._version}")
        if not isinstance(m.get("instances"), list) or not isinstance(m.get("previews"), list):
            raise DecodeError("bundle manifest lacks its instance/preview lists")
        for e in m["instances"] + m["previews"]:
            if not isinstance(e, dict):
                raise DecodeError("bundle manifest entry is not an object")
            if self._version == 1 and not isinstance(e.get("offset"), int):
                raise DecodeError("bundle manifest entry without an integer offset")
        for i, e in enumerate(m["instances"]):
            r = e.get("reference")
            if r is not None:
                if not isinstance(r, int) or not 0 <= r < i:
                    raise DecodeError(f"bundle instance {i}: reference {r!r} invalid")
                self._needed.add(r)
        self._manifest = m
        return ManifestEvent(m, offset)

    def _finish(self, payload: bytes, offset: int) -> None:
        try:
            t = json.loads(payload)
            n, sha = int(t["sections"]), str(t["sha256"])
        except (ValueError, KeyError, TypeError) as exc:
            raise DecodeError(f"bundle end section unreadable: {exc}") from None
        if n != self._sections or sha != self._sha.hexdigest():
            raise DecodeError(f"bundle end section at {offset}: {n} sections / digest do not "
                              f"match the {self._sections} read")
        assert self._manifest is not None
        if self._version == 1 and self._manifest.get("end_offset") != offset:
            raise DecodeError(f"bundle end at {offset}, manifest says "
                              f"{self._manifest.get('end_offset')}")


def read_bundle(data: bytes) -> tuple[dict[str, Any], list[Preview], list[bytes]]:
    """Whole-bundle convenience: (manifest, previews, instances), all verified."""
    r = BundleReader()
    events = r.feed(data)
    r.close()
    manifest: dict[str, Any] = {}
    previews: list[Preview] = []
    instances: list[bytes] = []
    for ev in events:
        if isinstance(ev, ManifestEvent):
            manifest = ev.manifest
        elif isinstance(ev, PreviewEvent):
            previews.append(ev.preview)
        elif isinstance(ev, InstanceEvent):
            instances.append(ev.data)
    return manifest, previews, instances


# --------------------------------------------------------------------------- previews


def make_preview(part10: bytes, *, max_side: int = 256, ecg_hz: int = 250,
                 ecg_seconds: float = 10.0) -> Preview | None:
    """A tiny lossless preview of one instance, or None if it has no image or ECG.

    Images: middle frame, windowed to 8 bits (Window Center/Width if present,
    else the 0.5-99.5 % range; MONOCHROME1 inverted), block-averaged to at most
    ``max_side`` pixels.  ECG: lead II (else the first channel) of the first
    multiplex group, decimated to about ``ecg_hz`` for ``ecg_seconds``.
    """
    import pydicom  # local: only previews need a full parser

    try:
        ds = pydicom.dcmread(io.BytesIO(part10), force=True)
        if "WaveformSequence" in ds:
            return _ecg_preview(ds, ecg_hz, ecg_seconds)
        if "PixelData" not in ds or dataset_codestream_mismatch(ds):
            return None  # no preview; never hand a decoder a header that lies
        arr = sandbox.pixel_array(ds)  # compressed: in a decoding child
    except Exception:  # noqa: BLE001 - a preview is optional: no preview for odd input
        return None
    from pydicom.errors import BytesLengthException

    try:
        return _image_preview(ds, arr, max_side)
    except (ValueError, TypeError, OverflowError, ArithmeticError, BytesLengthException):
        # Header values that are not numbers (a Rescale Slope of "1,0"): no preview,
        # rather than one drawn with guessed values.
        return None


def _finite(ds: Any, keyword: str, default: float | None) -> float | None:
    """The first value of a DS element as a finite float; ``default`` when absent;
    ValueError when present but not a finite number."""
    import pydicom

    v = getattr(ds, keyword, None)
    if v is None or v == "":
        return default
    x = float(v[0] if isinstance(v, pydicom.multival.MultiValue) else v)
    if not math.isfinite(x):
        raise ValueError(f"{keyword} {x} is not finite")
    return x


def _image_preview(ds: Any, arr: np.ndarray, max_side: int) -> Preview | None:
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    spp = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    if frames > 1:
        arr = arr[frames // 2]
    photo = str(getattr(ds, "PhotometricInterpretation", "")).upper()
    if photo == "PALETTE COLOR" and spp == 1 and arr.ndim == 2:
        # The stored values are indices: the picture is what the LUTs make of them.
        from pydicom.pixels import apply_color_lut

        arr = apply_color_lut(arr, ds)
        spp = 3
        white = float(np.iinfo(arr.dtype).max) if arr.dtype.kind in "ui" else 1.0
    else:
        bits = int(getattr(ds, "BitsStored", 0) or getattr(ds, "BitsAllocated", 8) or 8)
        white = float(2 ** min(max(bits, 1), 32) - 1)
    if spp == 3 and arr.ndim == 3:
        # Already RGB: pydicom's pixel_array converts YBR_FULL and YBR_FULL_422 (its
        # as_rgb default) and the JPEG 2000 decoder undoes YBR_RCT/YBR_ICT.  Converting
        # again tinted every YBR image (and YBR_RCT raised NotImplementedError).  White
        # is the largest value the samples can hold, not the brightest pixel: a dark
        # photo stays dark.
        img = arr.astype(np.float64)
        lo, hi = 0.0, white
    elif arr.ndim == 2:
        slope, icpt = _finite(ds, "RescaleSlope", 1.0), _finite(ds, "RescaleIntercept", 0.0)
        img = arr.astype(np.float64) * (slope or 1.0) + (icpt or 0.0)
        try:
            c, w = _finite(ds, "WindowCenter", None), _finite(ds, "WindowWidth", None)
        except ValueError:  # a window that is not numbers: the image's own range
            c = w = None
        if c is not None and w is not None and w > 0:
            lo, hi = c - w / 2, c + w / 2
        else:
            lo, hi = (float(v) for v in np.percentile(img, [0.5, 99.5]))
    else:
        return None
    k = max(1, -(-max(img.shape[0], img.shape[1]) // max_side))
    r, c = img.shape[0] // k * k, img.shape[1] // k * k
    if r == 0 or c == 0:
        return None
    small = img[:r, :c].reshape(r // k, k, c // k, k, *img.shape[2:]).mean(axis=(1, 3))
    scaled = (small - lo) * (255.0 / max(hi - lo, 1e-9))
    u8 = np.asarray(scaled.clip(0.0, 255.0)).round().astype(np.uint8)
    if photo == "MONOCHROME1":
        u8 = 255 - u8
    meta = {"rows": int(u8.shape[0]), "cols": int(u8.shape[1]), "scale": k,
            "sop_instance_uid": str(getattr(ds, "SOPInstanceUID", "")),
            "modality": str(getattr(ds, "Modality", ""))}
    return Preview("image", meta, pixel_encode(u8, effort="max", rct=u8.ndim == 3))


def _ecg_preview(ds: Any, ecg_hz: int, seconds: float) -> Preview | None:
    group = ds.WaveformSequence[0]
    from pydicom.waveforms import multiplex_array

    arr = multiplex_array(ds, 0, as_raw=True)
    names = []
    for ch in getattr(group, "ChannelDefinitionSequence", []):
        src = getattr(ch, "ChannelSourceSequence", [None])[0]
        names.append(str(getattr(src, "CodeMeaning", "")) if src is not None else "")
    lead = next((i for i, n in enumerate(names) if n.replace("Lead", "").strip() == "II"), 0)
    fs = float(group.SamplingFrequency)
    step = max(1, int(round(fs / ecg_hz)))
    strip = np.asarray(arr[: int(seconds * fs), lead][::step]).astype(np.int64)
    strip = strip.clip(-32768, 32767).astype("<i2")  # type: ignore[call-overload]
    meta = {"fs_hz": fs / step, "lead": names[lead] if names else "channel 0",
            "sop_instance_uid": str(getattr(ds, "SOPInstanceUID", ""))}
    return Preview("ecg", meta, waveform_encode(strip))
