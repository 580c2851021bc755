"""Thresholds of the ECG quality gate, apart from its kernels.

The gateway's config holds an :class:`EcgQualityThresholds` and travels to every
process (a DICOM worker gets it pickled); keeping the class out of ``quality``
(which loads Numba) lets those processes skip Numba.  The defaults and their
reasons are documented in :mod:`fenji.codecs.ecg.quality`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class EcgQualityThresholds:
    """Thresholds of the ECG quality gate, in physical units (defaults documented
    in the module docstring).  ``*_warn`` values give "acceptable_with_warnings",
    the others "unacceptable"."""

    flat_s: float = 0.2             # a lead constant this long is not recording
    flat_eps_mv: float = 0.0        # |step| at or below this counts as "no change"
    saturation_s: float = 0.2       # clipped at the lead's rail this long in all
    lead_off_s: float = 0.5         # flat/clipped time (runs >= off_run_s) -> "off"
    # Long records (Holter) are judged on a share of their length instead, whichever
    # is larger; at 10 s these give the same 0.2 / 0.2 / 0.5 s as above.
    flat_fraction: float = 0.02
    saturation_fraction: float = 0.02
    lead_off_fraction: float = 0.05
    off_run_s: float = 0.1
    amplitude_min_mv: float = 0.1   # QRS is 0.5-3 mV; below 0.1 mV no cardiac signal
    amplitude_max_mv: float = 15.0  # beyond any QRS: artefact or wrong gain
    hf_noise_mv: float = 0.5        # RMS above 40 Hz: QRS buried in EMG/artefact
    hf_noise_warn_mv: float = 0.1   # persistent EMG: hides P waves (~0.1 mV)
    baseline_mv: float = 10.0       # wander/step below 0.5 Hz: electrode popped
    baseline_warn_mv: float = 2.0   # wander p2p: off a 10 mm/mV grid
    bsqi_min: float = 0.5           # detectors disagree on half the beats: lead unusable
    bsqi_warn: float = 0.8
    ksqi_warn: float = 3.0          # no more peaked than Gaussian noise: no QRS seen (Behar
                                    # 2013 calls a lead clean above 5; 3-5 is common in aVL)
    mains_warn_ratio: float = 0.5   # half the lead's power at the mains frequency
    mains_hz: float = 50.0          # China's mains; 60 Hz elsewhere
    hr_min_bpm: float = 20.0        # outside: no plausible rhythm found -> warning
    hr_max_bpm: float = 300.0
