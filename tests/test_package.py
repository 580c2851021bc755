"""The fenji.* mapping of gateway/, codecs/, routing/ holds in every install mode."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys
import zipfile
from pathlib import Path

import fenji.codecs
import fenji.gateway
import fenji.routing

REPO = Path(__file__).resolve().parents[1]


def _all_modules() -> list[str]:
    names = []
    for pkg in (fenji.gateway, fenji.codecs, fenji.routing):
        names.append(pkg.__name__)
        for m in pkgutil.walk_packages(pkg.__path__, prefix=f"{pkg.__name__}."):
            names.append(m.name)
    return names


def test_every_module_imports_as_fenji() -> None:
    names = _all_modules()
    assert "fenji.gateway.cli.main" in names and "fenji.codecs.errors" in names
    for name in names:
        mod = importlib.import_module(name)
        assert mod.__name__ == name


def test_fenji_codecs_is_not_the_stdlib_codecs() -> None:
    import codecs

    assert hasattr(codecs, "lookup")  # the standard library's, untouched
    assert fenji.codecs.__name__ == "fenji.codecs"
    assert Path(fenji.codecs.__file__).resolve().parent == (REPO / "codecs").resolve()


def test_codecs_imports_nothing_of_gateway_or_routing() -> None:
    import ast

    for path in (REPO / "codecs").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert not name.startswith(("fenji.gateway", "fenji.routing")), (path, name)


def test_wheel_contains_the_mapped_packages(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path), str(REPO)], check=True, timeout=300)
    (wheel,) = tmp_path.glob("fenji-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for mod in _all_modules():
        parts = mod.split(".")
        as_file = "/".join(parts) + ".py"
        as_pkg = "/".join(parts) + "/__init__.py"
        assert as_file in names or as_pkg in names, mod
    assert not any(n.startswith("codecs/") or n.startswith("gateway/") for n in names)
    assert "fenji/codecs/ecg/gate.json" in names       # the ECG gate's fitted parameters
