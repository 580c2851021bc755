"""The docstring examples of the codec modules run (STYLE: codec docstrings carry a doctest)."""

from __future__ import annotations

import doctest
import importlib

import pytest


@pytest.mark.parametrize("name", ["entropy", "pixel", "waveform", "header", "instance", "bundle",
                                  "warm"])
def test_doctests(name: str) -> None:
    mod = importlib.import_module(f"fenji.codecs.compress.{name}")
    result = doctest.testmod(mod)
    assert result.attempted > 0 and result.failed == 0
