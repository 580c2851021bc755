"""Importing fenji.codecs (and what every gateway module reaches through it) loads no codec.

Each check runs in a fresh interpreter: this test process has long imported
everything.  A DICOM worker only stores; Numba and the compress codecs cost it
about 80 MiB (``python -m bench rss``).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def _loaded(*modules: str) -> set[str]:
    """The fenji.codecs modules and numba after importing ``modules`` afresh."""
    code = ("import importlib, json, sys\n"
            f"for m in {list(modules)!r}: importlib.import_module(m)\n"
            "print(json.dumps(sorted(m for m in sys.modules if m == 'numba' "
            "or m.startswith('fenji.codecs'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120).stdout
    return set(json.loads(out))


def test_fenji_codecs_and_its_errors_load_no_codec() -> None:
    loaded = _loaded("fenji.codecs", "fenji.codecs.errors", "fenji.gateway.errors")
    assert loaded == {"fenji.codecs", "fenji.codecs.errors"}


def test_the_package_names_still_resolve_on_first_use() -> None:
    import fenji.codecs
    from fenji.codecs.compress import bundle, instance

    assert fenji.codecs.encode_instance is instance.encode_instance
    assert fenji.codecs.plan_bundle is bundle.plan_bundle
    assert set(fenji.codecs.__all__) <= set(dir(fenji.codecs))
    with pytest.raises(AttributeError, match="no attribute 'pixel_encoder'"):
        fenji.codecs.pixel_encoder  # noqa: B018 - the lookup is the test


def test_dicom_worker_loads_no_compress_codec() -> None:
    # what a spawned DICOM worker imports (gateway/node.py _worker_main -> _serve)
    loaded = _loaded("fenji.gateway.node", "fenji.gateway.dimse.server")
    assert not {m for m in loaded if m.startswith("fenji.codecs.compress")}
    assert "fenji.codecs.image.quality" not in loaded


def test_dicom_worker_loads_no_numba() -> None:
    assert "numba" not in _loaded("fenji.gateway.node", "fenji.gateway.dimse.server")
