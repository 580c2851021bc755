"""fenji benchmarks: `python -m bench NAME --json FILE` from the repository root.

Each benchmark module ``bench/NAME.py`` runs fenji and a real peer on the same
inputs in the same run and exposes::

    DESCRIPTION: str
    def add_arguments(parser: argparse.ArgumentParser) -> None
    def run(args: argparse.Namespace) -> dict   # JSON-able result, table printed

`bench.common` has the shared helpers (machine facts, table printing, JSON).
"""
