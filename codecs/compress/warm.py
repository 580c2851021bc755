"""Load the codecs and their Numba kernels before the first case needs them.

Importing the codecs loads Numba and LLVM, and each kernel's first call per
argument type loads its machine code from Numba's on-disk cache: ~1.4 s in
all on the lab machine, which a node paid inside its first urgent ECG's
transfer (the sender reading the bundle's manifest, the receiver decoding
it) or release.  A node that moves bundles calls :func:`warm` in a
background thread at start; ``make install`` runs it too, so the cache holds
every kernel it touches (``gateway/lab/warmup.py``).

>>> warm() >= 0.0
True
"""

from __future__ import annotations

import time


def warm() -> float:
    """Encode and decode a few tiny arrays of the common types; returns the seconds."""
    # Here, not at module level: importing this module must stay free of Numba
    # (a DICOM worker that never touches a bundle must not load it).
    import numpy as np

    from fenji.codecs.compress import bundle  # noqa: F401 - the sender and receiver's first read
    from fenji.codecs.compress.pixel import pixel_decode, pixel_encode
    from fenji.codecs.compress.waveform import waveform_decode, waveform_encode

    t0 = time.monotonic()
    ramp = np.arange(24 * 24).reshape(24, 24)
    images = [((ramp * 37) % 4000 - 1000).astype("<i2"), ((ramp * 53) % 4096).astype("<u2"),
              (ramp % 251).astype(np.uint8)]
    for img in images:
        for effort in ("fast", "max"):
            if not np.array_equal(pixel_decode(pixel_encode(img, effort=effort)), img):
                raise RuntimeError("codec warm-up: a pixel round trip was not exact")
    rgb = np.stack([images[2], images[2][::-1], images[2].T], axis=-1)
    pixel_decode(pixel_encode(rgb, effort="max", rct=True))
    t = np.arange(400)
    leads = np.stack([(300 * np.sin(t / 9 + k)).astype("<i2") for k in range(4)], axis=1)
    for wave in (leads, leads[:, 0]):
        if not np.array_equal(waveform_decode(waveform_encode(wave)).reshape(wave.shape), wave):
            raise RuntimeError("codec warm-up: a waveform round trip was not exact")
    return time.monotonic() - t0
