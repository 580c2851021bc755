"""The strict validator: every good shared file passes, every malformed one fails."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pydicom.data
import pytest
from _data import good_files, malformed_files

from fenji.gateway.dicom import status as st
from fenji.gateway.dicom.validate import (
    Rejected,
    _Walker,
    check_dimse,
    check_part10,
    split_part10,
    valid_uid,
    with_preamble,
)

EXPECTED_STATUS = {
    "absurd-size.dcm": st.DATASET_DOES_NOT_MATCH_SOP_CLASS,
    "bad-uid-path-traversal.dcm": st.DATASET_DOES_NOT_MATCH_SOP_CLASS,
    "invalid-uid-chars.dcm": st.DATASET_DOES_NOT_MATCH_SOP_CLASS,
    "pixeldata-too-short.dcm": st.DATASET_DOES_NOT_MATCH_SOP_CLASS,
    "missing-sop-instance-uid.dcm": st.DATASET_DOES_NOT_MATCH_SOP_CLASS,
    "meta-sop-uid-mismatch.dcm": st.DATASET_DOES_NOT_MATCH_SOP_CLASS,
    "deflate-bomb.dcm": st.INSTANCE_TOO_LARGE,
}


@pytest.mark.parametrize("path", good_files(), ids=lambda p: p.name)
def test_good_shared_files_pass(path: Path) -> None:
    data = path.read_bytes()
    checked = check_part10(data)
    assert checked.part10 == data  # stored exactly as given
    assert valid_uid(checked.info.sop_instance_uid)


@pytest.mark.parametrize("path", malformed_files(), ids=lambda p: p.name)
def test_malformed_shared_files_are_rejected(path: Path) -> None:
    with pytest.raises(Rejected) as info:
        check_part10(path.read_bytes(), max_inflate_bytes=64 * 1024 * 1024)
    rej = info.value
    assert rej.status == EXPECTED_STATUS.get(path.name, st.CANNOT_UNDERSTAND), rej.reason
    assert rej.reason  # a reason a person can read


def test_dimse_path_builds_a_part10_that_rechecks() -> None:
    src = good_files()[0].read_bytes()
    meta, off = split_part10(src)
    ds = src[off:]
    checked = check_dimse(ds, meta["TransferSyntaxUID"],
                          affected_sop_class=meta["MediaStorageSOPClassUID"],
                          affected_sop_instance=meta["MediaStorageSOPInstanceUID"],
                          calling_ae="CT1")
    assert checked.part10.endswith(ds)
    again = check_part10(checked.part10)
    assert again.info.dataset_sha256 == hashlib.sha256(ds).hexdigest()
    assert again.info.sop_instance_uid == meta["MediaStorageSOPInstanceUID"]


def test_dimse_uid_mismatch_with_request_is_refused() -> None:
    src = good_files()[0].read_bytes()
    meta, off = split_part10(src)
    with pytest.raises(Rejected) as info:
        check_dimse(src[off:], meta["TransferSyntaxUID"],
                    affected_sop_class=meta["MediaStorageSOPClassUID"],
                    affected_sop_instance="1.2.3.4")
    assert info.value.status == st.DATASET_DOES_NOT_MATCH_SOP_CLASS


def test_truncation_at_every_point_never_passes_silently() -> None:
    """A data set cut anywhere is rejected (or, cut exactly between elements
    before Pixel Data, still fails the pixel or Type 1 checks): never accepted
    as a different, shorter image."""
    src = good_files()[0].read_bytes()
    meta, off = split_part10(src)
    ds = src[off:]
    for cut in range(0, len(ds) - 1, max(1, len(ds) // 400)):
        try:
            check_dimse(ds[:cut], meta["TransferSyntaxUID"],
                        affected_sop_class=meta["MediaStorageSOPClassUID"],
                        affected_sop_instance=meta["MediaStorageSOPInstanceUID"])
        except Rejected:
            continue
        raise AssertionError(f"data set truncated at {cut} of {len(ds)} bytes was accepted")


def test_an_image_cut_just_before_its_pixel_data_is_refused() -> None:
    """Cut exactly at the (7FE0,0010) element every other element is whole: the
    data set parses, and only the image rule can tell it is not an image any more."""
    cut_images = 0
    for path in good_files():
        data = path.read_bytes()
        meta, off = split_part10(data)
        ts = meta["TransferSyntaxUID"]
        if ts == "1.2.840.10008.1.2.1.99":  # deflated: no byte offset to cut at
            continue
        ds = data[off:]
        w = _Walker(ds, ts != "1.2.840.10008.1.2", ts != "1.2.840.10008.1.2.2", ts)
        w.walk(0, len(ds), 0, top=True)
        if w.pixel is None:
            continue
        value_at = w.pixel[0]  # the value's first byte (native or encapsulated)
        tag = b"\xe0\x7f\x10\x00" if ts != "1.2.840.10008.1.2.2" else b"\x7f\xe0\x00\x10"
        start = ds.rfind(tag, 0, value_at)
        assert start >= 0 and value_at - start in (8, 12), path.name
        with pytest.raises(Rejected) as info:
            check_part10(data[:off + start])
        assert info.value.status == st.DATASET_DOES_NOT_MATCH_SOP_CLASS
        assert "Pixel Data missing" in info.value.reason, info.value.reason
        cut_images += 1
    assert cut_images >= 3


def test_pydicom_test_files_pass_or_are_rejected_cleanly() -> None:
    """pydicom ships deliberately odd files: each gives a result or a typed error."""
    accepted = rejected = 0
    # The files shipped in the wheel (get_testdata_files would try to download more).
    folder = Path(pydicom.data.__file__).parent / "test_files"
    for path in sorted(folder.glob("*.dcm")):
        data = path.read_bytes()
        try:
            check_part10(data, max_inflate_bytes=64 * 1024 * 1024)
            accepted += 1
        except Rejected as exc:
            assert exc.reason
            rejected += 1
    assert accepted > rejected  # most of pydicom's files are well-formed


def test_file_meta_without_preamble_gets_one_and_the_same_data_set() -> None:
    path = good_files()[0]
    data = path.read_bytes()
    assert data[128:132] == b"DICM"
    want = check_part10(data).info
    for bare in (data[132:], data[128:]):  # meta group alone; "DICM" + meta
        fixed = with_preamble(bare)
        assert fixed[:128] == bytes(128) and fixed[128:] == data[128:]
        assert check_part10(fixed).info == want
    assert with_preamble(data) is data
    junk = b"\x08\x00\x05\x00CS\x0a\x00ISO_IR 100"  # a data set with no meta at all
    assert with_preamble(junk) == junk
    with pytest.raises(Rejected, match="preamble"):
        check_part10(with_preamble(junk))


def test_a_file_cut_inside_its_file_meta_is_rejected_at_every_byte() -> None:
    """A cut inside a long-VR File Meta element's header raised struct.error (found by
    mutating shared files); every cut is a Rejected now."""
    for src in good_files()[:3]:
        data = src.read_bytes()
        _, off = split_part10(data)
        for cut in range(0, off):
            with pytest.raises(Rejected):
                check_part10(data[:cut])


def test_a_character_set_with_control_characters_is_rejected_naming_it() -> None:
    """(0008,0005) with a NUL inside made pydicom raise ValueError on every later read
    of the stored file; a CS value never holds control characters."""
    import io

    ds = pydicom.dcmread(good_files()[0])
    ds.SpecificCharacterSet = "ISO_IR 100"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    data = buf.getvalue()
    at = data.find(b"ISO_IR 100")
    for junk in (b"\x00\x00\x00\x80", b"\x1b\x1b", b"\x7f"):
        bad = data[:at + 2] + junk + data[at + 2 + len(junk):]
        with pytest.raises(Rejected) as err:
            check_part10(bad)
        assert "(0008,0005) Specific Character Set" in str(err.value)
        assert "control characters" in str(err.value)
    assert check_part10(data)  # the clean value passes


@pytest.mark.parametrize("name", ["ct_j2k_lossless.dcm", "ct_jpegls_lossless.dcm",
                                  "ct_jpeg_lossless_sv1.dcm", "us_jpeg_baseline_lossy.dcm"])
@pytest.mark.parametrize("keyword,change", [("Rows", 2.0), ("Rows", 0.5), ("Columns", -1),
                                            ("SamplesPerPixel", None)])
def test_a_header_that_does_not_describe_its_codestream_is_rejected(
        name: str, keyword: str, change: float | int | None) -> None:
    """Rows larger than a JPEG-LS codestream made python-gdcm abort the whole process
    on decode (found by probing); smaller ones decoded silently into a wrong image.
    The codestream's own SOF/SIZ size and components must be the header's."""
    import io

    from _data import DICOM_DIR

    ds = pydicom.dcmread(DICOM_DIR / "other" / name)
    v = int(getattr(ds, keyword))
    new = (4 - v if keyword == "SamplesPerPixel" else
           v + int(change) if isinstance(change, int) else int(v * float(change or 1)))
    if keyword == "SamplesPerPixel":
        ds.PlanarConfiguration = 0
    setattr(ds, keyword, new)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    with pytest.raises(Rejected) as err:
        check_part10(buf.getvalue())
    assert "its codestream is" in str(err.value) and "does not describe" in str(err.value)
    assert f"= {new}" in str(err.value)


@pytest.mark.parametrize("name", ["ct_j2k_lossless.dcm", "ct_jpegls_lossless.dcm",
                                  "ct_jpeg_lossless_sv1.dcm"])
@pytest.mark.parametrize("bits", [8, 32])
def test_bits_allocated_that_cannot_hold_the_codestream_samples_is_rejected(
        name: str, bits: int) -> None:
    """Bits Allocated 32 on a JPEG Lossless stream made python-gdcm abort the process;
    8 on a 16-bit stream decoded silently into a cut image."""
    import io

    from _data import DICOM_DIR

    ds = pydicom.dcmread(DICOM_DIR / "other" / name)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, bits, bits - 1
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    if bits == 32 and "j2k" in name:  # JPEG 2000 holds up to 38 bits: 32 is room enough
        assert check_part10(buf.getvalue())
        return
    with pytest.raises(Rejected) as err:
        check_part10(buf.getvalue())
    assert "-bit samples" in str(err.value) and f"Bits Allocated = {bits}" in str(err.value)


def _with_icon(name: str) -> bytes:
    """A shared JPEG instance with an (0088,0200) Icon Image Sequence whose own Pixel
    Data is encapsulated, undefined length (as a GE mammography unit writes it)."""
    import io

    from _data import DICOM_DIR
    from pydicom.dataset import Dataset
    from pydicom.encaps import encapsulate, generate_frames

    ds = pydicom.dcmread(DICOM_DIR / "other" / name)
    first = next(generate_frames(ds.PixelData, number_of_frames=1))
    icon = Dataset()
    for kw in ("SamplesPerPixel", "PhotometricInterpretation", "Rows", "Columns",
               "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation"):
        setattr(icon, kw, getattr(ds, kw))
    icon.PixelData = encapsulate([first])
    icon["PixelData"].VR = "OB"
    icon["PixelData"].is_undefined_length = True
    ds.IconImageSequence = [icon]
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_an_icon_with_encapsulated_pixels_inside_a_sequence_is_walked() -> None:
    data = _with_icon("us_jpeg_baseline_lossy.dcm")
    assert check_part10(data)
    # ...and its fragments are still checked: one cut short of its length is refused.
    at = data.index(b"\x88\x00\x00\x02")
    frag = data.index(b"\xfe\xff\x00\xe0", data.index(b"\xe0\x7f\x10\x00", at) + 12)
    bad = bytearray(data)
    bad[frag + 4:frag + 8] = (len(data)).to_bytes(4, "little")
    with pytest.raises(Rejected, match="fragment"):
        check_part10(bytes(bad))


@pytest.mark.parametrize("junk", [b"\x00\x00", b"\xd3\x0c\x99\xfa", b"\x51\xf6\x57\xfe\x00\x00"])
def test_bytes_after_the_eoi_marker_are_tolerated_a_cut_stream_is_not(junk: bytes) -> None:
    """A Siemens angiography cine leaves 4-7 bytes after each frame's EOI; decoders
    stop at the EOI.  A codestream cut before its EOI is still refused."""
    import io

    from _data import DICOM_DIR
    from pydicom.encaps import encapsulate, generate_frames

    ds = pydicom.dcmread(DICOM_DIR / "other" / "us_jpeg_baseline_lossy.dcm")
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    for stream, ok in ((frame + junk, True), (frame[:-40] + junk, False)):
        ds.PixelData = encapsulate([stream])
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        if ok:
            assert check_part10(buf.getvalue())
        else:
            with pytest.raises(Rejected, match="no EOI"):
                check_part10(buf.getvalue())


def _with_vr(path: Path, tag: int, vr: bytes) -> bytes:
    """The file at ``path`` with the explicit VR bytes of its first (top-level)
    element ``tag`` replaced by ``vr`` (nothing else changes: a fuzzer's 2-byte edit)."""
    import struct

    data = bytearray(path.read_bytes())
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF)
    at = data.find(head, 132)
    assert at > 0 and bytes(data[at + 4:at + 6]).isalpha()
    data[at + 4:at + 6] = vr
    return bytes(data)


@pytest.mark.parametrize(("tag", "vr", "says"), [
    (0x00280010, b"SS", "(0028,0010) Rows is 2 bytes of VR SS"),
    (0x00280008, b"UL", "(0028,0008) has VR UL where PS3.6 gives IS"),
    (0x00080060, b"FD", "(0008,0060) has VR FD where PS3.6 gives CS"),
    (0x00280103, b"FL", "(0028,0103) has VR FL where PS3.6 gives US"),
    (0x00080005, b"SS", "(0008,0005) has VR SS where PS3.6 gives CS"),
    (0x00020010, b"PN", "File Meta (0002,0010) has VR PN where PS3.6 gives UI"),
    (0x00020000, b"US", "File Meta (0002,0000) has VR US where PS3.6 gives UL"),
])
def test_a_vr_that_changes_how_a_value_is_decoded_is_refused(tag: int, vr: bytes,
                                                             says: str) -> None:
    """Found by fuzzing: Rows written as SS made the validator text-join it into a
    1.3 GB string (a 24 KB file); a Modality as FD, a Transfer Syntax UID as PN,
    a Number of Frames as UL passed ingest and then broke the gate, the preview
    or metadata.  Same-kind slips (LO for SH) stay accepted: real files have them."""
    from _data import DICOM_DIR

    src = DICOM_DIR / ("other/enhanced_ct_2frame.dcm" if tag == 0x00280008
                       else "ct/CT_0001.dcm")
    with pytest.raises(Rejected) as err:
        check_part10(_with_vr(src, tag, vr))
    assert says in err.value.reason, err.value.reason
    assert check_part10(_with_vr(DICOM_DIR / "ct" / "CT_0001.dcm", 0x00081030, b"SH"))


def test_an_item_tag_outside_a_sequence_is_refused() -> None:
    from _data import DICOM_DIR

    data = (DICOM_DIR / "ct" / "CT_0001.dcm").read_bytes()
    stray = bytes.fromhex("feff00e004000000") + b"abcd"   # (FFFE,E000), 4 bytes
    with pytest.raises(Rejected, match=r"item tag \(FFFE,E000\) outside a sequence"):
        check_part10(data + stray)
