"""Where a CLI verb finds the node's config when ``--config`` is left out."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from fenji.gateway.errors import ConfigError

CONFIG_HELP = ("the node's config file (default: $FENJI_CONFIG, else ./fenji.toml, else "
               "/etc/fenji/fenji.toml)")
SYSTEM_CONFIG = Path("/etc/fenji/fenji.toml")


def find_config(env: Mapping[str, str] | None = None, cwd: Path | None = None) -> Path:
    """The config a CLI verb uses without ``--config``: ``FENJI_CONFIG``, then
    ``./fenji.toml``, then ``/etc/fenji/fenji.toml``; raises naming every place tried."""
    env = os.environ if env is None else env
    if env.get("FENJI_CONFIG"):
        return Path(env["FENJI_CONFIG"])
    tried = [(cwd or Path.cwd()) / "fenji.toml", SYSTEM_CONFIG]
    for path in tried:
        if path.is_file():
            return path
    raise ConfigError([f"no config given and none found: pass --config FILE, set FENJI_CONFIG, "
                       f"or put one at {' or '.join(str(t) for t in tried)}"])

