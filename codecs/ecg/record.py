"""`EcgRecord`: one ECG recording as plain arrays, whatever file it came from.

Readers and writers live in ``fenji.gateway.ecg.io``; this module does no I/O.

>>> import numpy as np
>>> r = EcgRecord(leads=("I", "II"), fs_hz=500.0,
...               signal=np.array([[200, 400], [0, -200]], dtype="<i2"),
...               gains=(200.0, 200.0), baselines=(0, 0), units=("mV", "mV"))
>>> r.physical_mv().tolist()
[[1.0, 2.0], [0.0, -1.0]]
>>> r.duration_s
0.004
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: Physical unit -> factor to millivolts.
UNIT_TO_MV = {"mV": 1.0, "uV": 1e-3, "µV": 1e-3, "V": 1e3, "nV": 1e-6}

#: The standard 12 leads in the usual order (AHA/IEC 60601-2-25).
STANDARD_12 = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")


@dataclass(frozen=True, slots=True)
class EcgFilters:
    """Filters the acquisition device applied (``None`` where unknown)."""

    low_hz: float | None = None     # high-pass corner (baseline)
    high_hz: float | None = None    # low-pass corner
    notch_hz: float | None = None   # mains notch; 0 or None: none


@dataclass(frozen=True, slots=True)
class EcgRecord:
    """An ECG recording.

    ``signal`` is (samples, leads).  If ``digital`` (the default), it holds ADC
    units and ``physical = (signal - baseline) / gain`` in ``units``; otherwise it
    already holds physical values in ``units`` and gains/baselines are what a
    writer should use to digitise it.  ``NaN`` marks missing samples in physical
    signals.  The array is made read-only on construction.
    """

    leads: tuple[str, ...]
    fs_hz: float
    signal: np.ndarray
    gains: tuple[float, ...]
    baselines: tuple[int, ...]
    units: tuple[str, ...]
    digital: bool = True
    filters: EcgFilters = field(default_factory=EcgFilters)
    name: str = ""

    def __post_init__(self) -> None:
        sig = np.asarray(self.signal)
        if sig.ndim == 1:
            sig = sig[:, None]
        if sig.ndim != 2:
            raise ValueError(f"signal must be (samples, leads), got shape {sig.shape}")
        n = sig.shape[1]
        for what, seq in (("leads", self.leads), ("gains", self.gains),
                          ("baselines", self.baselines), ("units", self.units)):
            if len(seq) != n:
                raise ValueError(f"{len(seq)} {what} for {n} signal columns")
        if not 0.0 < self.fs_hz:
            raise ValueError(f"fs_hz must be positive, got {self.fs_hz}")
        for u in self.units:
            if u not in UNIT_TO_MV:
                raise ValueError(f"unknown unit {u!r} (known: {', '.join(UNIT_TO_MV)})")
        sig = sig.copy()
        sig.setflags(write=False)
        object.__setattr__(self, "signal", sig)

    @property
    def n_samples(self) -> int:
        return int(self.signal.shape[0])

    @property
    def duration_s(self) -> float:
        return self.n_samples / self.fs_hz

    def lead_mv(self, j: int) -> np.ndarray:
        """Lead ``j`` as float64 millivolts (a new array of one lead: a long record is
        converted a lead at a time, not as a whole float64 copy)."""
        col = self.signal[:, j].astype(np.float64)
        if self.digital:
            g = float(self.gains[j]) or 1.0
            col = (col - float(self.baselines[j])) / g
        col *= UNIT_TO_MV[self.units[j]]
        return col

    def physical_mv(self) -> np.ndarray:
        """(samples, leads) float64 in millivolts (a new array)."""
        sig = self.signal.astype(np.float64)
        scale = np.array([UNIT_TO_MV[u] for u in self.units])
        if self.digital:
            g = np.array(self.gains, dtype=np.float64)
            g[g == 0] = 1.0
            sig = (sig - np.array(self.baselines, dtype=np.float64)) / g
        return sig * scale
