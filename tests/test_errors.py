"""One error tree: every exception fenji defines is a FenjiError with its HTTP and DICOM status."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

from aiohttp import web

import fenji.codecs
import fenji.gateway
import fenji.routing
from fenji.codecs.errors import FenjiError, LocalError, PeerError
from fenji.gateway.dicom import status as st


def _exception_classes() -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for pkg in (fenji.codecs, fenji.gateway, fenji.routing):
        for m in pkgutil.walk_packages(pkg.__path__, prefix=f"{pkg.__name__}."):
            mod = importlib.import_module(m.name)
            for name, obj in vars(mod).items():
                # aiohttp's HTTPException subclasses are responses, not errors
                if (inspect.isclass(obj) and issubclass(obj, BaseException)
                        and not issubclass(obj, web.HTTPException)
                        and obj.__module__ == mod.__name__):
                    found[f"{mod.__name__}.{name}"] = obj
    return found


def test_every_fenji_exception_is_in_the_tree() -> None:
    classes = _exception_classes()
    assert len(classes) > 20  # the walk found the modules
    outside = sorted(n for n, c in classes.items() if not issubclass(c, FenjiError))
    assert not outside, outside


def test_every_error_says_whose_fault_and_carries_its_statuses() -> None:
    for name, cls in _exception_classes().items():
        if cls is FenjiError:
            continue
        assert issubclass(cls, (PeerError, LocalError)), name
        http, dicom = cls.http_status, cls.dicom_status  # type: ignore[attr-defined]
        assert isinstance(http, int) and 400 <= http <= 599, (name, http)
        assert isinstance(dicom, int) and dicom in st.NAMES or 0xC000 <= dicom <= 0xCFFF, \
            (name, hex(dicom))
        if issubclass(cls, PeerError):
            assert http < 500 or http == 507, (name, http)  # the peer's fault is a 4xx


def test_narrower_errors_say_so() -> None:
    from fenji.gateway.dicom.query import QueryError
    from fenji.gateway.dicom.validate import Rejected
    from fenji.gateway.reading.errors import Forbidden
    from fenji.gateway.store.db import StoreFull

    assert (StoreFull.http_status, StoreFull.dicom_status) == (507, st.OUT_OF_RESOURCES)
    assert (Forbidden.http_status, Forbidden.dicom_status) == (403, st.NOT_AUTHORIZED)
    assert QueryError.dicom_status == st.DATASET_DOES_NOT_MATCH_SOP_CLASS
    r = Rejected(st.INSTANCE_TOO_LARGE, "too large")
    assert r.dicom_status == st.INSTANCE_TOO_LARGE and r.http_status == 422
