"""DICOM status codes fenji answers with, by name (never bare hex in code)."""

from __future__ import annotations

SUCCESS = 0x0000  # PS3.7 C.1.1
# Storage failures, PS3.4 B.2.3
OUT_OF_RESOURCES = 0xA700  # disk full / store refuses new data for now
DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900  # parseable but invalid data set
CANNOT_UNDERSTAND = 0xC000  # unparseable data (0xC000-0xCFFF: SCP-specific)
# fenji's own codes in the Cxxx "cannot understand" range (PS3.4 B.2.3 leaves
# the low bits to the SCP); each pairs with an ErrorComment naming the reason.
SOP_INSTANCE_CONFLICT = 0xC010  # same SOP Instance UID already held with other bytes
INSTANCE_TOO_LARGE = 0xC011  # dataset above dicom.max_instance_bytes / inflate cap
REPORT_REFUSED = 0xC012  # a viewer's SR/PDF the reader may not sign now (not claimed, ...)
PROCESSING_FAILURE = 0x0110  # PS3.7 C.4: unexpected local failure (a bug; logged)
NOT_AUTHORIZED = 0x0124  # PS3.7 C.4: refused, not authorized (a reader of another service)

NAMES = {
    SUCCESS: "Success",
    OUT_OF_RESOURCES: "Out of Resources",
    DATASET_DOES_NOT_MATCH_SOP_CLASS: "Data Set does not match SOP Class",
    CANNOT_UNDERSTAND: "Cannot understand",
    SOP_INSTANCE_CONFLICT: "SOP Instance conflict",
    INSTANCE_TOO_LARGE: "Instance too large",
    REPORT_REFUSED: "Report refused",
    PROCESSING_FAILURE: "Processing failure",
    NOT_AUTHORIZED: "Refused: not authorized",
}


def describe(status: int) -> str:
    return f"0x{status:04X} {NAMES.get(status, 'unknown')}"
