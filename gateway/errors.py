"""The gateway's errors; the base classes come from `fenji.codecs.errors`."""

from __future__ import annotations

from fenji.codecs.errors import DecodeError, FenjiError, LocalError, PeerError

__all__ = ["ConfigError", "DecodeError", "FenjiError", "LocalError", "PeerError"]


class ConfigError(LocalError):
    """A configuration file or variable is wrong; the message names the key path."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = list(errors)
        super().__init__("; ".join(self.errors))
