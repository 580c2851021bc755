"""WADO-RS transcoding (``media.transcode``) of Implicit VR instances whose elements
have no single VR in the dictionary: a Varian RT Image with retired Curve Data
(50xx,3000) "OB or OW" could not be served in the default transfer syntax (406,
and a traceback in the node log; found with a public fo-dicom test file)."""

from __future__ import annotations

import io

import numpy as np
import pydicom
from _data import DICOM_DIR
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from fenji.gateway.web.dicomweb.media import transcode


def _implicit_with_curve() -> tuple[bytes, bytes]:
    ds = pydicom.dcmread(DICOM_DIR / "other" / "ct_implicit_vr_le.dcm")
    curve = bytes(range(64))
    ds.add_new(0x50003000, "OW", curve)          # written implicit: no VR on the wire
    ds.add_new(0x50000005, "US", 2)              # Curve Dimensions
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    buf = io.BytesIO()
    ds.save_as(buf, implicit_vr=True, little_endian=True, enforce_file_format=True)
    return buf.getvalue(), curve


def test_ambiguous_vr_elements_keep_their_bytes_in_explicit_vr() -> None:
    data, curve = _implicit_with_curve()
    assert pydicom.dcmread(io.BytesIO(data))[0x50003000].VR == "OB or OW"
    out = pydicom.dcmread(io.BytesIO(transcode(data, ExplicitVRLittleEndian)))
    assert out.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert out[0x50003000].VR == "OW" and out[0x50003000].value == curve
    src = pydicom.dcmread(io.BytesIO(data))
    assert np.array_equal(out.pixel_array, src.pixel_array)
    assert out.SOPInstanceUID == src.SOPInstanceUID
