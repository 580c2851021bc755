"""What the index keeps about one instance: the validator makes it, the store indexes it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class InstanceInfo:
    """What the index keeps about an instance (extracted by the validator)."""

    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    dataset_sha256: str
    instance_number: int | None = None
    patient_id: str | None = None
    patient_name: str | None = None
    birth_date: str | None = None
    sex: str | None = None
    study_date: str | None = None
    study_time: str | None = None
    accession_number: str | None = None
    study_description: str | None = None
    modality: str | None = None
    series_number: int | None = None
    series_description: str | None = None
    referring_physician: str | None = None
    study_id: str | None = None
    # (0008,0005) the text was decoded with, and its source: "declared", "default"
    # (dicom.default_character_set), "none" or "invalid" (gateway/dicom/charset.py).
    specific_character_set: str | None = None
    charset_source: str | None = None
