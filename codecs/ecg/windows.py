"""Windowed statistics shared by the QRS detector and the quality report.

Each helper is plain Python made callable from Numba kernels with
``register_jitable``: it runs as written in the Python twins and is compiled
inline into the ``njit`` ones, so the loop exists once.
"""

from __future__ import annotations

import numpy as np
from numba.extending import register_jitable


@register_jitable
def window_p2p(x: np.ndarray, win: int) -> np.ndarray:
    """Peak-to-peak of each whole ``win``-sample window of ``x``, in order (a tail
    shorter than ``win`` is left out; ``win`` >= 1).

    >>> window_p2p(np.array([0.0, 2.0, 1.0, 5.0, 4.0]), 2).tolist()
    [2.0, 4.0]
    """
    nw = x.shape[0] // win
    p = np.empty(nw)
    for w in range(nw):
        lo = x[w * win]
        hi = lo
        for i in range(w * win, (w + 1) * win):
            if x[i] > hi:
                hi = x[i]
            if x[i] < lo:
                lo = x[i]
        p[w] = hi - lo
    return p
