"""The `fenji` command line.

Verbs are stable names that other tools script against (DESIGN.md §6).  Each
verb group lives in its own ``fenji.gateway.cli.<verb>`` module exposing
``register(subparsers)``; this module finds them all, so adding a verb never
means editing a shared list.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import sys
from collections.abc import Sequence

from fenji.gateway import __version__
from fenji.gateway.cli.init import PRIVATE_UMASK
from fenji.gateway.errors import FenjiError

# Modules of this package that are not verb groups.
_NOT_VERBS = {"main", "init", "common"}


def _verb_asked(argv: Sequence[str], verbs: list[str]) -> str | None:
    """The verb group named on the command line (the first word that is not an option),
    if it is one; None for ``fenji --help``, a typo, or no verb."""
    for word in argv:
        if not word.startswith("-"):
            return word if word in verbs else None
    return None


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser of every verb, or with ``argv`` naming one, of that verb alone: a
    command imports its own module only (`fenji case send` loaded the ECG kernels'
    Numba through `fenji ecg`, ~0.4 s of every urgent release)."""
    parser = argparse.ArgumentParser(
        prog="fenji",
        description="fenji: DICOM/ECG remote-diagnosis gateway node.",
        epilog="Run `fenji VERB --help` for the options of one verb.",
    )
    parser.add_argument("--version", action="version", version=f"fenji {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more log detail (-v INFO, -vv DEBUG)")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    import fenji.gateway.cli as pkg

    verbs = sorted(m.name for m in pkgutil.iter_modules(pkg.__path__)
                   if m.name not in _NOT_VERBS)
    asked = _verb_asked(argv, verbs) if argv is not None else None
    for name in [asked] if asked else verbs:
        importlib.import_module(f"fenji.gateway.cli.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # Every file a fenji command creates (config, keys, store, log) is the node
    # user's alone (gateway/cli/init.py PRIVATE_UMASK).
    os.umask(PRIVATE_UMASK)
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    level = {0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        if getattr(args, "config", "absent") is None and getattr(args, "needs_config", True):
            from fenji.gateway.settings.find import find_config

            args.config = find_config()
        _expand_case_prefixes(args)
        rc = args.func(args)
    except FenjiError as exc:
        print(f"fenji: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0
    return int(rc or 0)


def _expand_case_prefixes(args: argparse.Namespace) -> None:
    """Every verb takes a unique prefix of a case ID (like git's commit prefixes)."""
    names = [n for n in ("case_id", "case") if isinstance(getattr(args, n, None), str)]
    if not names or getattr(args, "config", None) is None:
        return
    from fenji.gateway.cases.case import CaseError, resolve_case_id
    from fenji.gateway.node import config_and_store

    try:
        with config_and_store(args.config) as (_, store):
            for n in names:
                setattr(args, n, resolve_case_id(store, getattr(args, n)))
    except CaseError:
        raise  # an ambiguous prefix
    except (OSError, FenjiError):
        pass  # the verb itself reports the config or store it cannot open


if __name__ == "__main__":
    sys.exit(main())
