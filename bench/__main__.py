"""Entry point: ``python -m bench NAME --json FILE`` (``all`` runs every one)."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from pathlib import Path

from bench import common

_SKIP = {"common", "__main__"}


def _names() -> list[str]:
    here = Path(__file__).parent
    return sorted(m.name for m in pkgutil.iter_modules([str(here)])
                  if m.name not in _SKIP and not m.name.startswith("_"))


def main(argv: list[str] | None = None) -> int:
    names = _names()
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="fenji benchmarks: fenji and a real peer side by side, JSON out.",
    )
    sub = parser.add_subparsers(dest="name", required=True, metavar="NAME")
    for name in names:
        mod = importlib.import_module(f"bench.{name}")
        p = sub.add_parser(name, help=getattr(mod, "DESCRIPTION", ""))
        p.add_argument("--json", type=Path, help="write the result as JSON to this file")
        mod.add_arguments(p)
    pa = sub.add_parser("all", help="run every benchmark with its defaults")
    pa.add_argument("--json", type=Path, help="write all results as one JSON file")
    args = parser.parse_args(argv)
    if args.name == "all":
        results = {}
        for name in names:
            mod = importlib.import_module(f"bench.{name}")
            p = argparse.ArgumentParser()
            p.add_argument("--json", type=Path)
            mod.add_arguments(p)
            sub_args = p.parse_args([])
            print(f"== bench {name} ==", flush=True)
            results[name] = mod.run(sub_args)
        out = common.envelope("all", {}, results)
    else:
        mod = importlib.import_module(f"bench.{args.name}")
        out = common.envelope(args.name, vars(args), mod.run(args))
    if args.json:
        common.write_json(args.json, out)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
