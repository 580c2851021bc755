"""fenji.codecs: pure functions over bytes and arrays (no I/O, nothing of fenji)."""

# Lossless codecs and the bundle (issue 3): the names other packages call.
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
from fenji.codecs.compress.instance import decode_instance, encode_instance, instance_info  # noqa: F401
