"""Diagnostic reports: the signed document, its DICOM SR and PDF forms, verification."""
