"""Report objects as a reader's viewer makes them (import as ``from _viewer import …``)."""

from __future__ import annotations

import io

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    c = Dataset()
    c.CodeValue, c.CodingSchemeDesignator, c.CodeMeaning = value, scheme, meaning
    return c


def _text(concept: Dataset, value: str) -> Dataset:
    it = Dataset()
    it.RelationshipType, it.ValueType, it.TextValue = "CONTAINS", "TEXT", value
    it.ConceptNameCodeSequence = Sequence([concept])
    return it


def viewer_sr_dataset(study: str, finding: str, impression: str = "Acute SDH.") -> Dataset:
    """A Basic Text SR in ``study`` with a Finding and an Impression, as a viewer writes it."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, generate_uid()
    ds.Modality, ds.PatientID, ds.PatientName, ds.InstanceNumber = "SR", "P1", "TEST", 1
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = Sequence([_code("11528-7", "LN", "Radiology Report")])
    ds.ContinuityOfContent = "SEPARATE"
    ds.ContentSequence = Sequence([_text(_code("121071", "DCM", "Finding"), finding),
                                   _text(_code("121073", "DCM", "Impression"), impression)])
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def viewer_sr(study: str, finding: str, impression: str = "Acute SDH.") -> bytes:
    """:func:`viewer_sr_dataset` as Part-10 bytes."""
    buf = io.BytesIO()
    viewer_sr_dataset(study, finding, impression).save_as(buf, enforce_file_format=True)
    return buf.getvalue()
