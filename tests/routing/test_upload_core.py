"""The upload protocol's sans-I/O core: offset, checksum, length and state rules."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fenji.routing import upload
from fenji.routing.upload import (
    COMPLETE,
    RECEIVING,
    REJECTED,
    Finalize,
    Refuse,
    SendChunk,
    UploadClient,
)


def sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def test_transition_table_sets_states_and_refuses_the_rest() -> None:
    assert upload.transition(RECEIVING, "append") == RECEIVING
    assert upload.transition(RECEIVING, "finalize") == COMPLETE
    assert upload.transition(RECEIVING, "reject") == REJECTED
    for state in (COMPLETE, REJECTED):
        for event in ("append", "finalize", "reject"):
            with pytest.raises(upload.TransitionError, match=state):
                upload.transition(state, event)


@pytest.mark.parametrize("bundle_id,length,error", [
    ("", "10", "bad_bundle_id"), ("a/b", "10", "bad_bundle_id"),
    ("x" * 65, "10", "bad_bundle_id"), ("ok", "ten", "bad_length"), ("ok", "0", "bad_length"),
    ("ok", str((1 << 40) + 1), "bad_length"),
])
def test_create_refuses_bad_headers_naming_the_value(bundle_id: str, length: str,
                                                     error: str) -> None:
    r = upload.check_create(bundle_id, length)
    assert isinstance(r, Refuse) and r.status == 400 and r.error == error
    assert (bundle_id[:20] in r.message) if error == "bad_bundle_id" else (length[:20] in r.message)


def test_create_accepts_and_existing_length_must_match() -> None:
    assert upload.check_create("abc-1_2", "1000") == 1000
    assert upload.check_existing("b", 1000, 1000) is None
    r = upload.check_existing("b", 1000, 999)
    assert isinstance(r, Refuse) and r.status == 409 and "1000" in r.message


def test_append_needs_the_stored_offset() -> None:
    assert upload.check_append(RECEIVING, 100, "100", 10) == 100
    r = upload.check_append(RECEIVING, 100, "90", 10)
    assert isinstance(r, Refuse) and r.status == 409 and r.with_offset
    r = upload.check_append(COMPLETE, 100, "100", 10)
    assert isinstance(r, Refuse) and r.error == "complete"
    r = upload.check_append(RECEIVING, 0, "x", 10)
    assert isinstance(r, Refuse) and r.status == 400 and "'x'" in r.message
    r = upload.check_append(RECEIVING, 0, "0", upload.MAX_CHUNK_BYTES + 1)
    assert isinstance(r, Refuse) and r.status == 413


def test_chunk_checksum_and_length() -> None:
    data = b"abc" * 10
    assert upload.check_chunk(0, 30, data, sha(data)) is None
    r = upload.check_chunk(0, 30, data, sha(b"other"))
    assert isinstance(r, Refuse) and r.status == upload.CHECKSUM_MISMATCH
    r = upload.check_chunk(10, 30, data, sha(data))
    assert isinstance(r, Refuse) and r.error == "beyond_length" and "40" in r.message


def test_checksum_header_round_trip_and_refusals() -> None:
    h = upload.checksum_header(b"hello")
    assert upload.parse_checksum(h) == sha(b"hello")
    for bad in ("md5 AAAA", "sha256 !!!", "nothing"):
        r = upload.parse_checksum(bad)
        assert isinstance(r, Refuse) and r.error == "bad_checksum"


def test_finalize_rules() -> None:
    assert upload.check_finalize(RECEIVING, 10, 10) == "ingest"
    assert upload.check_finalize(COMPLETE, 10, 10) == "receipt"
    r = upload.check_finalize(RECEIVING, 5, 10)
    assert isinstance(r, Refuse) and r.error == "incomplete" and r.with_offset
    r = upload.check_finalize(REJECTED, 10, 10)
    assert isinstance(r, Refuse) and r.status == 422


def test_an_abandoned_upload_refuses_writes_with_410_and_only_reopens() -> None:
    """Given up (routing/reaper.py): a late PATCH, frame or finalize gets 410, which the
    sender retries with a create (that reopens it); it goes nowhere else."""
    assert upload.transition(RECEIVING, "abandon") == upload.ABANDONED
    assert upload.transition(upload.ABANDONED, "reopen") == RECEIVING
    for event in ("append", "finalize", "reject", "abandon"):
        with pytest.raises(upload.TransitionError, match=upload.ABANDONED):
            upload.transition(upload.ABANDONED, event)
    for r in (upload.check_append(upload.ABANDONED, 0, "0", 10),
              upload.check_finalize(upload.ABANDONED, 0, 10),
              upload.check_frame(upload.ABANDONED, 0, 10, 0, 10),
              upload.check_whole(upload.ABANDONED, 0, 3, b"abc", sha(b"abc"))):
        assert isinstance(r, Refuse) and r.status == 410 and r.error == "upload_abandoned"
        assert "limits.abandoned_upload_s" in r.message


def test_whole_bundle_in_one_request() -> None:
    data = b"x" * 50
    assert upload.check_whole(RECEIVING, 0, 50, data, sha(data)) == "write"
    assert upload.check_whole(RECEIVING, 50, 50, data, sha(data)) == "ingest"
    assert upload.check_whole(COMPLETE, 50, 50, b"", b"") == "receipt"
    r = upload.check_whole(RECEIVING, 0, 50, data[:40], sha(data[:40]))
    assert isinstance(r, Refuse) and r.error == "not_whole"
    r = upload.check_whole(RECEIVING, 0, 50, data, sha(b"y"))
    assert isinstance(r, Refuse) and r.status == upload.CHECKSUM_MISMATCH
    r = upload.check_whole(REJECTED, 50, 50, data, sha(data))
    assert isinstance(r, Refuse) and r.status == 422


def test_frames() -> None:
    data = b"frame data"
    off, n, digest = upload.parse_frame_header(upload.frame_header(123, data))
    assert (off, n, digest) == (123, len(data), sha(data))
    assert upload.check_frame(RECEIVING, 123, 200, 123, n) is None
    r = upload.check_frame(RECEIVING, 100, 200, 123, n)
    assert isinstance(r, Refuse) and r.error == "offset_mismatch"
    r = upload.check_frame(RECEIVING, 195, 200, 195, n)
    assert isinstance(r, Refuse) and r.error == "beyond_length"
    r = upload.check_frame(RECEIVING, 0, 200, 0, 0)
    assert isinstance(r, Refuse) and r.error == "bad_frame"
    r = upload.check_frame(COMPLETE, 0, 200, 0, 5)
    assert isinstance(r, Refuse) and r.error == "complete"


@given(total=st.integers(1, 10_000), start=st.integers(0, 10_000),
       sizes=st.lists(st.integers(1, 3000), min_size=1, max_size=50))
def test_client_covers_every_byte_once_from_any_resume_point(total: int, start: int,
                                                            sizes: list[int]) -> None:
    c = UploadClient(total)
    c.created(min(start, total), RECEIVING)
    covered = min(start, total)
    i = 0
    while isinstance(step := c.next_action(sizes[i % len(sizes)]), SendChunk):
        assert step.offset == covered and 0 < step.n <= total - covered
        covered += step.n
        c.acked(covered)
        i += 1
    assert isinstance(step, Finalize) and covered == total


def test_client_refuses_offsets_that_go_backwards_or_past_the_end() -> None:
    c = UploadClient(100)
    c.created(50, RECEIVING)
    with pytest.raises(ValueError, match="40"):
        c.acked(40)
    with pytest.raises(ValueError, match="101"):
        c.acked(101)
    with pytest.raises(ValueError, match="200"):
        c.created(200, RECEIVING)
    c.created(10, COMPLETE)  # finalized already (a lost answer): finalize again
    assert isinstance(c.next_action(10), Finalize)


def test_receipt_problems_are_named() -> None:
    manifest = {"instances": [{"index": 0, "sha256": "a"}, {"index": 1, "sha256": "b"}]}
    good = {"receiver": "center", "bundle_id": "B", "bundle_sha256": "H",
            "instances": [{"index": 0, "sha256": "a"}, {"index": 1, "sha256": "b"}]}
    kw = {"receiver": "center", "bundle_id": "B", "bundle_sha256": "H", "manifest": manifest}
    assert upload.receipt_problem(good, **kw) is None  # type: ignore[arg-type]
    assert "relay" in (upload.receipt_problem({**good, "receiver": "relay"}, **kw)  # type: ignore[arg-type]
                       or "")
    assert "bundle_sha256" in (upload.receipt_problem({**good, "bundle_sha256": "X"}, **kw)  # type: ignore[arg-type]
                               or "")
    short = {**good, "instances": [{"index": 0, "sha256": "a"}]}
    assert "[1]" in (upload.receipt_problem(short, **kw) or "")  # type: ignore[arg-type]


def test_one_request_limit_is_the_configs() -> None:
    from fenji.gateway import config
    from fenji.gateway.errors import ConfigError

    assert upload.MAX_CHUNK_BYTES == config.TRANSFER_CHUNK_HARD_MAX_BYTES
    over = config.TRANSFER_CHUNK_HARD_MAX_BYTES + 1
    with pytest.raises(ConfigError, match=f"transfer.frame_bytes = {over}"):
        config.from_mapping({"dicom": {"allow_ae": ["CT1"]}, "transfer": {"frame_bytes": over}},
                            env={})


def test_deferred_length_rules() -> None:
    """tus Upload-Defer-Length: created without a length, nothing finalizes until an
    empty frame at the end (or a later create's length) declares it."""
    d = upload.DEFERRED
    assert upload.check_create("b1", "", "1") == d
    assert isinstance(upload.check_create("b1", "", "2"), Refuse)
    assert isinstance(upload.check_create("b1", "", ""), Refuse)  # neither: refused
    assert isinstance(upload.check_create("b1", "0", ""), Refuse)  # 0 is not a length
    # frames go on beyond any length while deferred; an empty frame ends it (not at 0)
    assert upload.check_frame(RECEIVING, 10, d, 10, 5) is None
    assert upload.check_frame(RECEIVING, 10, d, 10, 0) is None
    assert isinstance(upload.check_frame(RECEIVING, 0, d, 0, 0), Refuse)
    assert isinstance(upload.check_frame(RECEIVING, 10, 20, 10, 0), Refuse)  # declared
    assert isinstance(upload.check_frame(RECEIVING, 10, d, 9, 0), Refuse)  # not the offset
    ref = upload.check_finalize(RECEIVING, 10, d)
    assert isinstance(ref, Refuse) and ref.error == "length_deferred" and ref.with_offset
    # a create again: deferred resumes any; a length declares it unless bytes lie beyond
    assert upload.check_existing("b1", d, d, 10) is None
    assert upload.check_existing("b1", 20, d, 10) is None
    assert upload.check_existing("b1", d, 20, 10) is None
    assert isinstance(upload.check_existing("b1", d, 5, 10), Refuse)
    assert isinstance(upload.check_existing("b1", 20, 21, 10), Refuse)
    assert upload.offset_headers("u", 10, d, RECEIVING)[upload.DEFER_HEADER] == "1"
    c = UploadClient(None)
    c.created(offset=0, state=RECEIVING)
    assert c.next_action(chunk_bytes=4) == SendChunk(0, 4)
    c.acked(7)
    c.declared(9)
    assert c.next_action(chunk_bytes=4) == SendChunk(7, 2)
    c.acked(9)
    assert c.next_action(chunk_bytes=4) == Finalize()
    with pytest.raises(ValueError):
        UploadClient(None).declared(0)
