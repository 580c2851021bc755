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

import math
from dataclasses import dataclass, field

import numpy as np

from fenji.codecs.errors import PeerError

#: Physical unit -> factor to millivolts.
UNIT_TO_MV = {"mV": 1.0, "uV": 1e-3, "µV": 1e-3, "V": 1e3, "nV": 1e-6}

#: No electrode potential comes near this (carts must tolerate +-300 mV of DC offset,
#: IEC 60601-2-25): a lead whose values reach it has a wrong scale, baseline or unit.
MAX_ABS_MV = 1e4
#: Highest sampling rate taken (research ECGs reach 10-32 kHz).
MAX_FS_HZ = 100_000.0


class EcgRecordError(PeerError, ValueError):
    """Values no ECG recording can have: its file's rate, scale or layout is wrong."""


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
            raise EcgRecordError(f"signal must be (samples, leads), got shape {sig.shape}")
        n = sig.shape[1]
        if n == 0 or sig.shape[0] == 0:
            raise EcgRecordError(f"no samples: {sig.shape[0]} samples of {n} leads")
        for what, seq in (("leads", self.leads), ("gains", self.gains),
                          ("baselines", self.baselines), ("units", self.units)):
            if len(seq) != n:
                raise EcgRecordError(f"{len(seq)} {what} for {n} signal columns")
        if not (math.isfinite(self.fs_hz) and 0.0 < self.fs_hz <= MAX_FS_HZ):
            raise EcgRecordError(f"sampling rate {self.fs_hz:g} Hz is not one an ECG is "
                                 f"recorded at (0-{MAX_FS_HZ:g} Hz)")
        for u in self.units:
            if u not in UNIT_TO_MV:
                raise EcgRecordError(f"unknown unit {u!r} (known: {', '.join(UNIT_TO_MV)})")
        for j, (g, b) in enumerate(zip(self.gains, self.baselines, strict=True)):
            if self.digital and not (math.isfinite(g) and g != 0.0 and math.isfinite(b)):
                raise EcgRecordError(f"lead {self.leads[j]}: gain {g:g} and baseline {b} give "
                                     "no usable scale")
        sig = sig.copy()
        sig.setflags(write=False)
        object.__setattr__(self, "signal", sig)
        for j in range(n):
            peak = self._peak_mv(j)
            if not peak <= MAX_ABS_MV:
                raise EcgRecordError(
                    f"lead {self.leads[j]}: values up to {peak:.3g} mV, beyond any ECG "
                    f"({MAX_ABS_MV:g} mV): its scale, baseline or unit is wrong")

    def _peak_mv(self, j: int) -> float:
        """Largest magnitude of lead ``j`` in mV (NaN gaps left out; inf if any sample is
        infinite), from the column's extremes: no float copy of the lead."""
        col = self.signal[:, j]
        if col.dtype.kind == "f":
            finite = col[~np.isnan(col)]
            if finite.size == 0:
                return 0.0
            lo, hi = float(finite.min()), float(finite.max())
        else:
            lo, hi = float(col.min()), float(col.max())
        if self.digital:
            g = float(self.gains[j])
            lo, hi = (lo - float(self.baselines[j])) / g, (hi - float(self.baselines[j])) / g
        return max(abs(lo), abs(hi)) * UNIT_TO_MV[self.units[j]]

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
            col = (col - float(self.baselines[j])) / float(self.gains[j])
        col *= UNIT_TO_MV[self.units[j]]
        return col

    def physical_mv(self) -> np.ndarray:
        """(samples, leads) float64 in millivolts (a new array)."""
        sig = self.signal.astype(np.float64)
        scale = np.array([UNIT_TO_MV[u] for u in self.units])
        if self.digital:
            sig = ((sig - np.array(self.baselines, dtype=np.float64))
                   / np.array(self.gains, dtype=np.float64))
        return sig * scale
