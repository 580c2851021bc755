"""Fixtures the routing tests share."""

from __future__ import annotations

import pytest
from _nodes import edge_and_center


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A paired edge and center, running for the whole module (a module that needs a
    fresh pair per test, or other options, defines its own ``pair``)."""
    edge, center = edge_and_center(tmp_path_factory.mktemp("pair"))
    with edge, center:
        yield edge, center
