"""DICOM without sockets: validation, character sets, the status table, the query model."""
