"""fenji.codecs: pure functions over bytes and arrays (no I/O, nothing of fenji).

Importing the package loads none of its codecs.  They need NumPy and Numba
(about 80 MiB of address space per process before a kernel runs), and most
processes that import something of ``fenji.codecs`` -- every gateway module
reaches ``fenji.codecs.errors`` -- never encode: a DICOM worker only stores.
The names below are still importable from here, each loaded on first use
(PEP 562); new code imports them from their modules.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# name -> the module that defines it (issue 3: the names other packages call)
_LAZY = {
    **dict.fromkeys(("BundlePlan", "BundleReader", "EndEvent", "InstanceEvent", "ManifestEvent",
                     "Preview", "PreviewEvent", "choose_references", "make_preview",
                     "plan_bundle", "read_bundle", "write_bundle"),
                    "fenji.codecs.compress.bundle"),
    **dict.fromkeys(("decode_instance", "encode_instance", "instance_info"),
                    "fenji.codecs.compress.instance"),
}
__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fenji.codecs' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next lookup does not come here
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


if TYPE_CHECKING:
    from fenji.codecs.compress.bundle import (  # noqa: F401
        BundlePlan,
        BundleReader,
        EndEvent,
        InstanceEvent,
        ManifestEvent,
        Preview,
        PreviewEvent,
        choose_references,
        make_preview,
        plan_bundle,
        read_bundle,
        write_bundle,
    )
    from fenji.codecs.compress.instance import (  # noqa: F401
        decode_instance,
        encode_instance,
        instance_info,
    )
