"""Thresholds of the image quality gate, apart from its kernels.

The gateway's config holds an :class:`ImageQualityThresholds` and travels to
every process (a DICOM worker gets it pickled); keeping the class out of
``quality`` (which loads Numba) lets those processes skip Numba.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ImageQualityThresholds:
    """Thresholds of the image quality gate (plain values; gateway config maps onto it)."""

    saturated_fraction: float = 0.25  # a quarter of the image at full scale: over-exposed
    gap_factor: float = 1.5           # spacing this much above the usual one: slice missing
    duplicate_tol_mm: float = 0.01    # two slices this close along the normal: duplicated
    irregular_tol: float = 0.1        # spacing varying more than 10 %: warning
