"""The house rules of the layout (docs/architecture.md), read from the source with ``ast``.

Every import counts: module level, inside functions, under ``TYPE_CHECKING``.  A cycle
hidden in a function is still a cycle; it only fails later, at run time.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FOLDERS = {"gateway": "fenji.gateway", "codecs": "fenji.codecs", "routing": "fenji.routing"}
# What routing may use of the gateway: its interfaces, nothing above them.
ROUTING_MAY_USE = ("fenji.gateway.store", "fenji.gateway.config", "fenji.gateway.keys",
                   "fenji.gateway.ingest", "fenji.gateway.errors")
# Modules that may sit directly in gateway/ (issue 15).
GATEWAY_TOP = {"__init__", "config", "node", "keys", "errors"}
MAX_LINES = 800


def _modules() -> dict[str, Path]:
    mods = {}
    for folder, dotted in FOLDERS.items():
        for p in (REPO / folder).rglob("*.py"):
            parts = [x for x in p.relative_to(REPO / folder).with_suffix("").parts
                     if x != "__init__"]
            mods[".".join([dotted, *parts])] = p
    return mods


def _edges(mods: dict[str, Path]) -> dict[str, set[str]]:
    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    edges: dict[str, set[str]] = {m: set() for m in mods}
    for m, p in mods.items():
        pkg = m if p.name == "__init__.py" else m.rpartition(".")[0]
        for node in ast.walk(ast.parse(p.read_text(), str(p))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base
                         for a in node.names]
            for n in names:
                t = resolve(n)
                if t and t != m:
                    edges[m].add(t)
    return edges


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(edges[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    x = stack.pop()
                    on.discard(x)
                    comp.append(x)
                    if x == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_even_inside_functions() -> None:
    cycles = _cycles(_edges(_modules()))
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_codecs_import_nothing_of_fenji() -> None:
    edges = _edges(_modules())
    bad = {m: sorted(t for t in ts if not t.startswith("fenji.codecs"))
           for m, ts in edges.items() if m.startswith("fenji.codecs")}
    assert not {m: t for m, t in bad.items() if t}


def test_routing_uses_only_the_gateways_interfaces() -> None:
    edges = _edges(_modules())
    bad = {m: sorted(t for t in ts if t.startswith("fenji.gateway")
                     and not t.startswith(ROUTING_MAY_USE))
           for m, ts in edges.items() if m.startswith("fenji.routing")}
    assert not {m: t for m, t in bad.items() if t}


def test_a_running_node_never_imports_the_lab() -> None:
    edges = _edges(_modules())
    bad = {m: sorted(t for t in ts if t.startswith("fenji.gateway.lab"))
           for m, ts in edges.items()
           if not m.startswith(("fenji.gateway.lab", "fenji.gateway.cli"))}
    assert not {m: t for m, t in bad.items() if t}


def test_gateway_modules_live_in_sub_packages() -> None:
    flat = {p.stem for p in (REPO / "gateway").glob("*.py")}
    assert flat <= GATEWAY_TOP, sorted(flat - GATEWAY_TOP)


def test_no_module_over_800_lines() -> None:
    big = {str(p.relative_to(REPO)): n for p in _modules().values()
           if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not big, big
