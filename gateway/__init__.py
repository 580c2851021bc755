"""fenji.gateway: the node (config, store, DICOM SCP/SCU, HTTP API, CLI)."""

__version__ = "0.1.0"
