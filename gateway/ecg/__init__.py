"""ECG files.

The carts' export formats (formats/), reading into EcgRecord (io), conversion to DICOM (convert).
"""
