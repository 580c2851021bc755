"""What every verb shares: one ``--config`` and one ``--json`` parent parser,
and one way to print a result either for people or for scripts."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from fenji.gateway.settings.find import CONFIG_HELP

# ``parents=[CONFIG]``: the node's config file, found as fenji.gateway.config
# find_config() says when the option is left out (cli/main.py).
CONFIG = argparse.ArgumentParser(add_help=False)
CONFIG.add_argument("--config", "-c", type=Path, default=None, metavar="FILE", help=CONFIG_HELP)

# ``parents=[JSON]``: machine-readable output; the field names are stable.
JSON = argparse.ArgumentParser(add_help=False)
JSON.add_argument("--json", action="store_true",
                  help="print JSON (stable field names) instead of text for people")

BOTH = [CONFIG, JSON]


def group(sub: argparse._SubParsersAction, verb: str,  # type: ignore[type-arg]
          help: str, description: str | None = None
          ) -> argparse._SubParsersAction:  # type: ignore[type-arg]
    """``fenji VERB ACTION``: the parser of a verb group, answering its actions."""
    p = sub.add_parser(verb, help=help, description=description)
    return p.add_subparsers(dest=f"{verb}_verb", metavar="ACTION", required=True)


def emit(args: argparse.Namespace, out: Mapping[str, Any],
         text: str | Callable[[Mapping[str, Any]], str]) -> int:
    """Print ``out`` as one JSON line under ``--json``, else ``text``; exit status 0."""
    if getattr(args, "json", False):
        print(json.dumps(out, ensure_ascii=False))
    else:
        print(text(out) if callable(text) else text)
    return 0
